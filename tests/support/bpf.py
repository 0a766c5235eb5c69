"""A classic-BPF interpreter for seccomp programs, and libseccomp as a reference compiler.

``run(program, nr, arch, args)`` evaluates a program the way the kernel does for one
syscall (struct seccomp_data, little endian). ``LibSeccomp`` builds the same filter with
Debian's libseccomp2 through ctypes and exports its BPF, so tests can compare our compiler's
decisions with libseccomp's on many inputs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
import tempfile
from collections.abc import Sequence

_INSN = struct.Struct("=HBBI")


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    return [_INSN.unpack_from(program, i) for i in range(0, len(program), 8)]


def seccomp_data(nr: int, arch: int, args: Sequence[int] = (), ip: int = 0) -> bytes:
    full = list(args) + [0] * (6 - len(args))
    return struct.pack("<iIQ6Q", nr if nr < 1 << 31 else nr - (1 << 32), arch, ip, *full)


def run(program: bytes | list[tuple[int, int, int, int]], nr: int, arch: int, args: Sequence[int] = ()) -> int:
    """The value the program returns for this syscall. Raises on invalid programs."""
    insns = decode(program) if isinstance(program, bytes) else program
    data = seccomp_data(nr, arch, args)
    a = 0
    x = 0
    pc = 0
    steps = 0
    while True:
        steps += 1
        if pc >= len(insns) or steps > 100_000:
            raise ValueError(f"fell off the program at {pc}")
        code, jt, jf, k = insns[pc]
        pc += 1
        cls = code & 0x07
        if code == 0x20:  # ld w abs
            if k % 4 or k + 4 > len(data):
                raise ValueError(f"bad load offset {k}")
            a = struct.unpack_from("<I", data, k)[0]
        elif code == 0x54:  # and k
            a &= k
        elif code == 0x05:  # ja
            pc += k
        elif cls == 0x05:
            op = code & 0xF0
            if op == 0x10:
                cond = a == k
            elif op == 0x20:
                cond = a > k
            elif op == 0x30:
                cond = a >= k
            elif op == 0x40:
                cond = bool(a & k)
            else:
                raise ValueError(f"unsupported jump {code:#x}")
            pc += jt if cond else jf
        elif code == 0x06:
            return k
        elif code == 0x00:  # ld imm (libseccomp uses it)
            a = k
        elif code == 0x07:  # tax
            x = a
        elif code == 0x87:  # txa
            a = x
        elif code == 0x16:  # ret a
            return a
        elif code in (0x02, 0x03):  # st / stx to scratch: not used by either compiler
            raise ValueError("scratch memory not supported")
        else:
            raise ValueError(f"unsupported opcode {code:#x} at {pc - 1}")


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


SCMP_OPS = {"ne": 1, "lt": 2, "le": 3, "eq": 4, "ge": 5, "gt": 6, "masked_eq": 7}
SCMP_ARCH = {"x86_64": 0xC000003E, "x86": 0x40000003, "x32": 0x4000003E, "aarch64": 0xC00000B7}
SCMP_FLTATR_ACT_BADARCH = 2  # enum scmp_filter_attr: ACT_DEFAULT is 1


def libseccomp_available() -> bool:
    return ctypes.util.find_library("seccomp") is not None


class LibSeccomp:
    """A libseccomp filter context; ``export()`` returns its BPF program."""

    def __init__(self, default_action: int, arches: Sequence[str], bad_arch_action: int) -> None:
        self.lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
        self.lib.seccomp_init.restype = ctypes.c_void_p
        self.lib.seccomp_init.argtypes = [ctypes.c_uint32]
        self.lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        self.lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        for fn in (self.lib.seccomp_rule_add_exact_array, self.lib.seccomp_rule_add_array):
            fn.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)]
        self.lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        self.lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        self.lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self.ctx = self.lib.seccomp_init(default_action)
        assert self.ctx
        self._check(self.lib.seccomp_attr_set(self.ctx, SCMP_FLTATR_ACT_BADARCH, bad_arch_action), "badarch")
        for arch in arches:
            if arch != "x86_64":
                self._check(self.lib.seccomp_arch_add(self.ctx, SCMP_ARCH[arch]), f"arch_add {arch}")
        if "x86_64" not in arches:
            self._check(self.lib.seccomp_arch_remove(self.ctx, SCMP_ARCH["x86_64"]), "arch_remove")
        self.arches = list(arches)

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc < 0:
            raise OSError(-rc, f"libseccomp {what}: {os.strerror(-rc)}")

    def resolve(self, arch: str, name: str) -> int:
        return int(self.lib.seccomp_syscall_resolve_name_arch(SCMP_ARCH[arch], name.encode()))

    def add(self, action: int, name: str, conditions: Sequence[tuple[int, str, int, int]] = ()) -> None:
        """Add a rule for syscall ``name`` (libseccomp takes native numbers and translates
        them for the filter's architectures)."""
        nr = int(self.lib.seccomp_syscall_resolve_name(name.encode()))
        arr = (_ArgCmp * max(1, len(conditions)))()
        for i, (index, op, a, b) in enumerate(conditions):
            arr[i] = _ArgCmp(index, SCMP_OPS[op], a, b)
        # "exact" (no rewriting) only works on single-architecture filters.
        add = self.lib.seccomp_rule_add_exact_array if len(self.arches) == 1 else self.lib.seccomp_rule_add_array
        self._check(add(self.ctx, action, nr, len(conditions), arr), f"rule {name}")

    def export(self) -> bytes:
        with tempfile.TemporaryFile() as f:
            self._check(self.lib.seccomp_export_bpf(self.ctx, f.fileno()), "export")
            f.seek(0)
            return f.read()

    def close(self) -> None:
        if self.ctx:
            self.lib.seccomp_release(self.ctx)
            self.ctx = None
