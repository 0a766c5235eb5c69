"""Pod checkpoints (CRI CheckpointPod, RestorePod): the directory layout, and the freezer cut.

A pod checkpoint is a directory the caller owns (cri-api: its layout is the runtime's):

    pod.json               {"version": 1, "pod": <the sandbox's name and namespace>,
                            "containers": [{"name", "id", "archive"}]}
    containers/NAME.tar    one container checkpoint archive each (runtime.checkpoint.archive),
                           restored as CreateContainer restores an archive

cri-api asks for one consistent cut: every selected container paused before any is captured,
all resumed before the call returns. The pause is the cgroup freezer (v2 ``cgroup.freeze``,
v1 ``freezer.state``): every container's cgroup frozen, then criu dumps each from its frozen
cgroup (``--freeze-cgroup``, which leaves it frozen), then all are thawed, on error too.

Blocking file work: callers run these functions in a thread.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runtime import errors

POD_FILE = "pod.json"
CONTAINERS_DIR = "containers"
MAX_POD_FILE = 1 << 20
FREEZE_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class PodCheckpointEntry:
    name: str
    container_id: str
    archive: str  # relative to the checkpoint directory


def check_output_dir(path: str) -> Path:
    """CheckpointPod's output_path: absolute, an existing empty directory."""
    if not path or not os.path.isabs(path):
        raise errors.InvalidArgument(f"output_path must be an absolute path, got {path!r}")
    p = Path(path)
    if not p.is_dir() or p.is_symlink():
        raise errors.InvalidArgument(f"output_path {path} is not an existing directory")
    if any(p.iterdir()):
        raise errors.InvalidArgument(f"output_path {path} is not empty")
    return p


def archive_name(container_name: str) -> str:
    """The archive of a container in the checkpoint; InvalidArgument for a name that is not
    one path component."""
    if not container_name or "/" in container_name or container_name in (".", "..") or "\0" in container_name:
        raise errors.InvalidArgument(f"container name {container_name!r} cannot name an archive")
    return f"{CONTAINERS_DIR}/{container_name}.tar"


def write_pod_file(out: Path, pod: dict[str, str], entries: Sequence[PodCheckpointEntry]) -> None:
    data = {"version": 1, "pod": pod,
            "containers": [{"name": e.name, "id": e.container_id, "archive": e.archive} for e in entries]}
    tmp = out / f".{POD_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, out / POD_FILE)


def read_pod_file(path: str) -> list[PodCheckpointEntry]:
    """The containers of the pod checkpoint at ``path``; InvalidArgument when it is not one
    (the directory is the caller's: its contents are checked like an archive's)."""
    if not path or not os.path.isabs(path):
        raise errors.InvalidArgument(f"checkpoint_path must be an absolute path, got {path!r}")
    f = Path(path) / POD_FILE
    try:
        if f.stat().st_size > MAX_POD_FILE:
            raise errors.InvalidArgument(f"pod checkpoint {path}: {POD_FILE} is too large")
        data = json.loads(f.read_text())
        if data.get("version") != 1:
            raise ValueError(f"version {data.get('version')!r} is not 1")
        entries = [PodCheckpointEntry(str(c["name"]), str(c["id"]), str(c["archive"])) for c in data["containers"]]
    except OSError:
        raise errors.InvalidArgument(f"{path} is not a pod checkpoint of cri-shim (no readable {POD_FILE})") from None
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise errors.InvalidArgument(f"pod checkpoint {path}: {POD_FILE} is damaged ({exc})") from None
    if not entries:
        raise errors.InvalidArgument(f"pod checkpoint {path} holds no container")
    for e in entries:
        if e.archive != archive_name(e.name):
            raise errors.InvalidArgument(f"pod checkpoint {path}: container {e.name!r} has archive {e.archive!r}")
    return entries


def remove_partial(out: Path) -> None:
    """Remove what a failed CheckpointPod wrote into the caller's directory (not the directory)."""
    for name in (POD_FILE, f".{POD_FILE}.tmp"):
        (out / name).unlink(missing_ok=True)
    d = out / CONTAINERS_DIR
    if d.is_dir() and not d.is_symlink():
        for f in d.iterdir():
            f.unlink(missing_ok=True)
        d.rmdir()


def freezer_dir(pid: int, cgroup_root: str = "/sys/fs/cgroup") -> str:
    """The freezer cgroup directory of host process ``pid`` (v2: its cgroup; v1: its cgroup
    in the freezer hierarchy), read from /proc/PID/cgroup (in our cgroup namespace)."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError as exc:
        raise errors.FailedPrecondition(f"process {pid} is gone: {exc.strerror}") from None
    v2 = ""
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return os.path.join(cgroup_root, "freezer", path.lstrip("/"))
        if hid == "0":
            v2 = os.path.join(cgroup_root, path.lstrip("/"))
    if v2 and os.path.exists(os.path.join(v2, "cgroup.freeze")):
        return v2
    raise errors.FailedPrecondition(f"process {pid} has no freezer cgroup: pods cannot be checkpointed in one cut here")


def set_frozen(cgroup: str, frozen: bool, timeout: float = FREEZE_TIMEOUT) -> None:
    """Freeze or thaw ``cgroup`` and wait until the kernel says it is so (v2 cgroup.events
    "frozen", v1 freezer.state)."""
    v2 = os.path.exists(os.path.join(cgroup, "cgroup.freeze"))
    if v2:
        Path(cgroup, "cgroup.freeze").write_text("1" if frozen else "0")
    else:
        Path(cgroup, "freezer.state").write_text("FROZEN" if frozen else "THAWED")
    deadline = time.monotonic() + timeout
    while True:
        if v2:
            events = dict(ln.split(" ", 1) for ln in Path(cgroup, "cgroup.events").read_text().splitlines())
            done = events.get("frozen", "0").strip() == ("1" if frozen else "0")
        else:
            done = Path(cgroup, "freezer.state").read_text().strip() == ("FROZEN" if frozen else "THAWED")
        if done:
            return
        if time.monotonic() > deadline:
            raise errors.FailedPrecondition(f"cgroup {cgroup} did not {'freeze' if frozen else 'thaw'} "
                                            f"within {timeout:.0f}s")
        time.sleep(0.01)
