"""The set-up process's runner of OCI createContainer/startContainer hooks (runtime.shim.hookrun),
without namespaces: what a hook gets (state on stdin, argv, env, working directory, no other
descriptors), the executable opened ahead (fexecve), and failures with the output's tail."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from runtime.model.container import ContainerHook
from runtime.shim import hookrun

pytestmark = pytest.mark.timeout(30)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_hook_gets_the_state_argv_env_cwd_and_no_other_descriptor(tmp_path: Path) -> None:
    out = tmp_path / "out"
    hook = _script(tmp_path / "h", f'cat > {out}.state; echo "$1 $HOOKVAR ${{HOME:-nohome}} $(pwd)" > {out}\n'
                                   f'exec ls /proc/self/fd > {out}.fds\n')
    template = json.dumps({"ociVersion": "1.2.0", "id": "c1", "bundle": "/run/c1", "annotations": {"a": "b"}})
    state = hookrun.state_document(template, "creating", 4242)
    leak = os.open("/dev/null", os.O_RDONLY)
    os.set_inheritable(leak, True)  # as a careless runtime's descriptors could be
    cwd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        hookrun.run_hook(ContainerHook("createContainer", hook, ("h", "arg1"), ("HOOKVAR=v",), 5), state,
                         cwd_fd=cwd)
    finally:
        os.close(leak)
        os.close(cwd)
    assert json.loads(Path(f"{out}.state").read_text()) == {
        "ociVersion": "1.2.0", "id": "c1", "bundle": "/run/c1", "annotations": {"a": "b"},
        "status": "creating", "pid": 4242}
    assert out.read_text().split() == ["arg1", "v", "nohome", str(tmp_path)]
    # ls's own directory fd aside, only stdin, stdout and stderr
    assert set(Path(f"{out}.fds").read_text().split()) <= {"0", "1", "2", "3"}


def test_the_executable_opened_ahead_is_the_one_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    path = tmp_path / "hook"
    _script(path, f"echo first > {out}\n")
    hooks = (ContainerHook("createContainer", str(path), timeout=5), ContainerHook("startContainer", "/absent"))
    fds = hookrun.open_executables(hooks)
    assert list(fds) == [0]  # startContainer hooks resolve later, in the container's root
    try:
        path.rename(tmp_path / "moved")  # the path now names another file
        _script(path, f"echo second > {out}\n")
        hookrun.run_hooks(hooks, hookrun.CREATE_CONTAINER, b"{}", executables=fds)
    finally:
        hookrun.close_all(fds)
    assert out.read_text() == "first\n" and fds == {}
    with pytest.raises(hookrun.HookFailed, match="CDI createContainer hook /absent cannot run: No such file"):
        hookrun.open_executables((ContainerHook("createContainer", "/absent"),))


def test_failing_hooks_say_why_with_their_output(tmp_path: Path) -> None:
    bad = _script(tmp_path / "bad", "echo broken driver >&2; exit 3\n")
    with pytest.raises(hookrun.HookFailed, match=r"startContainer hook .*bad failed with exit status 3: broken driver"):
        hookrun.run_hook(ContainerHook("startContainer", bad, timeout=5), b"{}")
    with pytest.raises(hookrun.HookFailed, match="cannot execute /absent: No such file"):
        hookrun.run_hook(ContainerHook("startContainer", "/absent", timeout=5), b"{}")
    quiet = _script(tmp_path / "quiet", "exec 0<&-; exit 0\n")  # never reads the state: no SIGPIPE for us
    hookrun.run_hook(ContainerHook("startContainer", quiet, timeout=5), b"x" * (1 << 20))


def test_a_slow_hook_is_killed_with_what_it_started(tmp_path: Path) -> None:
    child = tmp_path / "child.pid"
    slow = _script(tmp_path / "slow", f"echo started; sleep 30 & echo $! > {child}; wait\n")
    began = time.monotonic()
    with pytest.raises(hookrun.HookFailed, match=r"did not finish in 1 s \(killed\): started"):
        hookrun.run_hook(ContainerHook("createContainer", slow, timeout=1), b"{}")
    assert time.monotonic() - began < 5
    pid = int(child.read_text())
    for _ in range(100):  # its process group was killed
        if _gone(pid):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the hook's child {pid} outlived it")
