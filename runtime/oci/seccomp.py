"""A resolved seccomp filter as the OCI runtime-spec ``linux.seccomp`` object.

cri-shim compiles a container's profile (Docker/OCI JSON, includes and excludes resolved for
that container: runtime.security.seccomp.profile) to classic BPF itself; an OCI runtime takes
the JSON form instead and compiles it with libseccomp. The resolved filter converts back
without loss: every rule is already specific to this container (includes/excludes applied,
conditions split as runc splits them), its action a SECCOMP_RET_* value with its data.

What differs: runc (1.1) adds its own ENOSYS stub for syscalls newer than the profile (our
``enosys_unknown``), and libseccomp's bad-architecture action is KILL (thread), where our own
program kills the process; both end the offending call.
"""

from __future__ import annotations

from typing import Any

from runtime.linux import seccomp as k
from runtime.security.seccomp.profile import OPS, SeccompFilter, SyscallRule

#: our syscall tables' architectures, as libseccomp names them
ARCH_TOKENS = {"x86_64": "SCMP_ARCH_X86_64", "x86": "SCMP_ARCH_X86", "x32": "SCMP_ARCH_X32",
               "aarch64": "SCMP_ARCH_AARCH64"}
_OP_TOKENS = {op: token for token, op in OPS.items()}
_ACTION_TOKENS = {
    k.SECCOMP_RET_KILL_PROCESS: "SCMP_ACT_KILL_PROCESS",
    k.SECCOMP_RET_KILL_THREAD: "SCMP_ACT_KILL",
    k.SECCOMP_RET_TRAP: "SCMP_ACT_TRAP",
    k.SECCOMP_RET_ERRNO: "SCMP_ACT_ERRNO",
    k.SECCOMP_RET_TRACE: "SCMP_ACT_TRACE",
    k.SECCOMP_RET_LOG: "SCMP_ACT_LOG",
    k.SECCOMP_RET_ALLOW: "SCMP_ACT_ALLOW",
}
_ACTION_MASK = 0xFFFF0000


def action_token(action: int) -> tuple[str, int | None]:
    """(libseccomp action name, its errno/trace data or None) of a SECCOMP_RET_* value."""
    base, data = action & _ACTION_MASK, action & k.SECCOMP_RET_DATA
    token = _ACTION_TOKENS.get(base)
    if token is None:
        raise ValueError(f"seccomp action {action:#x} has no OCI name")
    return token, data if base in (k.SECCOMP_RET_ERRNO, k.SECCOMP_RET_TRACE) else None


def _rule(rule: SyscallRule) -> dict[str, Any]:
    token, data = action_token(rule.action)
    out: dict[str, Any] = {"names": list(rule.names), "action": token}
    if data is not None and token == "SCMP_ACT_ERRNO":
        out["errnoRet"] = data
    if rule.conditions:
        out["args"] = [{"index": c.index, "value": c.value, "valueTwo": c.value_two, "op": _OP_TOKENS[c.op]}
                       for c in rule.conditions]
    return out


def oci_seccomp(filt: SeccompFilter) -> dict[str, Any]:
    """The ``linux.seccomp`` object of ``filt``. ValueError for an action without an OCI name
    (none a parsed profile can hold)."""
    token, data = action_token(filt.default_action)
    out: dict[str, Any] = {
        "defaultAction": token,
        "architectures": [ARCH_TOKENS[a] for a in filt.architectures if a in ARCH_TOKENS],
        "syscalls": [_rule(r) for r in filt.rules],
    }
    if data is not None and token == "SCMP_ACT_ERRNO":
        out["defaultErrnoRet"] = data
    return out
