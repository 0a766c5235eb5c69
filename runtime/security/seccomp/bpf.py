"""Compile a :class:`SeccompFilter` into a classic-BPF seccomp program (bytes).

Layout of the program (all jumps forward, as classic BPF requires):

    ld arch; one jeq per audit arch -> its section; else ret bad_arch_action
    section x86_64:  ld nr; nr >= X32 bit -> x32 section (or bad arch when x32 is not
                     allowed); [nr > highest named -> ret ERRNO(ENOSYS)]; binary search on
                     the syscall numbers that have rules -> their rule block; else default
                     (the search is over runs of consecutive numbers with one decision,
                     so long runs of allowed syscalls cost one compare)
    rule block:      unconditional: ret action. Conditional: each rule's conditions in
                     order, the first rule whose conditions all hold returns its action;
                     none -> default.
    64-bit argument compares split into a high and a low 32-bit word (little endian),
    as libseccomp does; 32-bit ABIs (x86) compare the low word only.

Within one syscall, an unconditional rule wins over conditional ones; two unconditional
rules with different actions are a conflict (InvalidArgument), as in libseccomp.

Classic BPF conditional jumps reach at most 255 instructions; the assembler inserts ``ja``
trampolines where a target is farther. Programs over the kernel's 4096 instructions are
refused.
"""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field

from runtime.errors import InvalidArgument
from runtime.linux import seccomp as k
from runtime.security.seccomp.profile import ArgCondition, SeccompFilter, SyscallRule
from runtime.security.seccomp.syscall_tables import TABLES

# linux/filter.h opcodes
BPF_LD_W_ABS = 0x20
BPF_JMP_JA = 0x05
BPF_JEQ_K = 0x15
BPF_JGT_K = 0x25
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
BPF_ALU_AND_K = 0x54
_CONDITIONAL = frozenset({BPF_JEQ_K, BPF_JGT_K, BPF_JGE_K, BPF_JSET_K})

_FMT = struct.Struct("=HBBI")


@dataclass(frozen=True, slots=True)
class ArchInfo:
    audit: int
    is64: bool
    x32: bool = False


ARCHES: dict[str, ArchInfo] = {
    "x86_64": ArchInfo(k.AUDIT_ARCH_X86_64, True),
    "x32": ArchInfo(k.AUDIT_ARCH_X86_64, True, x32=True),
    "x86": ArchInfo(k.AUDIT_ARCH_I386, False),
    "aarch64": ArchInfo(k.AUDIT_ARCH_AARCH64, True),
}


@dataclass(slots=True)
class _Insn:
    code: int
    k: int
    jt: int = -1  # label ids; -1: none (unconditional)
    jf: int = -1


@dataclass(slots=True)
class Assembler:
    """Instructions with symbolic forward jumps; :meth:`assemble` lays them out."""

    items: list[_Insn | int] = field(default_factory=list)  # int: a label placed here
    _labels: int = 0

    def label(self) -> int:
        self._labels += 1
        return self._labels

    def place(self, label: int) -> None:
        self.items.append(label)

    def ld(self, offset: int) -> None:
        self.items.append(_Insn(BPF_LD_W_ABS, offset))

    def and_(self, mask: int) -> None:
        self.items.append(_Insn(BPF_ALU_AND_K, mask))

    def ret(self, value: int) -> None:
        self.items.append(_Insn(BPF_RET_K, value))

    def ja(self, target: int) -> None:
        self.items.append(_Insn(BPF_JMP_JA, 0, jt=target))

    def jump(self, code: int, value: int, jt: int, jf: int) -> None:
        self.items.append(_Insn(code, value, jt, jf))

    def assemble(self) -> bytes:
        items = list(self.items)
        while True:
            pos, where = _layout(items)
            far = None
            for i, it in enumerate(items):
                if isinstance(it, _Insn) and it.code in _CONDITIONAL:
                    for attr in ("jt", "jf"):
                        dist = where[getattr(it, attr)] - pos[i] - 1
                        if dist < 0:
                            raise AssertionError("seccomp assembler: backward jump")
                        if dist > 255:
                            far = (i, attr)
                            break
                if far:
                    break
            if far is None:
                break
            i, attr = far
            insn = items[i]
            assert isinstance(insn, _Insn)
            self._labels += 1
            hop = self._labels
            items[i + 1:i + 1] = [hop, _Insn(BPF_JMP_JA, 0, jt=getattr(insn, attr))]
            setattr(insn, attr, hop)
        pos, where = _layout(items)
        out = bytearray()
        for i, it in enumerate(items):
            if not isinstance(it, _Insn):
                continue
            if it.code == BPF_JMP_JA:
                dist = where[it.jt] - pos[i] - 1
                if dist < 0:
                    raise AssertionError("seccomp assembler: backward jump")
                out += _FMT.pack(it.code, 0, 0, dist)
            elif it.code in _CONDITIONAL:
                out += _FMT.pack(it.code, where[it.jt] - pos[i] - 1, where[it.jf] - pos[i] - 1, it.k)
            else:
                out += _FMT.pack(it.code, 0, 0, it.k)
        return bytes(out)


