"""bpf(2) for cgroup v2 device control: load a BPF_PROG_TYPE_CGROUP_DEVICE program and attach
it to a cgroup directory.

cgroup v2 has no devices.allow/deny files; the kernel asks the programs attached to a cgroup
(and its ancestors, with BPF_F_ALLOW_MULTI) whether an open or mknod of a device node is
allowed. The program text is built by ``runtime.security.devices``; this module only does
the syscalls. Safe in a multithreaded process (no namespace is involved); needs CAP_SYS_ADMIN
(or CAP_BPF). Constants are from linux/bpf.h.
"""

from __future__ import annotations

import ctypes
import os
import struct

from runtime.linux import libc

BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

_SYSCALL_BPF = {"x86_64": 321, "aarch64": 280}
_LOG_SIZE = 1 << 16


def _bpf(cmd: int, attr: bytes) -> int:
    machine = os.uname().machine
    nr = _SYSCALL_BPF["aarch64" if machine in ("aarch64", "arm64") else "x86_64"]
    buf = ctypes.create_string_buffer(attr, len(attr))
    res = libc._libc().syscall(ctypes.c_long(nr), ctypes.c_int(cmd), buf, ctypes.c_uint(len(attr)))
    return int(libc._check(res, f"bpf(cmd={cmd})"))


def load_device_program(insns: bytes, name: str = "crishim_dev") -> int:
    """Load a cgroup-device program; returns its fd. OSError carries the verifier log."""
    prog = ctypes.create_string_buffer(insns, len(insns))
    license_ = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(_LOG_SIZE)
    # union bpf_attr, BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level, log_size,
    # log_buf, kern_version, prog_flags, prog_name[16], prog_ifindex, expected_attach_type
    attr = struct.pack(
        "=IIQQIIQII16sII",
        BPF_PROG_TYPE_CGROUP_DEVICE, len(insns) // 8, ctypes.addressof(prog), ctypes.addressof(license_),
        1, _LOG_SIZE, ctypes.addressof(log), 0, 0, name.encode()[:15], 0, 0,
    )
    try:
        return _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        detail = log.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(exc.errno, f"loading the device BPF program: {exc.strerror}: {' | '.join(detail)}") from None


def attach_device_program(cgroup_dir: str, prog_fd: int) -> None:
    """Attach ``prog_fd`` to the cgroup (BPF_F_ALLOW_MULTI: ancestors' programs still apply)."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # BPF_PROG_ATTACH: target_fd, attach_bpf_fd, attach_type, attach_flags, replace_bpf_fd
        _bpf(BPF_PROG_ATTACH, struct.pack("=IIIII", fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI, 0))
    finally:
        os.close(fd)


def attached_device_programs(cgroup_dir: str) -> int:
    """How many device programs are attached directly to the cgroup (BPF_PROG_QUERY)."""
    fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ids = (ctypes.c_uint32 * 64)()
        # BPF_PROG_QUERY: target_fd, attach_type, query_flags, attach_flags, prog_ids, prog_cnt
        attr = bytearray(struct.pack("=IIIIQI", fd, BPF_CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), 64))
        buf = ctypes.create_string_buffer(bytes(attr), len(attr) + 4)
        machine = os.uname().machine
        nr = _SYSCALL_BPF["aarch64" if machine in ("aarch64", "arm64") else "x86_64"]
        res = libc._libc().syscall(ctypes.c_long(nr), ctypes.c_int(BPF_PROG_QUERY), buf, ctypes.c_uint(len(buf)))
        libc._check(res, "bpf(BPF_PROG_QUERY)")
        return int(struct.unpack_from("=I", buf.raw, 24)[0])
    finally:
        os.close(fd)
