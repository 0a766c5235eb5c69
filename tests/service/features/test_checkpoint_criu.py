"""A real checkpoint with a criu that works on this kernel (``criu check`` passes).

A container counts in a shell variable (writing it to its log and to /count every 0.2 s);
CheckpointContainer dumps it, left running, into the archive; the archive holds what
checkpointctl and CRI-O expect, and criu's images restore by hand (criu restore outside the
runtime, into a root made from the image and rootfs-diff.tar) into a process that goes on
counting from where the dump was taken, not from 0.

The criu is the node's when ``criu check`` passes, else ``.cache/criu/criu`` (a CRIU >= 4.1
built for a kernel Debian 12's 3.17 does not support); with neither the module skips with the
allow-listed reason. (Before: CheckpointContainer answered UNIMPLEMENTED.)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.checkpoint.pod import freezer_dir
from tests.support.daemon import DaemonProcess
from tests.support.netns import REPO
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    log_lines,
    netns_path,
    pod_config,
    pull,
    remove_pod,
    run_pod,
    start,
    status,
    wait_state,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(240)]

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /count; echo $i; sleep 0.2; done"
#: criu binaries to try, in order: the node's, then one built into the test cache.
CANDIDATES = ("criu", str(REPO / ".cache" / "criu" / "criu"))


def _working_criu() -> str:
    for c in CANDIDATES:
        path = shutil.which(c)
        if path and subprocess.run([path, "check"], capture_output=True, timeout=60).returncode == 0:
            return path
    return ""


@pytest.fixture(scope="module")
def criu() -> str:
    path = _working_criu()
    if not path:
        pytest.skip("no criu passes `criu check` on this host")
    return path


@pytest.fixture(scope="module")
def daemon_config(criu: str) -> str:
    return f'[checkpoint]\ncriu_path = "{criu}"\n'


def _count(d: DaemonProcess, cid: str) -> int:
    r = exec_sync(d, cid, ["cat", "/count"])
    return int(r.stdout.decode().strip() or 0)


def _frozen(cgroup: str) -> bool:
    events = Path(cgroup, "cgroup.events")
    if events.exists():
        return "frozen 1" in events.read_text().splitlines()
    return Path(cgroup, "freezer.state").read_text().strip() != "THAWED"


def _wait_count(d: DaemonProcess, cid: str, at_least: int, timeout: float, what: str = "the counter") -> None:
    """Until the container's count reaches ``at_least``; fails naming where it is stuck."""
    deadline = time.monotonic() + timeout
    while (now := _count(d, cid)) < at_least:
        assert time.monotonic() < deadline, f"{what} is stuck at {now} (waiting for {at_least})"
        time.sleep(0.2)


def test_checkpoint_archive_of_a_counting_container(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("counter", busybox, ["sh", "-c", COUNTER]))
    start(d, cid)
    _wait_count(d, cid, 5, 30)
    pid = int(json.loads(d.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info["info"])["pid"])
    freezer = freezer_dir(pid)
    seen: set[bool] = set()
    stop = threading.Event()

    def watch() -> None:  # the container is frozen while criu dumps it and its upper dir is tarred
        while not stop.is_set():
            seen.add(_frozen(freezer))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    target = tmp_path / "checkpoint.tar"
    try:
        d.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid, location=str(target)),
                                      timeout=120)
    finally:
        stop.set()
        watcher.join(5)
    assert True in seen, "the container was never frozen during its checkpoint"
    assert not _frozen(freezer), "the container is left frozen"
    at_dump = _count(d, cid)
    with tarfile.open(target) as tar:
        names = set(tar.getnames())
        config = json.load(tar.extractfile("config.dump"))  # type: ignore[arg-type]
        spec = json.load(tar.extractfile("spec.dump"))  # type: ignore[arg-type]
        tar.extractall(tmp_path / "x", filter="fully_trusted")
    assert {"config.dump", "spec.dump", "network.status", "rootfs-diff.tar", "deleted.files",
            "checkpoint/inventory.img", "checkpoint/pstree.img"} <= names
    assert config["id"] == cid and config["name"] == "counter"
    assert spec["annotations"]["io.kubernetes.pod.name"] == cfg.metadata.name
    with tarfile.open(tmp_path / "x" / "rootfs-diff.tar") as diff:
        assert "count" in diff.getnames()
    # left running, still counting
    time.sleep(0.6)
    assert _count(d, cid) > at_dump