def _layout(items: list[_Insn | int]) -> tuple[dict[int, int], dict[int, int]]:
    """(item index -> instruction index, label -> instruction index)."""
    pos: dict[int, int] = {}
    where: dict[int, int] = {}
    n = 0
    for i, it in enumerate(items):
        if isinstance(it, _Insn):
            pos[i] = n
            n += 1
        else:
            where[it] = n
    return pos, where


@dataclass(frozen=True, slots=True)
class _Block:
    unconditional: int | None
    conditional: tuple[SyscallRule, ...]


def _blocks(rules: tuple[SyscallRule, ...], table: dict[str, int]) -> tuple[dict[int, _Block], int]:
    """Rules by syscall number for one arch, and the highest number the profile names."""
    uncond: dict[int, int] = {}
    cond: dict[int, list[SyscallRule]] = {}
    highest = -1
    for rule in rules:
        for name in rule.names:
            nr = table.get(name)
            if nr is None:
                continue
            highest = max(highest, nr)
            if rule.conditions:
                cond.setdefault(nr, []).append(rule)
            elif uncond.setdefault(nr, rule.action) != rule.action:
                raise InvalidArgument(
                    f"seccomp profile: syscall {name!r} has rules with different actions "
                    f"({uncond[nr]:#x} and {rule.action:#x})"
                )
    blocks = {nr: _Block(uncond.get(nr), tuple(cond.get(nr, ()))) for nr in {*uncond, *cond}}
    return blocks, highest


def all_names(filt: SeccompFilter) -> set[str]:
    return {n for r in filt.rules for n in r.names}


def compile_filter(filt: SeccompFilter) -> bytes:
    """The BPF program for ``filt``. Raises InvalidArgument for conflicting rules or a
    program longer than the kernel accepts."""
    asm = Assembler()
    by_audit: dict[int, list[str]] = {}
    for arch in filt.architectures:
        if arch not in ARCHES:
            raise InvalidArgument(f"seccomp: no syscall table for architecture {arch!r}")
        by_audit.setdefault(ARCHES[arch].audit, []).append(arch)
    asm.ld(k.DATA_ARCH)
    sections = [(audit, asm.label()) for audit in by_audit]
    for audit, label in sections:
        nxt = asm.label()
        asm.jump(BPF_JEQ_K, audit, label, nxt)
        asm.place(nxt)
    asm.ret(filt.bad_arch_action)
    for audit, label in sections:
        asm.place(label)
        arches = by_audit[audit]
        native = [a for a in arches if not ARCHES[a].x32]
        x32 = [a for a in arches if ARCHES[a].x32]
        asm.ld(k.DATA_NR)
        if audit == k.AUDIT_ARCH_X86_64:
            # x32 shares x86_64's audit arch; its syscall numbers carry the x32 bit.
            x32_label, native_label = asm.label(), asm.label()
            asm.jump(BPF_JGE_K, k.X32_SYSCALL_BIT, x32_label, native_label)
            asm.place(native_label)
            if native:
                _section(asm, filt, native[0], upper=k.X32_SYSCALL_BIT)
            else:
                asm.ret(filt.bad_arch_action)
            asm.place(x32_label)
            if x32:
                _section(asm, filt, x32[0], upper=None)
            else:
                asm.ret(filt.bad_arch_action)
        else:
            _section(asm, filt, native[0], upper=None)
    program = asm.assemble()
    if len(program) // 8 > k.BPF_MAXINSNS:
        raise InvalidArgument(
            f"seccomp profile compiles to {len(program) // 8} BPF instructions, over the kernel's {k.BPF_MAXINSNS}"
        )
    return program


def _section(asm: Assembler, filt: SeccompFilter, arch: str, upper: int | None) -> None:
    """Code for one ABI, entered with the syscall number in A."""
    info = ARCHES[arch]
    blocks, highest = _blocks(filt.rules, TABLES[arch])
    default = filt.default_action
    denying_default = default & 0xFFFF0000 not in (k.SECCOMP_RET_ALLOW, k.SECCOMP_RET_LOG)
    # Syscalls newer than anything the profile mentions get ENOSYS, so programs fall back
    # (glibc does for clone3, fchmodat2, ...) instead of failing with the default EPERM.
    tail = k.SECCOMP_RET_ERRNO | errno.ENOSYS if filt.enosys_unknown and denying_default and highest >= 0 else None
    _search(asm, _segments(blocks, default, highest, tail), blocks, default, info.is64)


# A decision for a run of syscall numbers: ("ret", action) or ("block", nr) for a syscall
# with conditional rules.
_Decision = tuple[str, int]


