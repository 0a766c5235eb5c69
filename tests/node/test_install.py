"""scripts/install-node.sh on a real node: its venv, its unit, and a pod through them.

The install is the operator's own command; only what keeps the node's runtime untouched is a
test's: the prefix and config dir are under the test's temp dir, the unit has a unique name
(``--unit-name``), and the config is a test daemon's (``--config``: unique socket, dirs,
bridge, slice). The node has no package index: the locked runtime wheels come from
``.cache/wheels`` (``--wheels``), which scripts/vm-stage.sh fills on the host beforehand
(``scripts/install-node.sh --download-wheels .cache/wheels``: the lock's files, hash-checked).
The test config's pod PID holder is the suite's build in ``.cache/pause`` (made on the host
too: the node has no compiler), which install-node.sh finds current and keeps.

Checked: the unit runs the installed venv and nothing of the checkout (ExecStart, the
processes' command lines, environment and cwd, the venv's files), with the properties the
shipped unit promises (Type=notify, Delegate=yes, KillMode=process, enabled); a pod and a
container run through its socket, survive a restart of the unit and are recovered by the new
daemon. The unit, its enablement, the prefix and the config dir are removed afterwards, also
when a test fails.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.node.units import container_pid, journal, remove_pods, show, systemctl
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, make_daemon
from tests.support.names import unique
from tests.support.netns import REPO
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, run_pod, status
from tests.support.registry import running_registry

# An emulated VM is slow (Python ~15x, fork+exec 50-100x): the install alone (a venv, 17
# wheels, byte-compiling them) takes minutes there. Generous deadlines, never timings.
pytestmark = [pytest.mark.root, pytest.mark.service, pytest.mark.peers, pytest.mark.timeout(1200)]

WHEELS = REPO / ".cache" / "wheels"
UNIT_DIR = Path("/etc/systemd/system")  # where install-node.sh puts the unit
CGROUP = Path("/sys/fs/cgroup")
#: The Python the development venv was made from. The node image has no python3-venv, so the
#: install's `python -m venv` uses this one (shared into the VM), as an operator's python3 would.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"


@dataclass(frozen=True, slots=True)
class Installed:
    unit: str
    daemon: DaemonProcess
    venv: Path
    config: Path


def install_node(*args: str) -> subprocess.CompletedProcess[str]:
    """scripts/install-node.sh ARGS as an operator runs it: from /, without this test's PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = str(BASE_PYTHON)
    return subprocess.run(["bash", str(REPO / "scripts" / "install-node.sh"), *args], capture_output=True,
                          text=True, timeout=1100, env=env, cwd="/")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("install")
    d = make_daemon(base / "d")
    prefix, etc = base / "opt", base / "etc"
    name = unique("cri-shim-inst-", 30) + ".service"
    try:
        done = install_node("--prefix", str(prefix), "--etc", str(etc), "--config", str(d.config_path),
                            "--unit-name", name, "--wheels", str(WHEELS))
        assert done.returncode == 0, (f"install-node.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n"
                                      f"{systemctl('status', name).stdout}\n{journal(name)}")
        venvs = list(prefix.iterdir())
        assert len(venvs) == 1, venvs
        print(done.stdout)  # what an operator sees (pytest -rP shows it)
        yield Installed(name, d, venvs[0], etc / "config.toml")
    finally:
        try:
            remove_pods(d)
        except Exception:  # a broken daemon must not keep us from cleaning up by hand
            pass
        finally:
            systemctl("disable", "--now", name, timeout=300)
            d.close_channel()
            (UNIT_DIR / name).unlink(missing_ok=True)
            systemctl("daemon-reload")
            systemctl("reset-failed", name)
            d.cleanup()  # the slice, then whatever is left (the daemon itself is stopped)
            shutil.rmtree(d.socket.parent, ignore_errors=True)
            shutil.rmtree(prefix, ignore_errors=True)
            shutil.rmtree(etc, ignore_errors=True)


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_registry(tmp_path_factory.mktemp("reg")) as reg:
        reg.push("test/busybox", "latest", ib.busybox_image())
        yield reg.ref("test/busybox")


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().rstrip("\0").split("\0")


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def python_processes(control_group: str) -> list[int]:
    """Pids of the Python interpreters in a unit's cgroup tree (the daemon, its shim factory,
    pod shims; not containers, which the systemd driver moves into scopes of their own)."""
    python = BASE_PYTHON.resolve()
    pids = []
    for procs in (CGROUP / control_group.lstrip("/")).rglob("cgroup.procs"):
        for pid in map(int, procs.read_text().split()):
            try:
                if Path(f"/proc/{pid}/exe").resolve() == python:
                    pids.append(pid)
            except OSError:  # exited meanwhile
                pass
    return pids