def _lowerdirs(pid: int) -> list[str]:
    """The image layers under the container's root, from its root mount's overlay options."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/" and " - overlay " in line:
            opts = dict(o.split("=", 1) for o in line.split(" - ")[1].split()[2].split(",") if "=" in o)
            return opts["lowerdir"].split(":")
    raise AssertionError("the container's root is not an overlay")


def _restore_by_hand(criu: str, images: Path, root_parts: tuple[list[str], Path], externals: dict[str, object],
                     netns: str, kinds: dict[str, str], work: Path, stdout_w: int) -> int:
    """criu restore of the archive's images outside the runtime: an overlay of the image's
    layers and the extracted rootfs-diff.tar as its root (in a private mount namespace of the
    criu process), the pod's network namespace and a pipe of ours as its stdout/stderr.
    Returns the restored tree's root pid (detached)."""
    lowers, upper = root_parts
    root, ovl_work = work / "root", work / "ovl-work"
    root.mkdir()
    ovl_work.mkdir()
    argv = [criu, "restore", "--images-dir", str(images), "--work-dir", str(work), "--root", str(root),
            "--restore-detached", "--pidfile", str(work / "pid"), "-v4", "--log-file", "restore.log",
            "--manage-cgroups=ignore", "--tcp-established", "--file-locks"]
    keep: list[int] = []
    for key in externals["mounts"]:  # type: ignore[attr-defined]
        if kinds[key] == "dir":
            src = work / f"mnt{len(keep)}"
            src.mkdir()
        elif kinds[key] == "dev":
            src = Path("/dev/null")
        else:
            src = work / f"mnt{len(keep)}"
            src.write_text("")
        keep.append(-1)
        argv += ["--external", f"mnt[{key}]:{src}"]
    devnull = os.open("/dev/null", os.O_RDWR)
    net = os.open(netns, os.O_RDONLY)
    keep += [devnull, net]
    for key in externals["files"]:  # type: ignore[attr-defined]
        argv += ["--inherit-fd", f"fd[{devnull}]:{key}"]
    if externals["net"]:
        argv += ["--inherit-fd", f"fd[{net}]:{externals['net']}"]
    for target in dict.fromkeys(externals["descriptors"][1:]):  # type: ignore[index]
        if str(target).startswith("pipe:"):
            # one fd per key: criu moves each inherited fd into its store and closes it
            fd = os.dup(stdout_w)
            keep.append(fd)
            argv += ["--inherit-fd", f"fd[{fd}]:{target}"]
    fds = [fd for fd in keep if fd >= 0]
    # the root: mounted here, detached again as soon as criu has made the restored tree's own
    # mount namespace (which keeps its copy)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={ovl_work}", str(root)],
                   check=True, timeout=30)
    try:
        res = subprocess.run(argv, pass_fds=fds, capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True, timeout=30)
        for fd in fds:
            if fd != stdout_w:
                os.close(fd)
    log = (work / "restore.log").read_text() if (work / "restore.log").exists() else ""
    errs = "\n".join(ln for ln in log.splitlines() if "Error" in ln)
    assert res.returncode == 0, f"criu restore failed: {argv}\n{res.stderr}\n{errs}"
    return int((work / "pid").read_text())


