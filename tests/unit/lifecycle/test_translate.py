"""CRI protobuf <-> engine model translation of pods and containers (no daemon)."""

from __future__ import annotations

import signal

import pytest

from cri_shim.api.containers import container_config_from_pb, container_status_to_pb
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.pods import sandbox_config_from_pb, sandbox_status_to_pb
from cri_shim.api.translate import profile_from_pb, signal_from_pb, signal_to_pb
from runtime.errors import InvalidArgument
from runtime.model.container import ContainerRecord, ContainerState, MountPropagation
from runtime.model.sandbox import NamespaceMode, ProfileType, SandboxRecord, SandboxState

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("name", "number"),
    [("SIGNAL_SIGTERM", signal.SIGTERM), ("SIGNAL_SIGKILL", signal.SIGKILL), ("SIGNAL_SIGCLD", signal.SIGCHLD),
     ("SIGNAL_SIGRTMINPLUS3", signal.SIGRTMIN + 3), ("SIGNAL_SIGRTMAXMINUS2", signal.SIGRTMAX - 2),
     ("SIGNAL_SIGRTMAX", signal.SIGRTMAX), ("SIGNAL_RUNTIME_DEFAULT", 0)],
)
def test_signal_enum(name: str, number: int) -> None:
    assert signal_from_pb(pb.Signal.Value(name)) == number
    if number:
        assert signal_from_pb(signal_to_pb(number)) == number


def test_unknown_signal_value() -> None:
    with pytest.raises(InvalidArgument):
        signal_from_pb(9999)


def test_profiles_message_and_legacy_strings() -> None:
    msg = pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost, localhost_ref="/p.json")
    assert profile_from_pb(True, msg, "") == profile_from_pb(False, pb.SecurityProfile(), "localhost//p.json")
    assert profile_from_pb(False, pb.SecurityProfile(), "docker/default").type is ProfileType.RUNTIME_DEFAULT  # type: ignore[union-attr]
    assert profile_from_pb(False, pb.SecurityProfile(), "") is None
    with pytest.raises(InvalidArgument):
        profile_from_pb(True, pb.SecurityProfile(profile_type=pb.SecurityProfile.Localhost), "")
    with pytest.raises(InvalidArgument):
        profile_from_pb(False, pb.SecurityProfile(), "weird")


def test_pod_config_round_trip() -> None:
    msg = pb.PodSandboxConfig(
        metadata=pb.PodSandboxMetadata(name="web", uid="u", namespace="ns", attempt=2),
        hostname="web", log_directory="/logs", dns_config=pb.DNSConfig(servers=["1.1.1.1"]),
        port_mappings=[pb.PortMapping(protocol=pb.UDP, container_port=53, host_port=5353, host_ip="127.0.0.1")],
        labels={"a": "b"},
        linux=pb.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod1", sysctls={"net.ipv4.ip_forward": "1"},
            resources=pb.LinuxContainerResources(cpu_shares=512),
            security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.POD),
                run_as_user=pb.Int64Value(value=0),
            ),
        ),
    )
    cfg = sandbox_config_from_pb(msg, "cri-shim")
    assert cfg.metadata.key() == "ns/web/u/2"
    assert cfg.host_network and cfg.security.namespaces.pid is NamespaceMode.POD
    assert cfg.security.run_as_user == 0 and cfg.security.run_as_group is None
    assert cfg.port_mappings[0].protocol.value == "udp" and cfg.resources is not None
    assert cfg.resources.cpu_shares == 512 and cfg.overhead is None
    st = sandbox_status_to_pb(SandboxRecord(id="a" * 64, config=cfg, state=SandboxState.READY, ip="10.0.0.5",
                                            additional_ips=("fd00::5",)))
    assert st.state == pb.SANDBOX_READY and st.network.ip == "10.0.0.5"
    assert [i.ip for i in st.network.additional_ips] == ["fd00::5"]
    assert st.linux.namespaces.options.network == pb.NODE and st.runtime_handler == "cri-shim"


def test_container_config_and_status() -> None:
    msg = pb.ContainerConfig(
        metadata=pb.ContainerMetadata(name="c", attempt=1),
        image=pb.ImageSpec(image="busybox"),
        command=["sh"], envs=[pb.KeyValue(key="BIN", value=b"\xff")],
        mounts=[pb.Mount(container_path="/d", host_path="/h", readonly=True,
                         propagation=pb.PROPAGATION_HOST_TO_CONTAINER)],
        stop_signal=pb.SIGNAL_SIGQUIT,
        linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
            capabilities=pb.Capability(add_capabilities=["NET_ADMIN"], drop_capabilities=["ALL"]),
            apparmor_profile="unconfined", run_as_username="app")),
    )
    cfg = container_config_from_pb(msg)
    assert cfg.envs == (("BIN", b"\xff".decode(errors="surrogateescape")),)
    assert cfg.mounts[0].propagation is MountPropagation.HOST_TO_CONTAINER and cfg.mounts[0].readonly
    assert cfg.stop_signal == signal.SIGQUIT and cfg.security.capabilities.drop == ("ALL",)
    assert cfg.security.apparmor is not None and cfg.security.apparmor.type is ProfileType.UNCONFINED
    rec = ContainerRecord(id="c" * 64, sandbox_id="a" * 64, config=cfg, state=ContainerState.EXITED,
                          exit_code=137, reason="OOMKilled", mounts=cfg.mounts, stop_signal=signal.SIGQUIT)
    st = container_status_to_pb(rec)
    assert (st.state, st.exit_code, st.reason) == (pb.CONTAINER_EXITED, 137, "OOMKilled")
    assert st.stop_signal == pb.SIGNAL_SIGQUIT and st.mounts[0].host_path == "/h"
    running = container_status_to_pb(ContainerRecord(id="c" * 64, sandbox_id="a", config=cfg,
                                                     state=ContainerState.RUNNING, reason="x"))
    assert running.reason == "", "reasons are for exited containers"
