"""Pure rules: image config merged with ContainerConfig, pod files, sandbox validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.container import spec
from runtime.errors import InvalidArgument
from runtime.image.model import ImageConfig
from runtime.model.container import ContainerConfig, ContainerMetadata, ImageSpec
from runtime.model.network import DnsConfig, PortMapping, Protocol
from runtime.model.sandbox import (
    NamespaceMode,
    NamespaceOptions,
    SandboxConfig,
    SandboxMetadata,
    SandboxSecurity,
)
from runtime.sandbox import podfiles
from runtime.sandbox.validate import check_sandbox_config

pytestmark = pytest.mark.timeout(10)


def cfg(**kw: object) -> ContainerConfig:
    return ContainerConfig(metadata=ContainerMetadata("c"), image=ImageSpec("img"), **kw)  # type: ignore[arg-type]


IMAGE = ImageConfig(entrypoint=("/entry",), cmd=("--default",), env=("PATH=/img/bin", "A=1", "B=2"),
                    working_dir="/srv")


@pytest.mark.parametrize(
    ("command", "args", "want"),
    [
        ((), (), ("/entry", "--default")),
        ((), ("x", "y"), ("/entry", "x", "y")),
        (("/bin/sh",), (), ("/bin/sh",)),
        (("/bin/sh",), ("-c", "true"), ("/bin/sh", "-c", "true")),
    ],
)
def test_kubelet_command_rules(command: tuple[str, ...], args: tuple[str, ...], want: tuple[str, ...]) -> None:
    assert spec.merge_args(cfg(command=command, args=args), IMAGE) == want


def test_no_command_anywhere_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        spec.merge_args(cfg(), ImageConfig())


def test_env_merge_replaces_in_place_and_adds() -> None:
    env = spec.merge_env(IMAGE, cfg(envs=(("B", "two"), ("C", "3"), ("A", "x=y"))), "host1")
    assert env == ("PATH=/img/bin", "A=x=y", "B=two", "HOSTNAME=host1", "C=3")


def test_env_defaults_path_and_term_with_tty() -> None:
    env = spec.merge_env(ImageConfig(), cfg(tty=True), "")
    assert env[0] == spec.DEFAULT_PATH and env[-1] == "TERM=xterm"
    assert spec.merge_env(ImageConfig(), cfg(tty=True, envs=(("TERM", "vt100"),)), "")[-1] == "TERM=vt100"


@pytest.mark.parametrize("key", ["", "A=B", "NUL\0"])
def test_bad_env_names_are_refused(key: str) -> None:
    with pytest.raises(InvalidArgument):
        spec.merge_env(ImageConfig(), cfg(envs=((key, "v"),)), "")


def test_binary_env_values_survive() -> None:
    value = b"\xff\xfe".decode(errors="surrogateescape")
    env = spec.merge_env(ImageConfig(), cfg(envs=(("BIN", value),)), "")
    assert f"BIN={value}".encode(errors="surrogateescape") == b"BIN=\xff\xfe"
    assert f"BIN={value}" in env


def test_working_dir() -> None:
    assert spec.working_dir(cfg(), IMAGE) == "/srv"
    assert spec.working_dir(cfg(working_dir="/w"), IMAGE) == "/w"
    assert spec.working_dir(cfg(), ImageConfig()) == "/"
    with pytest.raises(InvalidArgument):
        spec.working_dir(cfg(working_dir="rel"), IMAGE)


def test_pod_file_mounts() -> None:
    mounts = spec.pod_file_mounts("/files", readonly=True)
    assert [(m.destination, m.source, m.options) for m in mounts] == [
        ("/etc/hostname", "/files/hostname", ("rbind", "rprivate", "ro")),
        ("/etc/hosts", "/files/hosts", ("rbind", "rprivate", "ro")),
        ("/etc/resolv.conf", "/files/resolv.conf", ("rbind", "rprivate", "ro")),
    ]


def test_pod_files_content(tmp_path: Path) -> None:
    dns = DnsConfig(servers=("10.0.0.10",), searches=("a.svc", "svc"), options=("ndots:5",))
    assert podfiles.resolv_conf_content(dns) == "search a.svc svc\nnameserver 10.0.0.10\noptions ndots:5\n"
    assert not podfiles.dns_given(DnsConfig()) and not podfiles.dns_given(None)
    assert podfiles.hosts_content("10.1.2.3", "web").endswith("10.1.2.3\tweb\n")
    assert "web" not in podfiles.hosts_content("", "web")
    podfiles.write_pod_files(tmp_path, "web", dns, host_network=False, ip="10.1.2.3")
    assert (tmp_path / "hostname").read_text() == "web\n"
    assert (tmp_path / "resolv.conf").read_text().startswith("search a.svc svc\n")


def sandbox(**kw: object) -> SandboxConfig:
    md = kw.pop("metadata", SandboxMetadata("web", "uid-1", "default"))
    return SandboxConfig(metadata=md, **kw)  # type: ignore[arg-type]


def ns(**kw: object) -> SandboxSecurity:
    return SandboxSecurity(namespaces=NamespaceOptions(**kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (sandbox(metadata=SandboxMetadata("", "u", "ns")), "metadata.name"),
        (sandbox(metadata=SandboxMetadata("n", "", "ns")), "metadata.uid"),
        (sandbox(metadata=SandboxMetadata("n", "u", "a/b")), "metadata.namespace"),
        (sandbox(metadata=SandboxMetadata("n\n", "u", "ns")), "metadata.name"),
        (sandbox(hostname="-bad"), "hostname"),
        (sandbox(hostname="a" * 65), "hostname"),
        (sandbox(log_directory="logs"), "log_directory"),
        (sandbox(log_directory="/var/log/../etc"), "log_directory"),
        (sandbox(cgroup_parent="kube--pods.slice"), "systemd slice"),
        (sandbox(cgroup_parent="-.slice"), "root slice"),
        (sandbox(dns=DnsConfig(servers=("dns.example",))), "nameserver"),
        (sandbox(dns=DnsConfig(searches=("a b",))), "search"),
        (sandbox(security=ns(pid=NamespaceMode.TARGET)), "TARGET"),
        (sandbox(security=ns(network=NamespaceMode.CONTAINER)), "CONTAINER"),
        (sandbox(runtime_handler="kata"), "runtime handler"),
        (sandbox(port_mappings=(PortMapping(Protocol.TCP, 0),)), "container port"),
        (sandbox(sysctls={"kernel.panic": "1"}), "not namespaced"),
        (sandbox(sysctls={"net.ipv4.ip_forward": "1"}, security=ns(network=NamespaceMode.NODE)), "host"),
        (sandbox(sysctls={"kernel.shmmax": "1"}, security=ns(ipc=NamespaceMode.NODE)), "IPC"),
    ],
)
def test_bad_sandbox_configs(config: SandboxConfig, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_sandbox_config(config)
    assert words in str(info.value)


def test_good_sandbox_config_normalises_sysctls() -> None:
    out = check_sandbox_config(sandbox(hostname="web-1.example", sysctls={
        "net/ipv4/ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"}))
    assert out == {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.shm_rmid_forced": "1"}
    assert sandbox().metadata.key() == "default/web/uid-1/0"
