"""Profiles: parsing and validation errors, includes/excludes, our RuntimeDefault's decisions,
the profile choice (RuntimeDefault / Unconfined / Localhost / privileged) and the cache."""

from __future__ import annotations

import dataclasses
import errno
import json
from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.linux import seccomp as k
from runtime.model.sandbox import ProfileType, SecurityProfile
from runtime.security.capabilities import DEFAULT_CAPABILITIES
from runtime.security.seccomp.bpf import compile_filter
from runtime.security.seccomp.profile import ProfileContext, parse_profile
from runtime.security.seccomp.service import RUNTIME_DEFAULT_FILE, SeccompProfiles, kernel_version
from runtime.security.seccomp.syscall_tables import X32, X86, X86_64
from tests.support.bpf import LibSeccomp, libseccomp_available, run

pytestmark = pytest.mark.timeout(60)

ALLOW = k.SECCOMP_RET_ALLOW
EPERM = k.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = k.SECCOMP_RET_ERRNO | errno.ENOSYS
DEFAULT_CAPS = frozenset(DEFAULT_CAPABILITIES)
ALL_CAPS = DEFAULT_CAPS | {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_TIME", "CAP_SYS_MODULE"}


def prof(**doc: object) -> bytes:
    base: dict[str, object] = {"defaultAction": "SCMP_ACT_ERRNO"}
    base.update(doc)
    return json.dumps(base).encode()


@pytest.mark.parametrize(("text", "match"), [
    (b"{not json", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (json.dumps({"syscalls": []}).encode(), "defaultAction: missing"),
    (prof(defaultAction="SCMP_ACT_MAYBE"), "unknown action"),
    (prof(defaultAction="SCMP_ACT_NOTIFY"), "seccomp agent"),
    (prof(defaultAction="SCMP_ACT_ALLOW", defaultErrnoRet=1), "errnoRet is only valid"),
    (prof(defaultErrnoRet=70000), "errnoRet"),
    (prof(architectures=["SCMP_ARCH_Z80"]), "unknown architecture"),
    (prof(architectures=["SCMP_ARCH_X86_64"], archMap=[{"architecture": "SCMP_ARCH_X86_64"}]), "cannot both"),
    (prof(flags=["SECCOMP_FILTER_FLAG_LOG"]), "not supported"),
    (prof(listenerPath="/run/agent.sock"), "listeners"),
    (prof(syscalls=[{"names": [], "action": "SCMP_ACT_ALLOW"}]), "no syscall names"),
    (prof(syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]), r"index: expected an integer in \[0, 5\]"),  # noqa: E501
    (prof(syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]), "value"),
    (prof(syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                     "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_LIKE"}]}]), "unknown operator"),
    (prof(syscalls=[{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "six"}}]), "minKernel"),
    (prof(syscalls="read"), "expected a list"),
])
def test_invalid_profiles_are_refused_clearly(text: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        parse_profile(text, "/etc/p.json")
    assert "/etc/p.json" in str(info.value)


def test_includes_and_excludes() -> None:
    p = parse_profile(prof(syscalls=[
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["SYS_PTRACE", "CAP_KILL"]}},
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN", "CAP_BPF"]}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64"]}},
        {"names": ["set_tls"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
        {"names": ["statx"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.11"}},
        {"names": ["fchmodat2"], "action": "SCMP_ACT_ALLOW", "excludes": {"minKernel": "6.6"}},
        {"names": ["getpid"], "action": "SCMP_ACT_ERRNO"},  # same as the default: dropped
    ]))

    def names(caps: set[str], kernel: tuple[int, int] = (6, 18)) -> set[str]:
        f = p.resolve(ProfileContext(frozenset(caps), "x86_64", kernel))
        return {n for r in f.rules for n in r.names}

    assert names(set()) == {"clone", "arch_prctl", "statx"}
    assert names({"CAP_SYS_ADMIN"}) == {"mount", "arch_prctl", "statx"}
    assert names({"CAP_SYS_PTRACE"}) == {"clone", "arch_prctl", "statx"}  # needs both caps
    assert names({"CAP_SYS_PTRACE", "CAP_KILL"}) == {"ptrace", "clone", "arch_prctl", "statx"}
    assert names(set(), (4, 9)) == {"clone", "arch_prctl", "fchmodat2"}


def test_repeated_argument_index_means_or() -> None:
    # runc: two conditions on one argument in one entry become separate rules.
    p = parse_profile(prof(syscalls=[{"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]))
    prog = compile_filter(p.resolve(ProfileContext(frozenset())))
    nr = X86_64["personality"]
    assert run(prog, nr, k.AUDIT_ARCH_X86_64, [0]) == ALLOW
    assert run(prog, nr, k.AUDIT_ARCH_X86_64, [8]) == ALLOW
    assert run(prog, nr, k.AUDIT_ARCH_X86_64, [4]) == EPERM


def test_architectures_and_arch_map() -> None:
    p = parse_profile(prof(archMap=[{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]},
                                    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]}]))
    assert p.arches_for("x86_64") == ("x86_64", "x86")
    assert p.arches_for("aarch64") == ("aarch64",)  # no table for 32-bit arm
    only_native = parse_profile(prof(architectures=["SCMP_ARCH_X86"]))
    assert only_native.arches_for("x86_64") == ("x86_64", "x86")


def _runtime_default(caps: frozenset[str]) -> bytes:
    s = SeccompProfiles(native_arch="x86_64", kernel=(6, 18))
    return s.choose(SecurityProfile(ProfileType.RUNTIME_DEFAULT), privileged=False, bounding_caps=caps).bpf


def test_runtime_default_decisions() -> None:
    prog = _runtime_default(DEFAULT_CAPS)
    x64 = k.AUDIT_ARCH_X86_64

    def verdict(name: str, args: list[int] | None = None) -> int:
        return run(prog, X86_64[name], x64, args or [])

    for name in ("read", "write", "openat", "execve", "fchmodat2", "futex_wait", "mseal", "chroot", "socket"):
        assert verdict(name) == ALLOW, name
    for name in ("mount", "unshare", "setns", "keyctl", "add_key", "bpf", "kexec_load",
                 "init_module", "io_uring_setup", "reboot", "settimeofday", "open_by_handle_at"):
        assert verdict(name) == EPERM, name
    assert verdict("clone3") == ENOSYS
    assert verdict("listns") == ENOSYS  # newer than every syscall this container may use
    assert verdict("clone", [0x01200011]) == ALLOW  # fork()'s flags
    assert verdict("clone", [0x10000000 | 0x11]) == EPERM  # CLONE_NEWUSER
    assert verdict("personality", [0xFFFFFFFF]) == ALLOW
    assert verdict("personality", [0x0400000]) == EPERM
    assert run(prog, 470 + 10, x64) == ENOSYS
    assert run(prog, X32["read"], x64) == ALLOW and run(prog, X32["mount"], x64) == EPERM
    assert run(prog, X86["read"], k.AUDIT_ARCH_I386) == ALLOW
    assert run(prog, X86["keyctl"], k.AUDIT_ARCH_I386) == EPERM
    assert run(prog, 0, k.AUDIT_ARCH_AARCH64) == k.SECCOMP_RET_KILL_PROCESS

    admin = _runtime_default(DEFAULT_CAPS | {"CAP_SYS_ADMIN", "CAP_SYS_PTRACE"})
    for name in ("mount", "unshare", "setns", "clone3", "ptrace", "kcmp", "listns"):
        assert run(admin, X86_64[name], x64) == ALLOW, name
    assert run(admin, X86_64["clone"], x64, [0x10000000]) == ALLOW
    no_chroot = _runtime_default(DEFAULT_CAPS - {"CAP_SYS_CHROOT"})
    assert run(no_chroot, X86_64["chroot"], x64) == EPERM


@pytest.mark.skipif(not libseccomp_available(), reason="libseccomp2 not installed")
@pytest.mark.parametrize("caps", [DEFAULT_CAPS, ALL_CAPS])
def test_runtime_default_matches_libseccomp_build_of_same_rules(caps: frozenset[str]) -> None:
    """Every syscall number (x86_64, x32, i386) decided like libseccomp decides the same rules
    (names libseccomp 2.5.4 does not know and the ENOSYS tail aside)."""
    profile = parse_profile(RUNTIME_DEFAULT_FILE.read_bytes())
    filt = dataclasses.replace(profile.resolve(ProfileContext(caps, "x86_64", (6, 18))), enosys_unknown=False)
    ours = compile_filter(filt)
    ref = LibSeccomp(filt.default_action, list(filt.architectures), filt.bad_arch_action)
    named = {n for r in filt.rules for n in r.names}
    try:
        known = {arch: {n for n in named if ref.resolve(arch, n) >= 0} for arch in ("x86_64", "x32", "x86")}
        for rule in filt.rules:
            for name in rule.names:
                if name in known["x86_64"]:
                    ref.add(rule.action, name, [(c.index, c.op, c.value, c.value_two) for c in rule.conditions])
        theirs = ref.export()
    finally:
        ref.close()
    compared = 0
    for arch, audit, table, base in (("x86_64", k.AUDIT_ARCH_X86_64, X86_64, 0),
                                     ("x32", k.AUDIT_ARCH_X86_64, X32, k.X32_SYSCALL_BIT),
                                     ("x86", k.AUDIT_ARCH_I386, X86, 0)):
        by_nr = {nr: name for name, nr in table.items()}
        for nr in range(base, base + 480):
            name = by_nr.get(nr)
            if name in named and (name not in known[arch] or name not in known["x86_64"]):
                continue  # a name this libseccomp cannot place on this ABI
            if audit == k.AUDIT_ARCH_I386 and name in ("socket", "socketpair", "bind", "connect", "listen",
                                                        "accept4", "getsockopt", "setsockopt", "getsockname",
                                                        "getpeername", "sendto", "sendmsg", "recvfrom",
                                                        "recvmsg", "shutdown", "recvmmsg", "sendmmsg",
                                                        "shmget", "shmat", "shmdt", "shmctl", "semget",
                                                        "semctl", "msgget", "msgsnd", "msgrcv", "msgctl"):
                continue  # libseccomp routes these through the socketcall/ipc multiplexers
            for args in ([0] * 6, [0x7E020000, 1, 2, 3, 4, 5], [0xFFFFFFFF] * 6):
                assert run(ours, nr, audit, args) == run(theirs, nr, audit, args), (hex(audit), nr, name, args)
                compared += 1
    assert compared > 3000


def test_choice_and_cache(tmp_path: Path) -> None:
    s = SeccompProfiles(native_arch="x86_64", kernel=(6, 18))
    rd = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    assert s.choose(rd, privileged=True, bounding_caps=DEFAULT_CAPS).bpf == b""
    assert s.choose(None, privileged=False, bounding_caps=DEFAULT_CAPS).profile == "unconfined"
    assert s.choose(SecurityProfile(ProfileType.UNCONFINED), privileged=False, bounding_caps=DEFAULT_CAPS).bpf == b""
    a = s.choose(rd, privileged=False, bounding_caps=DEFAULT_CAPS)
    b = s.choose(rd, privileged=False, bounding_caps=set(DEFAULT_CAPS))
    assert a.bpf and a == b and s.compiles == 1
    c = s.choose(rd, privileged=False, bounding_caps=DEFAULT_CAPS | {"CAP_SYS_ADMIN"})
    assert c.digest != a.digest and s.compiles == 2
    unset_default = SeccompProfiles(native_arch="x86_64", kernel=(6, 18), unset_is_runtime_default=True)
    assert unset_default.choose(None, privileged=False, bounding_caps=DEFAULT_CAPS).bpf == a.bpf

    local = tmp_path / "prof.json"
    local.write_bytes(prof(syscalls=[{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]))
    lp = s.choose(SecurityProfile(ProfileType.LOCALHOST, str(local)), privileged=False, bounding_caps=DEFAULT_CAPS)
    assert lp.profile == f"localhost/{local}"
    assert run(lp.bpf, X86_64["read"], k.AUDIT_ARCH_X86_64) == ALLOW
    assert run(lp.bpf, X86_64["open"], k.AUDIT_ARCH_X86_64) == EPERM
    assert run(lp.bpf, X86_64["openat"], k.AUDIT_ARCH_X86_64) == ENOSYS  # newer than exit_group


@pytest.mark.parametrize(("ref", "content", "match"), [
    ("relative.json", None, "absolute host path"),
    ("", None, "absolute host path"),
    ("{tmp}/missing.json", None, "does not exist"),
    ("{tmp}", None, "is a directory"),
    ("{tmp}/bad.json", b"{", "not valid JSON"),
])
def test_localhost_profile_errors(tmp_path: Path, ref: str, content: bytes | None, match: str) -> None:
    path = ref.format(tmp=tmp_path)
    if content is not None:
        Path(path).write_bytes(content)
    s = SeccompProfiles(native_arch="x86_64", kernel=(6, 18))
    with pytest.raises(InvalidArgument, match=match):
        s.choose(SecurityProfile(ProfileType.LOCALHOST, path), privileged=False, bounding_caps=DEFAULT_CAPS)


def test_kernel_version() -> None:
    assert kernel_version("6.18.44-fc-v657") == (6, 18)
    assert kernel_version("5.4.0") == (5, 4)
    assert kernel_version("weird") == (0, 0)
