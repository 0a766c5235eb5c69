"""The cgroupfs driver on a real cgroup v2 hierarchy, every controller a pod is limited by.

The development VM is cgroup v1, where the v2 driver's limits are only checked against a fake
tree (tests/unit/cgroups); here the kernel enforces them. Each test creates a container
cgroup under a unique top-level cgroup (fixture ``top``, removed afterwards with every process
in it), starts processes in it as the pod shim does (join between fork and exec), and checks
the interface files and what the kernel did: throttled CPU, an OOM kill and its counters,
swapped memory, refused forks, throttled reads, a SIGBUS at the hugetlb limit, a pinned CPU,
a device refused by the eBPF program. Numbers are lower bounds only (emulation is slow).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.cgroups.convert import shares_to_weight
from runtime.cgroups.driver import CgroupDriver
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.parse import flat_keyed
from runtime.hostinfo import CgroupMode
from runtime.model.resources import HugepageLimit, Resources
from runtime.security.devices import apply_device_rules, device_rules
from tests.root.cgroups.conftest import Children, children, driver, host, top  # noqa: F401 - fixtures
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

MiB = 1 << 20
CID = "c" * 64
CGROUP = Path("/sys/fs/cgroup")
BUSY = ["/bin/sh", "-c", "while :; do :; done"]


def hog(mib: int, then_sleep: int = 60) -> list[str]:
    """Touch every page of ``mib`` MiB (memset by bytearray), then sleep."""
    code = f"import time; b = [bytearray(1 << 20) for _ in range({mib})]; time.sleep({then_sleep})"
    return [sys.executable, "-c", code]


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def files(path: str) -> Path:
    return CGROUP / path.lstrip("/")


def read(path: str, name: str) -> str:
    return (files(path) / name).read_text().strip()


def events(path: str, name: str) -> dict[str, int]:
    return flat_keyed(read(path, name))


def test_the_node_has_cgroup_v2_with_every_controller(host: CgroupHost) -> None:  # noqa: F811
    """What the other tests rely on; a node missing one of these is misconfigured, not skipped."""
    assert host.mode is CgroupMode.V2
    assert host.controllers >= {"cpu", "cpuset", "io", "memory", "pids", "hugetlb"}, host.controllers
    assert host.swap_accounting and host.psi and host.oom_kill_counter
    assert "2MB" in host.hugepage_sizes
    assert not Path("/sys/fs/cgroup/unified").exists()  # not hybrid
    assert Path("/proc/self/cgroup").read_text().startswith("0::")


def test_cpu_weight_max_throttling_and_update(driver: CgroupDriver, top: str,  # noqa: F811
                                              children: Children) -> None:  # noqa: F811
    ctr = f"{top}/pod/{CID}"
    driver.create(ctr, Resources(cpu_shares=512, cpu_quota=10_000, cpu_period=100_000))
    assert read(ctr, "cpu.weight") == str(shares_to_weight(512)) == "20"
    assert read(ctr, "cpu.max") == "10000 100000"
    assert "cpu" in read(f"{top}/pod", "cgroup.subtree_control").split()
    children.start(driver, ctr, BUSY)
    # 10% of one CPU: the loop is throttled in (nearly) every period it runs. The kernel counts
    # a throttle when it happens but adds its time (throttled_usec) only at the unthrottle, so
    # wait for both (under emulation a read can fall between them: seen nr_throttled=3, 0 us).
    assert wait_until(lambda: events(ctr, "cpu.stat").get("nr_throttled", 0) >= 3
                      and events(ctr, "cpu.stat").get("throttled_usec", 0) > 0)
    s = driver.stats(ctr)
    assert s.cpu is not None and s.cpu.nr_throttled and s.cpu.throttled_ns and s.cpu.usage_ns > 0
    assert s.cpu.psi is not None  # cpu.pressure of the cgroup
    # UpdateContainerResources: quota lifted, weight changed, on the live cgroup.
    driver.update(ctr, Resources(cpu_shares=1024, cpu_period=100_000, cpu_quota=0))
    assert read(ctr, "cpu.max") == "max 100000"
    assert read(ctr, "cpu.weight") == str(shares_to_weight(1024))


def test_memory_limit_oom_kill_and_its_counters(driver: CgroupDriver, top: str,  # noqa: F811
                                                children: Children) -> None:  # noqa: F811
    ctr = f"{top}/{CID}"
    # CRI's memory_swap_limit is memory + swap: 48 MiB in all -> memory.swap.max = 16 MiB.
    driver.create(ctr, Resources(memory_limit_in_bytes=32 * MiB, memory_swap_limit_in_bytes=48 * MiB))
    assert read(ctr, "memory.max") == str(32 * MiB)
    assert read(ctr, "memory.swap.max") == str(16 * MiB)
    assert events(ctr, "memory.events")["oom_kill"] == 0
    proc = children.start(driver, ctr, hog(256))
    assert proc.wait(timeout=120) == -signal.SIGKILL
    ev = events(ctr, "memory.events")
    assert ev["oom_kill"] >= 1 and ev["oom"] >= 1 and ev["max"] >= 1, ev
    assert driver.oom_kill_count(ctr) == ev["oom_kill"]
    s = driver.stats(ctr)
    assert s.oom is not None and s.oom.oom_kill == ev["oom_kill"]
    assert s.memory is not None and s.memory.failcnt == ev["max"] and s.memory.limit_bytes == 32 * MiB
    assert s.memory.psi is not None
    # UpdateContainerResources raises the limit on the live cgroup.
    driver.update(ctr, Resources(memory_limit_in_bytes=64 * MiB, memory_swap_limit_in_bytes=64 * MiB))
    assert read(ctr, "memory.max") == str(64 * MiB)
    assert read(ctr, "memory.swap.max") == "0"


@contextlib.contextmanager
def swap_file(size_mib: int) -> Iterator[Path]:
    """A swap file on the root file system, switched on for the block; off and removed after."""
    path = Path("/var/tmp") / unique("swap-")
    try:
        with path.open("wb") as f:  # written out: swapon refuses files with holes
            for _ in range(size_mib):
                f.write(b"\0" * MiB)
        path.chmod(0o600)
        subprocess.run(["mkswap", str(path)], check=True, capture_output=True, timeout=120)
        subprocess.run(["swapon", str(path)], check=True, capture_output=True, timeout=120)
        yield path
    finally:
        subprocess.run(["swapoff", str(path)], capture_output=True, timeout=300)
        path.unlink(missing_ok=True)


def test_memory_over_the_limit_goes_to_swap_up_to_swap_max(driver: CgroupDriver, top: str,  # noqa: F811
                                                           children: Children) -> None:  # noqa: F811
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(memory_limit_in_bytes=24 * MiB, memory_swap_limit_in_bytes=96 * MiB))
    with swap_file(128):
        proc = children.start(driver, ctr, hog(48, then_sleep=300))
        # 48 MiB touched under a 24 MiB limit: the rest is in swap, and the process lives.
        assert wait_until(lambda: int(read(ctr, "memory.swap.current")) >= 16 * MiB, timeout=180)
        assert proc.poll() is None
        assert int(read(ctr, "memory.current")) <= 24 * MiB
        s = driver.stats(ctr)
        assert s.memory is not None and s.memory.swap_usage_bytes and s.memory.swap_usage_bytes >= 16 * MiB
        assert s.memory.swap_limit_bytes == 72 * MiB
        assert events(ctr, "memory.events")["oom_kill"] == 0
        driver.kill_all(ctr)
        assert proc.wait(timeout=60) == -signal.SIGKILL


def test_pids_max_refuses_forks(driver: CgroupDriver, top: str, children: Children) -> None:  # noqa: F811
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(unified={"pids.max": "4"}))
    assert read(ctr, "pids.max") == "4"
    children.start(driver, ctr, ["/bin/sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 120 & done; wait"])
    assert wait_until(lambda: events(ctr, "pids.events").get("max", 0) >= 1)
    assert len(driver.pids(ctr)) <= 4
    s = driver.stats(ctr)
    assert s.pids is not None and s.pids.limit == 4 and s.pids.current <= 4


def root_disk() -> tuple[int, int]:
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def test_io_weight_and_a_read_limit(driver: CgroupDriver, top: str, children: Children) -> None:  # noqa: F811
    major, minor = root_disk()
    device = Path(f"/dev/block/{major}:{minor}")
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(unified={"io.weight": "default 200", "io.max": f"{major}:{minor} rbps={MiB}"}))
    assert read(ctr, "io.weight") == "default 200"
    assert read(ctr, "io.max") == f"{major}:{minor} rbps={MiB} wbps=max riops=max wiops=max"
    # 3 MiB read past the page cache at 1 MiB/s takes at least 2 s (a lower bound only).
    started = time.monotonic()
    proc = children.start(driver, ctr, ["dd", f"if={device}", "of=/dev/null", "bs=64k", "count=48", "iflag=direct"])
    assert proc.wait(timeout=120) == 0
    assert time.monotonic() - started >= 2.0
    stat = {line.split()[0]: dict(kv.split("=", 1) for kv in line.split()[1:])
            for line in read(ctr, "io.stat").splitlines()}
    assert int(stat[f"{major}:{minor}"]["rbytes"]) >= 3 * MiB, stat
    s = driver.stats(ctr)
    assert s.io is not None and s.io.psi is not None
    assert any((d.major, d.minor) == (major, minor) and d.read_bytes >= 3 * MiB for d in s.io.devices)


HUGE_TOUCH = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
size = 2 << 20
# PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB|MAP_NORESERVE
addr = libc.mmap(None, 2 * size, 3, 0x02 | 0x20 | 0x40000 | 0x4000, -1, 0)
if addr in (None, ctypes.c_void_p(-1).value):
    sys.exit(f"mmap: errno {ctypes.get_errno()}")
for i in range(2):
    ctypes.memset(addr + i * size, 1, 1)
    print(f"page {i}", flush=True)
"""


