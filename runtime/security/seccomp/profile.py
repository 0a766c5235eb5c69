"""Seccomp profiles in the Docker/OCI JSON format, parsed and resolved for one container.

A profile (moby's ``profiles/seccomp`` format, a superset of the OCI runtime-spec
``linux.seccomp`` object) has ``defaultAction`` (+ ``defaultErrnoRet``), ``architectures`` or
``archMap``, and ``syscalls`` entries with ``names`` (or the old ``name``), ``action``
(+ ``errnoRet``), ``args`` and the Docker-only ``includes``/``excludes`` (``caps``,
``arches``, ``minKernel``) that make a rule depend on the container.

:func:`parse_profile` validates the text once (:class:`~runtime.errors.InvalidArgument` naming
the profile and the bad field); :meth:`Profile.resolve` applies includes/excludes for one
container and returns the :class:`SeccompFilter` the BPF compiler takes. Semantics follow
moby's ``setupSeccomp`` and runc's ``matchCall``:

- an include needs *every* listed capability (in the bounding set) and the host's Go arch
  name among ``arches``; an exclude drops the rule if *any* listed capability or arch matches;
  ``minKernel`` "X.Y" compares with the running kernel;
- the conditions of one entry are ANDed, unless one argument index appears twice: then each
  condition becomes a rule of its own (ORed), as runc does;
- a rule whose action equals the default action is dropped (it could change nothing);
- names unknown for an architecture are skipped for that architecture (a syscall the
  kernel headers do not know cannot be called by number either).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import InvalidArgument
from runtime.linux import seccomp as k

EPERM = 1
MAX_ERRNO = 4095  # kernel: larger values are not errnos
MAX_PROFILE_BYTES = 4 << 20

# libseccomp's architecture tokens -> our syscall tables. The ones we have no table for are
# accepted and left out (they describe other hosts); their processes get the bad-arch action.
SCMP_ARCHES: dict[str, str | None] = {
    "SCMP_ARCH_X86_64": "x86_64",
    "SCMP_ARCH_X86": "x86",
    "SCMP_ARCH_X32": "x32",
    "SCMP_ARCH_AARCH64": "aarch64",
    "SCMP_ARCH_ARM": None,
    "SCMP_ARCH_MIPS": None,
    "SCMP_ARCH_MIPS64": None,
    "SCMP_ARCH_MIPS64N32": None,
    "SCMP_ARCH_MIPSEL": None,
    "SCMP_ARCH_MIPSEL64": None,
    "SCMP_ARCH_MIPSEL64N32": None,
    "SCMP_ARCH_PPC": None,
    "SCMP_ARCH_PPC64": None,
    "SCMP_ARCH_PPC64LE": None,
    "SCMP_ARCH_S390": None,
    "SCMP_ARCH_S390X": None,
    "SCMP_ARCH_PARISC": None,
    "SCMP_ARCH_PARISC64": None,
    "SCMP_ARCH_RISCV64": None,
    "SCMP_ARCH_LOONGARCH64": None,
    "SCMP_ARCH_M68K": None,
    "SCMP_ARCH_SH": None,
    "SCMP_ARCH_SHEB": None,
}
NATIVE_SCMP = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}
# Go's GOARCH names, which includes/excludes "arches" use (moby compares runtime.GOARCH).
GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}

OPS = {
    "SCMP_CMP_NE": "ne",
    "SCMP_CMP_LT": "lt",
    "SCMP_CMP_LE": "le",
    "SCMP_CMP_EQ": "eq",
    "SCMP_CMP_GE": "ge",
    "SCMP_CMP_GT": "gt",
    "SCMP_CMP_MASKED_EQ": "masked_eq",
}
_ACTIONS = {
    "SCMP_ACT_KILL": k.SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": k.SECCOMP_RET_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": k.SECCOMP_RET_KILL_PROCESS,
    "SCMP_ACT_TRAP": k.SECCOMP_RET_TRAP,
    "SCMP_ACT_ERRNO": k.SECCOMP_RET_ERRNO,
    "SCMP_ACT_TRACE": k.SECCOMP_RET_TRACE,
    "SCMP_ACT_ALLOW": k.SECCOMP_RET_ALLOW,
    "SCMP_ACT_LOG": k.SECCOMP_RET_LOG,
}
_WITH_DATA = {"SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"}
U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ArgCondition:
    """One comparison of a syscall argument (64-bit, unsigned). For ``masked_eq``,
    ``value`` is the mask and ``value_two`` the expected masked value (libseccomp order)."""

    index: int
    op: str
    value: int
    value_two: int = 0


@dataclass(frozen=True, slots=True)
class SyscallRule:
    """``action`` (a SECCOMP_RET_* value with its data) when every condition holds."""

    names: tuple[str, ...]
    action: int
    conditions: tuple[ArgCondition, ...] = ()


@dataclass(frozen=True, slots=True)
class SeccompFilter:
    """A profile resolved for one container: the compiler's input.

    ``architectures`` are table names ("x86_64", "x86", "x32", "aarch64"), native first.
    ``enosys_unknown``: syscalls numbered above every syscall the profile names fail with
    ENOSYS instead of the default action, so programs fall back from syscalls newer than
    the profile (runc's patchbpf does the same).
    """

    default_action: int
    architectures: tuple[str, ...]
    rules: tuple[SyscallRule, ...]
    bad_arch_action: int = k.SECCOMP_RET_KILL_PROCESS
    enosys_unknown: bool = True


@dataclass(frozen=True, slots=True)
class ProfileContext:
    """What includes/excludes are checked against: the container's bounding capabilities
    ("CAP_SYS_ADMIN" names), the host architecture and kernel release."""

    capabilities: frozenset[str]
    native_arch: str = "x86_64"
    kernel: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True)
class _Filter:
    caps: tuple[str, ...] = ()
    arches: tuple[str, ...] = ()
    min_kernel: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class _Entry:
    names: tuple[str, ...]
    action: int
    args: tuple[ArgCondition, ...]
    includes: _Filter = field(default_factory=_Filter)
    excludes: _Filter = field(default_factory=_Filter)


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed, validated profile; includes/excludes still unresolved."""

    source: str
    default_action: int
    architectures: tuple[str, ...]
    arch_map: tuple[tuple[str, tuple[str, ...]], ...]
    entries: tuple[_Entry, ...]

    def arches_for(self, native: str) -> tuple[str, ...]:
        """Table names to compile for on a ``native`` host: the native one always (as
        libseccomp's filter context starts with it), then the profile's."""
        tokens: list[str] = list(self.architectures)
        native_token = NATIVE_SCMP.get(native, "")
        for arch, subs in self.arch_map:
            if arch == native_token:
                tokens.extend((arch, *subs))
        out = [native]
        for token in tokens:
            name = SCMP_ARCHES[token]
            if name is not None and name not in out:
                out.append(name)
        return tuple(out)

    def resolve(self, ctx: ProfileContext) -> SeccompFilter:
        """The rules that apply to a container in ``ctx``, conditions split as runc does."""
        go_arch = GO_ARCH.get(ctx.native_arch, ctx.native_arch)
        rules: list[SyscallRule] = []
        for entry in self.entries:
            if not _included(entry.includes, ctx, go_arch) or _excluded(entry.excludes, ctx, go_arch):
                continue
            if entry.action == self.default_action:
                continue
            indexes = [c.index for c in entry.args]
            if len(set(indexes)) != len(indexes):
                rules.extend(SyscallRule(entry.names, entry.action, (c,)) for c in entry.args)
            else:
                rules.append(SyscallRule(entry.names, entry.action, entry.args))
        return SeccompFilter(self.default_action, self.arches_for(ctx.native_arch), tuple(rules))


def _included(f: _Filter, ctx: ProfileContext, go_arch: str) -> bool:
    if f.caps and not all(c in ctx.capabilities for c in f.caps):
        return False
    if f.arches and go_arch not in f.arches:
        return False
    return not (f.min_kernel and ctx.kernel < f.min_kernel)


def _excluded(f: _Filter, ctx: ProfileContext, go_arch: str) -> bool:
    if any(c in ctx.capabilities for c in f.caps):
        return True
    if go_arch in f.arches:
        return True
    return bool(f.min_kernel and ctx.kernel >= f.min_kernel)


class _Reader:
    """Field access that raises InvalidArgument naming the profile and the JSON path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, what: str) -> InvalidArgument:
        return InvalidArgument(f"seccomp profile {self.source}: {where}: {what}")

    def obj(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "expected a JSON object")
        return value

    def strings(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(where, "expected a list of strings")
        return tuple(value)

    def uint(self, value: Any, where: str, limit: int = U64) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
            raise self.fail(where, f"expected an integer in [0, {limit}], got {value!r}")
        return value

    def action(self, name: Any, errno: Any, where: str) -> int:
        if name == "SCMP_ACT_NOTIFY":
            raise self.fail(where, "SCMP_ACT_NOTIFY needs a seccomp agent, which this runtime does not run")
        if name not in _ACTIONS:
            raise self.fail(where, f"unknown action {name!r}")
        base = _ACTIONS[name]
        if name not in _WITH_DATA:
            if errno is not None:
                raise self.fail(where, f"errnoRet is only valid with SCMP_ACT_ERRNO or SCMP_ACT_TRACE, not {name}")
            return base
        data = EPERM if errno is None else self.uint(errno, where + ".errnoRet", MAX_ERRNO)
        return base | data

    def kernel(self, value: Any, where: str) -> tuple[int, int] | None:
        if value in (None, ""):
            return None
        parts = value.split(".") if isinstance(value, str) else []
        if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
            raise self.fail(where, f"minKernel {value!r} is not 'MAJOR.MINOR'")
        return int(parts[0]), int(parts[1])

    def filter(self, value: Any, where: str) -> _Filter:
        if value is None:
            return _Filter()
        d = self.obj(value, where)
        caps = tuple(_cap_name(c) for c in self.strings(d.get("caps"), where + ".caps"))
        return _Filter(caps, self.strings(d.get("arches"), where + ".arches"),
                       self.kernel(d.get("minKernel"), where + ".minKernel"))


def _cap_name(name: str) -> str:
    up = name.upper()
    return up if up.startswith("CAP_") else "CAP_" + up


def parse_profile(text: str | bytes, source: str = "<profile>") -> Profile:
    """Parse and validate a profile. Raises InvalidArgument (bad JSON, unknown action,
    architecture or operator, out-of-range values, unsupported features)."""
    r = _Reader(source)
    if len(text) > MAX_PROFILE_BYTES:
        raise r.fail("file", f"larger than {MAX_PROFILE_BYTES} bytes")
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise r.fail("file", f"not valid JSON ({exc})") from None
    doc = r.obj(raw, "top level")
    if "defaultAction" not in doc:
        raise r.fail("defaultAction", "missing")
    default = r.action(doc["defaultAction"], doc.get("defaultErrnoRet"), "defaultAction")
    if doc.get("listenerPath"):
        raise r.fail("listenerPath", "seccomp notify listeners are not supported")
    flags = r.strings(doc.get("flags"), "flags")
    if flags:
        raise r.fail("flags", f"filter flags {list(flags)} are not supported")
    arches = r.strings(doc.get("architectures"), "architectures")
    arch_map: list[tuple[str, tuple[str, ...]]] = []
    for i, item in enumerate(doc.get("archMap") or []):
        d = r.obj(item, f"archMap[{i}]")
        arch = d.get("architecture")
        if not isinstance(arch, str):
            raise r.fail(f"archMap[{i}].architecture", "expected a string")
        arch_map.append((arch, r.strings(d.get("subArchitectures"), f"archMap[{i}].subArchitectures")))
    if arches and arch_map:
        raise r.fail("architectures", "'architectures' and 'archMap' cannot both be set")
    for token in (*arches, *(a for a, subs in arch_map for a in (a, *subs))):
        if token not in SCMP_ARCHES:
            raise r.fail("architectures", f"unknown architecture {token!r}")
    entries: list[_Entry] = []
    syscalls = doc.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise r.fail("syscalls", "expected a list")
    for i, item in enumerate(syscalls):
        where = f"syscalls[{i}]"
        d = r.obj(item, where)
        names = r.strings(d.get("names"), where + ".names")
        if isinstance(d.get("name"), str) and d["name"]:
            names = (*names, d["name"])
        if not names or any(not n for n in names):
            raise r.fail(where, "no syscall names")
        action = r.action(d.get("action"), d.get("errnoRet"), where + ".action")
        args: list[ArgCondition] = []
        for j, a in enumerate(d.get("args") or []):
            aw = f"{where}.args[{j}]"
            ad = r.obj(a, aw)
            op = ad.get("op")
            if op not in OPS:
                raise r.fail(aw + ".op", f"unknown operator {op!r}")
            args.append(ArgCondition(
                index=r.uint(ad.get("index"), aw + ".index", 5),
                op=OPS[op],
                value=r.uint(ad.get("value", 0), aw + ".value"),
                value_two=r.uint(ad.get("valueTwo", 0), aw + ".valueTwo"),
            ))
        entries.append(_Entry(names, action, tuple(args), r.filter(d.get("includes"), where + ".includes"),
                              r.filter(d.get("excludes"), where + ".excludes")))
    return Profile(source, default, arches, tuple(arch_map), tuple(entries))
