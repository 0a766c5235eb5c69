"""seccomp(2): the kernel's ABI constants and installing a compiled filter.

The daemon compiles profiles into classic BPF (``runtime.security.seccomp``); the pod shim's
forked child installs the bytes with :func:`load_filter` right before execve. Nothing here
parses profiles.

Constants are from linux/seccomp.h, linux/audit.h and linux/filter.h.
"""

from __future__ import annotations

import ctypes
import os

from runtime.linux import libc

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4

# Filter return values (the high 16 bits select the action, the low 16 carry data).
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_KILL_THREAD = 0x00000000
SECCOMP_RET_TRAP = 0x00030000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_USER_NOTIF = 0x7FC00000
SECCOMP_RET_TRACE = 0x7FF00000
SECCOMP_RET_LOG = 0x7FFC0000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_DATA = 0x0000FFFF

# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
DATA_NR = 0
DATA_ARCH = 4
DATA_ARGS = 16

# linux/audit.h: EM_* | __AUDIT_ARCH_64BIT (0x80000000) | __AUDIT_ARCH_LE (0x40000000)
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
# arch/x86/include/uapi/asm/unistd.h: x32 syscalls are x86_64 ones with this bit set.
X32_SYSCALL_BIT = 0x40000000

# linux/bpf_common.h: the kernel refuses longer classic programs.
BPF_MAXINSNS = 4096
SOCK_FILTER_SIZE = 8


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def load_filter(bpf: bytes, flags: int = 0) -> None:
    """Install ``bpf`` (an array of struct sock_filter) on the calling thread.

    Needs no_new_privs or CAP_SYS_ADMIN (kernel: seccomp_prepare_filter). Raises OSError:
    EINVAL for a malformed program, EACCES without either privilege.
    """
    if not bpf:
        return
    if len(bpf) % SOCK_FILTER_SIZE or len(bpf) // SOCK_FILTER_SIZE > BPF_MAXINSNS:
        raise OSError(22, f"seccomp: program of {len(bpf)} bytes is not 1..{BPF_MAXINSNS} instructions")
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // SOCK_FILTER_SIZE, ctypes.cast(buf, ctypes.c_void_p))
    res = libc._libc().syscall(
        ctypes.c_long(libc.syscall_number("seccomp")),
        ctypes.c_uint(SECCOMP_SET_MODE_FILTER),
        ctypes.c_uint(flags),
        ctypes.byref(prog),
    )
    libc._check(res, "seccomp(SECCOMP_SET_MODE_FILTER)")


def actions_available(path: str = "/proc/sys/kernel/seccomp/actions_avail") -> frozenset[str]:
    """Actions the running kernel implements ("kill_process", "errno", "log", ...); empty
    when the kernel has no seccomp filter support."""
    try:
        with open(path) as f:
            return frozenset(f.read().split())
    except OSError:
        return frozenset()


def native_arch() -> str:
    """This machine's architecture as the seccomp tables name it ("x86_64", "aarch64")."""
    machine = os.uname().machine
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