def assert_runs_from(venv: Path, pid: int) -> None:
    """The process runs the venv's interpreter, and nothing adds a path outside it (the
    checkout) to its sys.path."""
    argv = cmdline(pid)
    assert argv[0].startswith(f"{venv}/bin/python"), argv
    assert str(REPO) not in " ".join(argv), argv
    env = environ(pid)
    assert "PYTHONHOME" not in env, env
    # the unpack workers get the daemon's own source root (runtime/image/unpack_pool.py)
    for entry in filter(None, env.get("PYTHONPATH", "").split(os.pathsep)):
        assert Path(entry).resolve().is_relative_to(venv.resolve()), (pid, argv, env["PYTHONPATH"])
    assert os.readlink(f"/proc/{pid}/cwd") == "/"  # `python -m` puts the cwd first on sys.path


def sources(top: Path) -> dict[str, bytes]:
    """cri-shim's modules and data files under ``top`` (a checkout or site-packages)."""
    return {str(p.relative_to(top)): p.read_bytes() for pkg in ("cri_shim", "runtime") for p in (top / pkg).rglob("*")
            if p.suffix in (".py", ".json", ".toml") and "__pycache__" not in p.parts}


def test_the_unit_runs_the_installed_venv(installed: Installed) -> None:
    name, venv = installed.unit, installed.venv
    props = show(name, "ActiveState", "Type", "ExecStart", "Delegate", "KillMode", "FragmentPath",
                 "UnitFileState", "Environment", "MainPID")
    assert (props["ActiveState"], props["Type"]) == ("active", "notify"), props
    assert (props["Delegate"], props["KillMode"]) == ("yes", "process"), props
    assert props["FragmentPath"] == str(UNIT_DIR / name) and props["UnitFileState"] == "enabled", props
    # ExecStart={ path=... ; argv[]=... ; ignore_errors=no ; ... }
    m = re.search(r"path=(\S+) ; argv\[\]=(.*?) ; ignore_errors=", props["ExecStart"])
    assert m, props["ExecStart"]
    assert m.group(1) == f"{venv}/bin/cri-shim", props["ExecStart"]
    assert m.group(2) == f"{venv}/bin/cri-shim --config {installed.config}", props["ExecStart"]
    assert str(REPO) not in props["ExecStart"] and props["Environment"] == "", props
    # the console script's interpreter line names the venv's python
    main = int(props["MainPID"])
    assert cmdline(main)[1:] == [f"{venv}/bin/cri-shim", "--config", str(installed.config)], cmdline(main)
    assert_runs_from(venv, main)
    assert installed.config.read_bytes() == installed.daemon.config_path.read_bytes()

    # cri-shim is a regular install of this checkout's code, not an editable one pointing back.
    (site,) = venv.glob("lib/python3*/site-packages")
    assert not list(site.glob("__editable__*")), list(site.glob("__editable__*"))
    for pth in site.glob("*.pth"):
        assert str(REPO) not in pth.read_text(), pth
    installed_files, checkout_files = sources(site), sources(REPO)
    assert sorted(installed_files) == sorted(checkout_files)
    assert [f for f in installed_files if installed_files[f] != checkout_files[f]] == []
    conds = {c.type: c.status for c in
             installed.daemon.runtime.Status(pb.StatusRequest(), timeout=60).status.conditions}
    assert conds["RuntimeReady"] and conds["NetworkReady"], conds


def test_a_container_survives_a_restart_of_the_unit(installed: Installed, busybox: str, tmp_path: Path) -> None:
    name, d, venv = installed.unit, installed.daemon, installed.venv
    pull(d, busybox)
    cfg = pod_config(log_directory=str(tmp_path / "logs"))
    pod = run_pod(d, cfg, timeout=600)
    cid = create_container(d, pod, cfg, container_config("sleeper", busybox, ["sleep", "3600"]), timeout=600)
    d.runtime.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=600)
    pid = container_pid(d, cid)
    assert Path(f"/proc/{pid}/cgroup").read_text().strip().endswith(f"/cri-shim-{cid}.scope")

    # Every Python process of the unit (daemon, shim factory, the pod's shim) is the venv's.
    props = show(name, "MainPID", "ControlGroup")
    pythons = python_processes(props["ControlGroup"])
    assert len(pythons) >= 3 and int(props["MainPID"]) in pythons, (pythons, props)
    for p in pythons:
        assert_runs_from(venv, p)

    # KillMode=process: a restart ends the daemon only; the new one recovers the container.
    d.close_channel()
    restarted = systemctl("restart", name, timeout=900)
    assert restarted.returncode == 0, f"{restarted.stderr}\n{journal(name)}"
    after = show(name, "ActiveState", "MainPID")
    assert after["ActiveState"] == "active" and after["MainPID"] != props["MainPID"], after
    assert_runs_from(venv, int(after["MainPID"]))
    assert os.path.exists(f"/proc/{pid}")
    assert status(d, cid).state == pb.CONTAINER_RUNNING
    assert container_pid(d, cid) == pid
    res = exec_sync(d, cid, ["echo", "recovered"], timeout=300)
    assert (res.exit_code, res.stdout) == (0, b"recovered\n"), res
