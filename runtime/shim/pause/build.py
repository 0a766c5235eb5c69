"""Building the pause binary from ``pause.c``, cached by what goes into it.

:func:`build` compiles ``pause.c`` beside this module into ``dest`` unless ``dest`` already
holds the build of the same recipe: the recipe hash (:func:`recipe_hash`: the source, the
compiler flags and the target machine) is kept in ``<dest>.recipe``, written after the
binary, so a stale or half-written pair is rebuilt. The binary is written to a temporary
file in ``dest``'s directory and renamed over ``dest`` (a running pod's holder keeps its
own copy: the shim execs a memfd of it), so concurrent builders and readers never see a
partial file.

Flags: no libc and no start files (``pause.c`` makes raw system calls), static, not PIE, no
stack protector (there is no TLS to hold its canary), no unwind tables, no build id, one
read-and-execute segment with 4 KiB alignment: the file is under 1 KiB and maps one page.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("pause.c")

CFLAGS: tuple[str, ...] = (
    "-Os", "-static", "-nostdlib", "-ffreestanding", "-fno-stack-protector", "-fno-pie", "-no-pie",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables", "-fno-ident", "-s",
    "-Wall", "-Wextra", "-Werror",
    "-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,-z,norelro", "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noseparate-code",
)
#: x86_64 only: no endbr64 landing pads (nothing indirect-branches into this program)
X86_64_CFLAGS: tuple[str, ...] = ("-fcf-protection=none",)

#: the machines pause.c has system call code for (uname -m)
MACHINES = ("x86_64", "aarch64")

BUILD_TIMEOUT = 120.0


class BuildError(RuntimeError):
    """The pause binary could not be built (no compiler, an unsupported machine, a compiler
    error); the message says what to install or fix."""


def flags(machine: str | None = None) -> tuple[str, ...]:
    machine = machine or platform.machine()
    return CFLAGS + (X86_64_CFLAGS if machine == "x86_64" else ())


def recipe_hash(machine: str | None = None) -> str:
    """sha256 (hex) of the source, the flags and the target machine."""
    machine = machine or platform.machine()
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    h.update("\0".join(flags(machine)).encode())
    h.update(machine.encode())
    return h.hexdigest()


def is_current(dest: Path) -> bool:
    """True when ``dest`` holds the build of today's recipe."""
    stamp = dest.with_name(dest.name + ".recipe")
    try:
        return dest.is_file() and stamp.read_text().strip() == recipe_hash()
    except OSError:
        return False


def build(dest: Path, cc: str | None = None) -> bool:
    """Make ``dest`` the pause binary of today's recipe; True when it was compiled, False
    when the cached one was current. ``cc``: the compiler (default: $CC, else ``cc``).
    Raises BuildError."""
    machine = platform.machine()
    if machine not in MACHINES:
        raise BuildError(f"the pause binary has system call code for {', '.join(MACHINES)} only, not {machine}")
    if is_current(dest):
        return False
    compiler = cc or os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise BuildError(f"no C compiler {compiler!r} to build the pause binary: install gcc "
                         "(and linux-libc-dev for the kernel headers), or set CC")
    recipe = recipe_hash(machine)
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
    os.close(fd)
    try:
        try:
            done = subprocess.run([compiler, *flags(machine), str(SOURCE), "-o", tmp], capture_output=True,
                                  text=True, timeout=BUILD_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(f"building the pause binary with {compiler}: {exc}") from None
        if done.returncode != 0:
            raise BuildError(f"building the pause binary with {compiler} failed:\n{done.stderr.strip()}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    stamp = dest.with_name(dest.name + ".recipe")
    stamp_tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    stamp_tmp.write_text(recipe + "\n")
    os.replace(stamp_tmp, stamp)
    return True
