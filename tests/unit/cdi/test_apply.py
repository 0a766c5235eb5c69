"""CDI edits in the engine's terms: device nodes, rules, mounts, env, groups, and the hooks."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from runtime.cdi.apply import CdiLaunchEdits, apply_env, device_spec, launch_edits, mount_spec
from runtime.cdi.hooks import (
    DEFAULT_TIMEOUT,
    container_hooks,
    hook_seconds,
    in_container,
    oci_state,
    run_hook,
    run_hooks,
)
from runtime.cdi.spec import ContainerEdits, DeviceNode, Hook, Mount, NetDevice
from runtime.errors import FailedPrecondition, InvalidArgument, Unimplemented
from runtime.model.container import ContainerHook
from runtime.model.launch import MountSpec
from runtime.security.devices import DeviceRule

pytestmark = pytest.mark.timeout(20)
NULL = os.stat("/dev/null")


def test_a_device_node_takes_the_host_nodes_numbers_and_mode() -> None:
    d = device_spec(DeviceNode("/dev/gpu0", host_path="/dev/null"), uid=0, gid=0)
    assert (d.path, d.type, d.major, d.minor, d.host_path) == ("/dev/gpu0", "c", 1, 3, "/dev/null")
    assert d.file_mode == NULL.st_mode & 0o7777 and (d.uid, d.gid) == (0, 0)
    d = device_spec(DeviceNode("/dev/null", file_mode=0o600), uid=1000, gid=2000)
    assert d.file_mode == 0o600 and (d.uid, d.gid) == (1000, 2000)  # the container user's (reference rule)
    d = device_spec(DeviceNode("/dev/null", uid=5, gid=6), uid=1000, gid=2000)
    assert (d.uid, d.gid) == (5, 6)


def test_given_numbers_need_no_host_node(tmp_path: Path) -> None:
    d = device_spec(DeviceNode("/dev/fake", host_path=str(tmp_path / "absent"), type="c", major=240, minor=7),
                    uid=0, gid=0)
    assert (d.type, d.major, d.minor, d.file_mode) == ("c", 240, 7, 0o666)


def test_bad_device_nodes(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"host node .*absent"):
        device_spec(DeviceNode("/dev/x", host_path=str(tmp_path / "absent")), uid=0, gid=0)
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="is not a device node"):
        device_spec(DeviceNode("/dev/x", host_path=str(tmp_path / "file")), uid=0, gid=0)
    with pytest.raises(InvalidArgument, match="does not match"):
        device_spec(DeviceNode("/dev/x", host_path="/dev/null", type="b"), uid=0, gid=0)
    with pytest.raises(InvalidArgument, match=r"without '\.\.'"):
        device_spec(DeviceNode("/dev/../etc/x", host_path="/dev/null"), uid=0, gid=0)
    with pytest.raises(Unimplemented, match="FIFO"):
        device_spec(DeviceNode("/dev/p", type="p"), uid=0, gid=0)


def test_rules_follow_permissions() -> None:
    edits = ContainerEdits(device_nodes=(
        DeviceNode("/dev/a", host_path="/dev/null"),
        DeviceNode("/dev/b", host_path="/dev/zero", permissions="wr"),
        DeviceNode("/dev/c", host_path="/dev/full", permissions="none"),
        DeviceNode("/dev/a", host_path="/dev/zero"),  # a later node at the same path replaces it
    ))
    out = launch_edits(edits, uid=0, gid=0)
    assert [(d.path, d.minor) for d in out.devices] == [("/dev/a", 5), ("/dev/b", 5), ("/dev/c", 7)]
    assert out.device_rules == (DeviceRule(True, "c", 1, 3, "rwm"), DeviceRule(True, "c", 1, 5, "rw"),
                                DeviceRule(True, "c", 1, 5, "rwm"))


def test_mounts(tmp_path: Path) -> None:
    lib = tmp_path / "lib.so"
    lib.write_text("x")
    assert mount_spec(Mount(str(lib), "/usr/lib/lib.so", ("ro", "nosuid", "nodev", "bind"))) == \
        MountSpec("/usr/lib/lib.so", "bind", str(lib), ("bind", "rprivate", "ro", "nosuid", "nodev"))
    assert mount_spec(Mount(str(tmp_path), "/opt/drv", ("rbind", "rslave"), "bind")) == \
        MountSpec("/opt/drv", "bind", str(tmp_path), ("rbind", "rslave"))
    assert mount_spec(Mount("tmpfs", "/run/drv", ("size=1m",), "tmpfs")) == \
        MountSpec("/run/drv", "tmpfs", "tmpfs", ("size=1m",))
    with pytest.raises(InvalidArgument, match="does not exist"):
        mount_spec(Mount(str(tmp_path / "absent"), "/x", ("bind",)))
    with pytest.raises(InvalidArgument, match="unsupported bind option"):
        mount_spec(Mount(str(lib), "/x", ("bind", "mode=755")))
    with pytest.raises(InvalidArgument, match="root directory"):
        mount_spec(Mount(str(tmp_path), "/", ("bind",)))
    out = launch_edits(ContainerEdits(mounts=(Mount(str(lib), "/x", ("bind",)), Mount(str(tmp_path), "/x",
                                                                                     ("rbind",)))), uid=0, gid=0)
    assert [m.source for m in out.mounts] == [str(tmp_path)]


def test_env_groups_and_unsupported_edits() -> None:
    assert apply_env(("PATH=/bin", "A=1"), ("A=2", "B=3", "B=4")) == ("PATH=/bin", "A=2", "B=4")
    assert launch_edits(ContainerEdits(additional_gids=(0, 44, 44, 7)), uid=0, gid=0).additional_gids == (44, 7)
    # netDevices are moved by the container service (runtime.network.netdevices), not launch edits
    assert launch_edits(ContainerEdits(net_devices=(NetDevice("eth9", "net0"),)), uid=0, gid=0) == CdiLaunchEdits()
    with pytest.raises(Unimplemented, match="intelRdt"):
        launch_edits(ContainerEdits(intel_rdt={"closID": "x"}), uid=0, gid=0)


def test_hooks_inside_the_container_are_records_with_their_timeout() -> None:
    edits = ContainerEdits(hooks=(Hook("createRuntime", "/bin/true"), Hook("poststop", "/bin/x", ("x", "-v")),
                                  Hook("createContainer", "/bin/true"), Hook("startContainer", "/s", timeout=7)))
    hooks = container_hooks(edits)  # before: Unimplemented for createContainer/startContainer
    assert hooks == (ContainerHook("createRuntime", "/bin/true", ("/bin/true",)),
                     ContainerHook("poststop", "/bin/x", ("x", "-v")),
                     ContainerHook("createContainer", "/bin/true", ("/bin/true",), timeout=DEFAULT_TIMEOUT),
                     ContainerHook("startContainer", "/s", ("/s",), timeout=7))
    assert in_container(hooks) == hooks[2:]
    assert hook_seconds(hooks, "createContainer") == DEFAULT_TIMEOUT and hook_seconds(hooks, "startContainer") == 7


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_a_hook_gets_the_state_args_and_env(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # argv[0] is the shell's own for a script; $1, the env and stdin are the hook's
    hook = _script(tmp_path / "h", f'cat > {out}; echo >> {out}; echo "$1 $HOOKVAR ${{HOME:-nohome}}" >> {out}\n')
    state = oci_state("c1", "created", 42, "/run/x", {"k": "v"})
    await run_hook(ContainerHook("createRuntime", hook, ("myhook", "arg1"), ("HOOKVAR=v",)), state)
    state_line, args_line = out.read_text().splitlines()
    assert json.loads(state_line) == {
        "ociVersion": "1.2.0", "id": "c1", "status": "created", "pid": 42, "bundle": "/run/x",
        "annotations": {"k": "v"}}
    assert args_line == "arg1 v nohome"


async def test_failing_and_slow_hooks(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _script(tmp_path / "bad", "echo broken driver >&2; exit 3\n")
    child = tmp_path / "child.pid"
    slow = _script(tmp_path / "slow", f"sleep 30 & echo $! > {child}; wait\n")
    state = oci_state("c1", "created", 1, "/", {})
    with pytest.raises(FailedPrecondition, match="exit status 3: broken driver"):
        await run_hook(ContainerHook("createRuntime", bad), state)
    with pytest.raises(FailedPrecondition, match="did not finish in 1 s"):
        await asyncio.wait_for(run_hook(ContainerHook("createRuntime", slow, timeout=1), state), 15)
    pid = int(child.read_text())
    for _ in range(100):  # the hook's own children are ended with it (its process group)
        if _gone(pid):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the hook's child {pid} outlived it")
    with pytest.raises(FailedPrecondition, match="cannot run"):
        await run_hook(ContainerHook("createRuntime", str(tmp_path / "absent")), state)
    marker = tmp_path / "ran"
    after = _script(tmp_path / "after", f"touch {marker}\n")
    hooks = (ContainerHook("poststop", bad), ContainerHook("poststart", after), ContainerHook("poststop", after))
    await run_hooks(hooks, ("poststop",), state, strict=False, container_id="c1")
    assert marker.exists() and "c1: CDI poststop hook" in caplog.text


def test_hooks_survive_the_record_store_and_old_records_load() -> None:
    from runtime.model.container import ContainerConfig, ContainerMetadata, ContainerRecord, ImageSpec
    from runtime.store import from_json, to_json

    rec = ContainerRecord(id="a" * 64, sandbox_id="b" * 64,
                          config=ContainerConfig(metadata=ContainerMetadata("x"), image=ImageSpec("i")),
                          hooks=(ContainerHook("poststop", "/bin/x", ("x", "1"), ("A=1",), 5),))
    assert from_json(ContainerRecord, to_json(rec)) == rec
    old = json.loads(to_json(rec))
    del old["hooks"]  # a record written before CDI hooks
    assert from_json(ContainerRecord, json.dumps(old)).hooks == ()


async def test_a_hook_that_writes_without_end_costs_no_memory(tmp_path: Path) -> None:
    """64 MiB of output: the daemon keeps the tail the error shows, not the whole of it
    (asyncio's communicate() kept all: a peak of over 64 MiB)."""
    import tracemalloc

    chatty = _script(tmp_path / "chatty", "head -c 67108864 /dev/zero | tr '\\0' x; echo; echo the end; exit 1\n")
    tracemalloc.start()
    try:
        state = oci_state("c", "created", 1, "/", {})
        with pytest.raises(FailedPrecondition, match=r"(?s)exit status 1: .*the end"):
            await asyncio.wait_for(run_hook(ContainerHook("createRuntime", chatty), state), 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"peak {peak >> 20} MiB while the hook wrote 64 MiB"
