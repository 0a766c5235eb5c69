"""cgroup v2 device control with our eBPF program, on a private cgroup2 mount (this host's
controllers are on v1, but BPF device programs work on any cgroup2 directory)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.cgroups.host import CgroupHost
from runtime.hostinfo import CgroupMode
from runtime.linux import bpf, libc
from runtime.model.container import Device
from runtime.security.devices import apply_device_rules, device_rules, resolve_devices
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.timeout(30)]


@pytest.fixture
def cgroup2() -> Iterator[Path]:
    mount = Path(tempfile.mkdtemp(prefix="cg2t", dir="/tmp"))
    libc.mount("none", str(mount), "cgroup2", 0, None)
    try:
        yield mount
    finally:
        for child in mount.iterdir():
            if child.is_dir():
                with contextlib.suppress(OSError):
                    child.rmdir()
        libc.umount2(str(mount), libc.MNT_DETACH)
        mount.rmdir()


SCRIPT = """
read go
mknod /tmp/{tag}-blk b 7 {other} && echo made
dd if=/tmp/{tag}-blk of=/dev/null count=1 2>/dev/null; echo other=$?
rm -f /tmp/{tag}-blk
echo hi > /dev/null; echo null=$?
dd if={loop} of=/dev/null count=1 2>/dev/null; echo loopread=$?
(: > {loop}) 2>/dev/null; echo loopwrite=$?
"""


def run_in(cgroup: Path | None, script: str) -> str:
    proc = subprocess.Popen(["/bin/busybox", "sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(proc.pid))
        out, _ = proc.communicate("go\n", timeout=20)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bpf_device_filter(cgroup2: Path) -> None:
    loops = [i for i in range(8) if os.path.exists(f"/dev/loop{i}")]
    if len(loops) < 2:
        pytest.skip("needs two loop devices")
    loop = f"/dev/loop{loops[0]}"
    name = unique("dev")
    cg = cgroup2 / name
    cg.mkdir()
    host = CgroupHost(mode=CgroupMode.V2, root=cgroup2, controllers=frozenset())
    _, extra = resolve_devices((Device("/dev/x", loop, "r"),))
    assert apply_device_rules(host, f"/{name}", device_rules(extra, privileged=False)) == "bpf"
    assert bpf.attached_device_programs(str(cg)) == 1
    tag = unique("m")
    script = SCRIPT.format(tag=tag, loop=loop, other=loops[1])
    confined = run_in(cg, script)
    assert "made" in confined and "other=1" in confined and "null=0" in confined, confined
    assert "loopread=0" in confined and "loopwrite=1" in confined, confined
    free = run_in(None, script)  # the same commands outside the cgroup
    assert "other=0" in free and "loopwrite=0" in free, free
    # Privileged (allow all) attaches nothing.
    other = cgroup2 / unique("dev")
    other.mkdir()
    assert apply_device_rules(host, "/" + other.name, device_rules((), privileged=True)) == "none"
    assert bpf.attached_device_programs(str(other)) == 0