def _segments(blocks: dict[int, _Block], default: int, highest: int,
              tail: int | None) -> list[tuple[int, _Decision]]:
    """Runs of consecutive syscall numbers with one decision, as (first number, decision).

    Numbers without a rule (including holes in the table) take the default; numbers above
    the highest one named take ``tail`` when set. Adjacent runs returning the same action
    merge, which keeps the search short: most allowed syscalls sit in long runs.
    """
    segs: list[tuple[int, _Decision]] = []

    def add(start: int, decision: _Decision) -> None:
        if segs and segs[-1][0] == start:
            segs.pop()  # an empty run: the next decision starts at the same number
        if segs and segs[-1][1] == decision and decision[0] == "ret":
            return
        segs.append((start, decision))

    add(0, ("ret", default))
    for nr in sorted(blocks):
        b = blocks[nr]
        add(nr, ("ret", b.unconditional) if b.unconditional is not None else ("block", nr))
        add(nr + 1, ("ret", default))
    if tail is not None:
        segs = [seg for seg in segs if seg[0] <= highest]
        add(highest + 1, ("ret", tail))
    return segs


def _search(asm: Assembler, segs: list[tuple[int, _Decision]], blocks: dict[int, _Block], default: int,
            is64: bool) -> None:
    """Binary search on the run boundaries (unsigned compares), then the run's decision."""
    if len(segs) > 1:
        mid = len(segs) // 2
        left, right = asm.label(), asm.label()
        asm.jump(BPF_JGE_K, segs[mid][0], right, left)
        asm.place(left)
        _search(asm, segs[:mid], blocks, default, is64)
        asm.place(right)
        _search(asm, segs[mid:], blocks, default, is64)
        return
    kind, value = segs[0][1]
    if kind == "ret":
        asm.ret(value)
        return
    for rule in blocks[value].conditional:
        fail = asm.label()
        for cond in rule.conditions:
            _condition(asm, cond, fail, is64)
        asm.ret(rule.action)
        asm.place(fail)
    asm.ret(default)


def _condition(asm: Assembler, c: ArgCondition, fail: int, is64: bool) -> None:
    """Falls through when the condition holds, jumps to ``fail`` when not."""
    lo_off = k.DATA_ARGS + 8 * c.index
    hi_off = lo_off + 4
    v_hi, v_lo = c.value >> 32, c.value & 0xFFFFFFFF
    # libseccomp (so runc) compares with the datum ANDed with the mask: a datum bit outside
    # the mask is ignored rather than making the condition impossible.
    two = c.value_two & c.value
    t_hi, t_lo = two >> 32, two & 0xFFFFFFFF
    ok = asm.label()
    if not is64:
        asm.ld(lo_off)
        if c.op == "masked_eq":
            asm.and_(v_lo)
            asm.jump(BPF_JEQ_K, t_lo, ok, fail)
        else:
            code, when_true_ok = {
                "eq": (BPF_JEQ_K, True), "ne": (BPF_JEQ_K, False), "gt": (BPF_JGT_K, True),
                "ge": (BPF_JGE_K, True), "lt": (BPF_JGE_K, False), "le": (BPF_JGT_K, False),
            }[c.op]
            asm.jump(code, v_lo, ok if when_true_ok else fail, fail if when_true_ok else ok)
        asm.place(ok)
        return
    lo = asm.label()
    asm.ld(hi_off)
    if c.op == "eq":
        asm.jump(BPF_JEQ_K, v_hi, lo, fail)
        asm.place(lo)
        asm.ld(lo_off)
        asm.jump(BPF_JEQ_K, v_lo, ok, fail)
    elif c.op == "ne":
        asm.jump(BPF_JEQ_K, v_hi, lo, ok)
        asm.place(lo)
        asm.ld(lo_off)
        asm.jump(BPF_JEQ_K, v_lo, fail, ok)
    elif c.op == "masked_eq":
        asm.and_(v_hi)
        asm.jump(BPF_JEQ_K, t_hi, lo, fail)
        asm.place(lo)
        asm.ld(lo_off)
        asm.and_(v_lo)
        asm.jump(BPF_JEQ_K, t_lo, ok, fail)
    else:
        # Ordered compares: decide on the high word unless it is equal, then on the low word.
        greater_ok = c.op in ("gt", "ge")
        eq_hi = asm.label()
        asm.jump(BPF_JGT_K, v_hi, ok if greater_ok else fail, eq_hi)
        asm.place(eq_hi)
        asm.jump(BPF_JEQ_K, v_hi, lo, fail if greater_ok else ok)
        asm.place(lo)
        asm.ld(lo_off)
        if c.op == "gt":
            asm.jump(BPF_JGT_K, v_lo, ok, fail)
        elif c.op == "ge":
            asm.jump(BPF_JGE_K, v_lo, ok, fail)
        elif c.op == "lt":
            asm.jump(BPF_JGE_K, v_lo, fail, ok)
        else:  # le
            asm.jump(BPF_JGT_K, v_lo, fail, ok)
    asm.place(ok)