def test_checkpoint_restores_by_hand_and_goes_on_counting(d: DaemonProcess, busybox: str, criu: str,
                                                          tmp_path: Path) -> None:
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("counter", busybox, ["sh", "-c", COUNTER]))
    start(d, cid)
    _wait_count(d, cid, 10, 30)
    pid = int(json.loads(d.runtime.ContainerStatus(
        pb.ContainerStatusRequest(container_id=cid, verbose=True), timeout=10).info["info"])["pid"])
    lowers = _lowerdirs(pid)
    kinds = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        mp = line.split()[4]
        st = os.stat(f"/proc/{pid}/root{mp}")
        kinds[mp] = "dir" if os.path.isdir(f"/proc/{pid}/root{mp}") else "dev" if st.st_rdev else "file"
    target = tmp_path / "checkpoint.tar"
    d.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid, location=str(target)),
                                  timeout=120)
    # the original stops for good: the restored copy is the only one counting
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    x = tmp_path / "x"
    with tarfile.open(target) as tar:
        tar.extractall(x, filter="fully_trusted")
    own = json.loads((x / "cri-shim.json").read_text())
    upper = tmp_path / "upper"
    upper.mkdir()
    with tarfile.open(x / "rootfs-diff.tar") as diff:
        diff.extractall(upper, filter="fully_trusted")
    at_dump = int((upper / "count").read_text())
    assert at_dump >= 10
    work = tmp_path / "work"
    work.mkdir()
    r, w = os.pipe()
    restored = 0
    try:
        restored = _restore_by_hand(criu, x / "checkpoint", (lowers, upper), own["externals"],
                                    netns_path(d, pod), kinds, work, w)
        os.close(w)
        w = -1
        os.set_blocking(r, False)
        seen: list[int] = []
        deadline = time.monotonic() + 30
        while len(seen) < 5 and time.monotonic() < deadline:
            try:
                chunk = os.read(r, 4096)
            except BlockingIOError:
                time.sleep(0.1)
                continue
            seen += [int(n) for n in chunk.decode().split()]
        # the restored shell goes on from its count in memory: never back to 1
        assert len(seen) >= 5, f"the restored process printed {seen}"
        assert seen[0] > at_dump - 3 and seen == list(range(seen[0], seen[0] + len(seen))), seen
        assert int((upper / "count").read_text()) > at_dump
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
        if restored:
            with contextlib.suppress(ProcessLookupError):
                os.kill(restored, signal.SIGKILL)


def test_restore_into_a_new_pod_goes_on_counting(d: DaemonProcess, busybox: str, criu: str, tmp_path: Path) -> None:
    """kubelet's and crictl's restore: CreateContainer whose image is the archive's path, in a
    new pod, then StartContainer: the restored shell is a process of the new pod's shim, in
    its network namespace, its output in the new container's CRI log, and it counts on from
    the count it had in memory at the dump."""
    pull(d, busybox)
    logs = tmp_path / "logs"
    logs.mkdir()
    cfg = pod_config(log_directory=str(logs / "a"))
    pod = run_pod(d, cfg)
    cid = create_container(d, pod, cfg, container_config("counter", busybox, ["sh", "-c", COUNTER]))
    start(d, cid)
    _wait_count(d, cid, 10, 60)
    target = tmp_path / "checkpoint.tar"
    t0 = time.monotonic()
    d.runtime.CheckpointContainer(pb.CheckpointContainerRequest(container_id=cid, location=str(target)),
                                  timeout=120)
    checkpointed = time.monotonic() - t0
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    with tarfile.open(target) as tar:
        f = tar.extractfile("rootfs-diff.tar")
        assert f is not None
        with tarfile.open(fileobj=f) as diff:
            g = diff.extractfile("count")
            assert g is not None
            at_dump = int(g.read())
    remove_pod(d, pod)  # the old pod is gone: the restore owes it nothing

    cfg2 = pod_config(log_directory=str(logs / "b"))
    pod2 = run_pod(d, cfg2)
    t0 = time.monotonic()
    restored = create_container(d, pod2, cfg2, container_config("counter", str(target), log_path="counter.log"),
                                timeout=120)
    created = time.monotonic() - t0
    assert status(d, restored).state == pb.CONTAINER_CREATED
    t0 = time.monotonic()
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=restored), timeout=150)
    started = time.monotonic() - t0
    version = subprocess.run([criu, "--version"], capture_output=True, text=True, timeout=30).stdout.split()
    print(f"criu {criu} {' '.join(version[:2])}: checkpoint {checkpointed:.2f}s, create from archive "
          f"{created:.2f}s, start (criu restore) {started:.2f}s")
    st = status(d, restored, verbose=True)
    assert st.state == pb.CONTAINER_RUNNING, st
    info = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=restored, verbose=True),
                                                timeout=10).info["info"])
    pid = int(info["pid"])
    # in the new pod's network namespace, and a child of its shim
    assert os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(netns_path(d, pod2)).st_ino
    # the count goes on from memory: never back to 1, past the dumped value
    _wait_count(d, restored, at_dump + 5, 60, "the restored counter")
    log = logs / "b" / "counter.log"
    seen = [int(text) for stream, _tag, text in log_lines(str(log)) if stream == "stdout" and text.isdigit()]
    assert seen and seen[0] > at_dump - 5 and seen == list(range(seen[0], seen[0] + len(seen))), seen[:20]
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=restored, timeout=0), timeout=30)
    st = wait_state(d, restored, pb.CONTAINER_EXITED, timeout=30)
    assert st.exit_code == 137
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=restored), timeout=30)

    # images criu refuses: StartContainer says why (criu's log), the container is exited
    # with StartError, and nothing of the attempt is left (no process, no mount)
    broken = _damaged_copy(target, tmp_path / "damaged.tar")
    bad = create_container(d, pod2, cfg2, container_config("damaged", str(broken)), timeout=120)
    with pytest.raises(grpc.RpcError) as err:
        d.runtime.StartContainer(pb.StartContainerRequest(container_id=bad), timeout=150)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION, err.value.details()
    assert "criu restore failed" in (err.value.details() or ""), err.value.details()
    st = status(d, bad)
    assert st.state == pb.CONTAINER_EXITED and st.reason == "StartError", st
    assert bad not in Path("/proc/self/mountinfo").read_text()
    assert not [p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).startswith(f"{criu} restore")]
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=bad), timeout=30)
    remove_pod(d, pod2)


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _damaged_copy(archive: Path, copy: Path) -> Path:
    """The archive with criu's process tree image replaced by garbage."""
    with tarfile.open(archive) as src, tarfile.open(copy, "w") as dst:
        for m in src:
            data = src.extractfile(m) if m.isreg() else None
            if m.name == "checkpoint/pstree.img":
                m.size = 64
                data = io.BytesIO(b"\xff" * 64)  # type: ignore[assignment]
            dst.addfile(m, data)
    return copy