def test_hugetlb_limit_sigbus_and_events(driver: CgroupDriver, top: str,  # noqa: F811
                                         children: Children) -> None:  # noqa: F811
    free = int(Path("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages").read_text())
    assert free >= 2, "the node VM reserves huge pages on its command line (hugepages=16)"
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(hugepage_limits=(HugepageLimit("2MB", 2 * MiB),)))
    assert read(ctr, "hugetlb.2MB.max") == str(2 * MiB)
    # One huge page is allowed; faulting the second one exceeds the limit: SIGBUS.
    proc = subprocess.Popen([sys.executable, "-c", HUGE_TOUCH], stdout=subprocess.PIPE, text=True,
                            preexec_fn=_joiner(driver, ctr))  # noqa: PLW1509 - single-threaded pytest
    children.procs.append(proc)  # type: ignore[arg-type]
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, out)
    assert out.splitlines() == ["page 0"]
    assert events(ctr, "hugetlb.2MB.events")["max"] >= 1


def _joiner(driver: CgroupDriver, path: str) -> Callable[[], None]:  # noqa: F811
    from runtime.cgroups.join import join_cgroup, procs_files_bytes

    procs = procs_files_bytes(driver.procs_files(path))
    return lambda: join_cgroup(procs)


def test_cpuset_pins_processes(driver: CgroupDriver, top: str, children: Children) -> None:  # noqa: F811
    last = os.cpu_count() or 1
    cpu = str(last - 1)
    ctr = f"{top}/{CID}"
    driver.create(ctr, Resources(cpuset_cpus=cpu, cpuset_mems="0"))
    assert read(ctr, "cpuset.cpus") == cpu and read(ctr, "cpuset.cpus.effective") == cpu
    assert read(ctr, "cpuset.mems") == "0"
    proc = children.start(driver, ctr, ["/bin/sleep", "60"])
    status = Path(f"/proc/{proc.pid}/status")
    assert wait_until(lambda: f"Cpus_allowed_list:\t{cpu}\n" in status.read_text())


DEVICE_PROBE = "echo x > /dev/null && echo null=ok; head -c 512 {disk} > /dev/null 2>&1; echo disk=$?"


def test_devices_are_filtered_by_ebpf_on_the_real_hierarchy(host: CgroupHost, driver: CgroupDriver,  # noqa: F811
                                                           top: str, children: Children) -> None:  # noqa: F811
    major, minor = root_disk()
    probe = DEVICE_PROBE.format(disk=f"/dev/block/{major}:{minor}")
    ctr, other = f"{top}/pod/{CID}", f"{top}/pod/other"
    driver.create(ctr)
    driver.create(other)
    assert apply_device_rules(host, ctr, device_rules((), privileged=False)) == "bpf"
    confined = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, text=True, timeout=60,
                              preexec_fn=_joiner(driver, ctr))
    assert confined.stdout.split() == ["null=ok", "disk=1"], confined
    # The pod cgroup above has no program: the same commands there may open the disk.
    free = subprocess.run(["/bin/sh", "-c", probe], capture_output=True, text=True, timeout=60,
                          preexec_fn=_joiner(driver, other))
    assert free.stdout.split() == ["null=ok", "disk=0"], free
