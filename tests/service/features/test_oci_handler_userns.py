"""A pod with its own user namespace (hostUsers: false) whose containers run through an external
OCI runtime, once with runc 1.1 and once with crun 1.8 (before: RunPodSandbox refused it with
Unimplemented and Status said user_namespaces: false for such a handler). The runtime joins the
pod's user namespace (config.json: its path first, with the pod's uid/gid maps) and mounts the
rootfs and binds the pod shim prepared as host root and attached in the create's own mount
namespace at mount points under /run/cri-shim-oci/<id>: the overlay over idmapped image layers
and a volume idmapped with the pod's mappings. Inside, the process is root and the image's
files are root's; outside it is the mapped host uid; what it writes into its rootfs lands on
the host as that uid, what it writes into the idmapped volume as host root; a plain bind of a
host root file is nobody's. Removal leaves no mount point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.container.oci import USERNS_MOUNTS
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.ociruntimes import OciRuntime
from tests.support.pods import container_config, create_container, exec_sync, pod_config, pull, start

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(120)]

HOST_ID = 2_100_000_000 + 7 * 65536  # far from any user of this machine, apart from test_userns's
LENGTH = 65536


@pytest.fixture(scope="module")
def daemon_config(oci: OciRuntime) -> str:
    # and a handler giving every pod a user namespace of its own (user_namespace = true)
    return (f'[[runtime_handlers]]\nname = "{oci.handler}"\noci_runtime_path = "{oci.path}"\n'
            f'[[runtime_handlers]]\nname = "{oci.handler}-userns"\nuser_namespace = true\n'
            f'oci_runtime_path = "{oci.path}"\n')


def _mapping() -> list[pb.IDMapping]:
    return [pb.IDMapping(host_id=HOST_ID, container_id=0, length=LENGTH)]


def _host_uids(pid: int) -> list[str]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return line.split()[1:]


def test_a_pod_with_its_own_user_namespace_runs_through_the_runtime(d: DaemonProcess, oci: OciRuntime,
                                                                     busybox: str, tmp_path: Path) -> None:
    features = {h.name: h.features.user_namespaces
                for h in d.runtime.Status(pb.StatusRequest(), timeout=10).runtime_handlers}
    assert features[oci.handler]
    pull(d, busybox)
    cfg = pod_config(log_directory=str(tmp_path / "logs" / unique("p")))
    cfg.linux.security_context.namespace_options.userns_options.CopyFrom(
        pb.UserNamespace(mode=pb.POD, uids=_mapping(), gids=_mapping()))
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=oci.handler),
                                  timeout=60).pod_sandbox_id
    host_file = tmp_path / "host-root-file"
    host_file.write_text("node secret\n")
    host_file.chmod(0o644)
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "data").write_text("kubelet's volume\n")
    mounts = [
        pb.Mount(container_path="/host-file", host_path=str(host_file)),  # no mappings: a plain bind
        pb.Mount(container_path="/vol", host_path=str(vol), uidMappings=_mapping(), gidMappings=_mapping()),
    ]
    cc = container_config("app", busybox, ["sleep", "300"], mounts=mounts)
    cc.linux.security_context.namespace_options.CopyFrom(cfg.linux.security_context.namespace_options)
    cid = create_container(d, pod, cfg, cc)
    config = json.loads((d.state / "containers" / cid / "bundle" / "config.json").read_text())
    assert config["linux"]["namespaces"][0]["type"] == "user"
    assert config["linux"]["uidMappings"] == [{"containerID": 0, "hostID": HOST_ID, "size": LENGTH}]
    assert config["root"]["path"] == str(USERNS_MOUNTS / cid / "rootfs")
    assert not os.listdir(USERNS_MOUNTS / cid / "rootfs")  # mounted in the create's namespace only
    start(d, cid)
    out = json.loads(d.runtime.ContainerStatus(pb.ContainerStatusRequest(container_id=cid, verbose=True),
                                               timeout=10).info["info"])
    pid = int(out["pid"])
    # root inside, the mapped host uid outside
    assert Path(f"/proc/{pid}/uid_map").read_text().split() == ["0", str(HOST_ID), str(LENGTH)]
    assert _host_uids(pid) == [str(HOST_ID)] * 4

    def sh(script: str) -> str:
        r = exec_sync(d, cid, ["sh", "-c", script])
        assert r.exit_code == 0, (script, r.stdout, r.stderr)
        return r.stdout.decode()

    assert sh("id -u; id -g").split() == ["0", "0"]
    # the image's files (host root's on disk) are root's inside; so are the pod's files
    assert sh("stat -c '%u %g' / /bin /bin/busybox /etc/hostname /dev/shm").split() == ["0"] * 10
    # writes land on the host as the mapped uid, in the container's upper dir
    sh("echo hi > /written-inside")
    uppers = list((d.root / "images" / "containers").glob("*/fs/written-inside"))
    assert len(uppers) == 1 and os.stat(uppers[0]).st_uid == HOST_ID
    # host root's file (bound without mappings) is nobody's inside and not writable
    assert sh("stat -c %u /host-file").strip() == "65534"
    assert exec_sync(d, cid, ["sh", "-c", "echo pwned >> /host-file"]).exit_code != 0
    assert host_file.read_text() == "node secret\n"
    # a volume with the pod's mappings is idmapped: root's inside, host root's on disk
    assert sh("stat -c '%u %g' /vol/data; echo more >> /vol/data; cat /vol/data").split("\n")[:3] == [
        "0 0", "kubelet's volume", "more"]
    assert os.stat(vol / "data").st_uid == 0
    d.runtime.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=30)
    d.runtime.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=30)
    assert not (USERNS_MOUNTS / cid).exists()


def test_a_shared_pid_namespace_and_a_user_namespace_handler(d: DaemonProcess, oci: OciRuntime,
                                                             busybox: str) -> None:
    # a pod of a user_namespace handler (kubelet sent no mappings): its own ids, one PID
    # namespace for its containers, joined through the shim's fd of it (runtime.shim.ocipidns)
    pull(d, busybox)
    cfg = pod_config(pid=pb.POD)
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg, runtime_handler=f"{oci.handler}-userns"),
                                  timeout=60).pod_sandbox_id
    cids = []
    for name in ("a", "b"):
        cc = container_config(name, busybox, ["sleep", f"30{len(cids)}"])
        cc.linux.security_context.namespace_options.CopyFrom(cfg.linux.security_context.namespace_options)
        cids.append(create_container(d, pod, cfg, cc))
        start(d, cids[-1])
    uid_map = exec_sync(d, cids[0], ["cat", "/proc/self/uid_map"]).stdout.decode().split()
    assert uid_map[0] == "0" and uid_map[1] != "0", uid_map
    ps = exec_sync(d, cids[1], ["ps", "-o", "pid,args"]).stdout.decode()
    assert "sleep 300" in ps and "sleep 301" in ps and "\n    1 " in ps, ps
    assert exec_sync(d, cids[1], ["stat", "-c", "%u", "/bin/busybox"]).stdout == b"0\n"