def test_pod_checkpoint_and_restore(d: DaemonProcess, busybox: str, tmp_path: Path) -> None:
    """CheckpointPod: two counting containers in one freezer cut, both running on after;
    RestorePod: a new pod with both created from the checkpoint, counting on once started."""
    pull(d, busybox)
    cfg = pod_config()
    pod = run_pod(d, cfg)
    names = ("one", "two")
    cids = [create_container(d, pod, cfg, container_config(n, busybox, ["sh", "-c", COUNTER])) for n in names]
    for cid in cids:
        start(d, cid)
    deadline = time.monotonic() + 60
    while min(_count(d, cid) for cid in cids) < 5:
        assert time.monotonic() < deadline, "the counters do not count"
        time.sleep(0.2)
    out = tmp_path / "pod-checkpoint"
    out.mkdir()
    d.runtime.CheckpointPod(pb.CheckpointPodRequest(pod_sandbox_id=pod, output_path=str(out), container_ids=cids),
                            timeout=180)
    assert sorted(os.listdir(out / "containers")) == ["one.tar", "two.tar"]
    assert json.loads((out / "pod.json").read_text())["containers"][0]["name"] == "one"
    dumped = [_count(d, cid) for cid in cids]
    time.sleep(0.6)
    assert all(_count(d, cid) > n for cid, n in zip(cids, dumped, strict=True)), "a container stayed frozen"
    for cid in cids:
        d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    remove_pod(d, pod)

    cfg2 = pod_config()
    resp = d.runtime.RestorePod(pb.RestorePodRequest(
        checkpoint_path=str(out), config=cfg2,
        container_configs=[container_config(n, busybox, ["sh", "-c", COUNTER]) for n in names]), timeout=180)
    restored = {r.name: r.container_id for r in resp.restored_containers}
    assert set(restored) == set(names) and resp.pod_sandbox_id
    for cid in restored.values():
        assert status(d, cid).state == pb.CONTAINER_CREATED
        d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=150)
    for name, n in zip(names, dumped, strict=True):
        _wait_count(d, restored[name], n + 3, 60, f"restored {name}")
    remove_pod(d, resp.pod_sandbox_id)
