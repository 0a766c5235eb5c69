"""RemoveContainer answers once the container's record is durably gone (the pod shim forgets
its process and its cgroup goes meanwhile); its state directory and its snapshot's upper and
work directories are deleted after that, in the background (runtime.container.reaper). What
that must never cost: a daemon killed right after the answer, or between the commit and the
shim's delete, leaves nothing once it has started again, a daemon stopped with SIGTERM has
finished the deletions, and the container's name can be taken again at once, on fresh
directories.

Each container here fills its upper directory with many files, so that their deletion takes
a while and the kill or the stop lands while it runs (a quick one leaves nothing to test,
never a false failure)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.container.reaper import REAP_CONCURRENCY
from runtime.shim.manager import ShimManager
from tests.service.lifecycle.conftest import Images
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.pods import (
    container_config,
    create_container,
    exec_sync,
    pod_config,
    pull,
    remove_pod,
    run_pod,
    start,
    wait_state,
)

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.peers, pytest.mark.timeout(180)]

#: files each container leaves in its upper directory
FILES = 20000


def new_pod(d: DaemonProcess, tmp_path: Path) -> tuple[str, pb.PodSandboxConfig]:
    cfg = pod_config(log_directory=str(tmp_path / "logs" / unique("p")))
    return run_pod(d, cfg), cfg


def filled(d: DaemonProcess, images: Images, pod: str, cfg: pb.PodSandboxConfig, name: str) -> tuple[str, list[Path]]:
    """An exited container that wrote FILES files into its rootfs; its id and its
    directories (state directory, snapshot directory)."""
    pull(d, images.busybox)
    snapshots = d.root / "images" / "containers"
    before = set(os.listdir(snapshots)) if snapshots.is_dir() else set()
    cid = create_container(d, pod, cfg, container_config(
        name, images.busybox, ["sh", "-c", f"mkdir /junk && cd /junk && seq 1 {FILES} | xargs touch"]))
    start(d, cid)
    assert wait_state(d, cid, pb.CONTAINER_EXITED, timeout=120).exit_code == 0
    (snapshot,) = set(os.listdir(snapshots)) - before
    assert sum(1 for _ in os.scandir(snapshots / snapshot / "fs" / "junk")) == FILES
    return cid, [d.state / "containers" / cid, snapshots / snapshot]


def listed(d: DaemonProcess) -> list[str]:
    return [c.id for c in d.runtime.ListContainers(pb.ListContainersRequest(), timeout=10).containers]


def test_a_kill9_right_after_the_answer_leaves_nothing_after_the_restart(
    d: DaemonProcess, images: Images, tmp_path: Path
) -> None:
    pod, cfg = new_pod(d, tmp_path)
    cid, dirs = filled(d, images, pod, cfg, "filled")
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    d.kill9()
    d.start()  # ready once recovery has run
    assert d.still_there(*dirs, settle=0) == [], "recovery removed what the removal had left"
    assert cid not in listed(d)
    remove_pod(d, pod)


def test_sigterm_finishes_the_pending_removals_first(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    """More removals than the reaper runs at once: some still wait for their turn when the
    signal comes."""
    pod, cfg = new_pod(d, tmp_path)
    made = [filled(d, images, pod, cfg, f"filled-{i}") for i in range(REAP_CONCURRENCY + 1)]
    for cid, _ in made:
        d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    assert d.stop() == 0
    left = d.still_there(*(p for _, dirs in made for p in dirs), settle=0)  # looked at while no daemon runs
    d.start()
    assert left == [], "the stopped daemon had not finished removing the containers"
    remove_pod(d, pod)


def test_a_name_taken_again_at_once_gets_fresh_directories(d: DaemonProcess, images: Images, tmp_path: Path) -> None:
    pod, cfg = new_pod(d, tmp_path)
    cid, dirs = filled(d, images, pod, cfg, "app")
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    again = create_container(d, pod, cfg, container_config("app", images.busybox, ["sleep", "300"]))
    start(d, again)
    assert again != cid and listed(d) == [again]
    assert exec_sync(d, again, ["sh", "-c", "test ! -e /junk && touch /mine && echo ok"]).stdout == b"ok\n"
    state = d.state / "containers" / again
    assert state not in dirs and state.is_dir()
    assert not d.still_there(*dirs)
    assert exec_sync(d, again, ["cat", "/mine"]).exit_code == 0, "its rootfs is whole after the old one's removal"
    remove_pod(d, pod)


def shim_processes(d: DaemonProcess, pod: str) -> list[str]:
    """The container ids the pod's shim holds a process entry for (asked over its socket)."""
    client = ShimManager(d.state).client(pod)
    return [p.container_id for p in asyncio.run(client.processes(rpc_timeout=10))]


def test_a_shim_entry_without_a_record_is_forgotten_at_the_start(
    d: DaemonProcess, images: Images, tmp_path: Path
) -> None:
    """What a kill -9 after RemoveContainer's commit and before the shim's delete leaves
    (they run together): the record and the snapshot's row gone, the shim's entry not."""
    pull(d, images.busybox)
    pod, cfg = new_pod(d, tmp_path)
    gone = create_container(d, pod, cfg, container_config("gone", images.busybox, ["true"]))
    start(d, gone)
    wait_state(d, gone, pb.CONTAINER_EXITED)
    kept = create_container(d, pod, cfg, container_config("kept", images.busybox, ["sleep", "300"]))
    start(d, kept)
    assert {gone, kept} <= set(shim_processes(d, pod))
    d.kill9()
    with sqlite3.connect(d.root / "meta.db") as db:
        db.execute("DELETE FROM containers WHERE id=?", (gone,))
        db.execute("DELETE FROM container_snapshots WHERE key=?", (gone,))
    d.start()
    held = shim_processes(d, pod)
    assert gone not in held and kept in held
    assert exec_sync(d, kept, ["echo", "alive"]).stdout == b"alive\n"
    assert d.still_there(d.state / "containers" / gone, settle=0) == []
    remove_pod(d, pod)
