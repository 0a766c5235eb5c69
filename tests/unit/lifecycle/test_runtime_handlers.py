"""Runtime handlers: the known ones and the refusal of others, the user namespace a
user_namespace handler gives each pod (from free, aligned id blocks), the seccomp default of
a hardened handler, and their config."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_shim.config import ConfigError, load
from runtime.config import RuntimeHandlerSettings
from runtime.errors import InvalidArgument, ResourceExhausted
from runtime.model.sandbox import (
    IDMapping,
    NamespaceMode,
    NamespaceOptions,
    ProfileType,
    SandboxConfig,
    SandboxMetadata,
    SandboxSecurity,
    SecurityProfile,
    UserNamespaceOption,
)
from runtime.sandbox.handlers import IDS_PER_POD, RuntimeHandlers, allocate_ids, mapped_ranges
from runtime.sandbox.validate import check_user_namespace

pytestmark = pytest.mark.timeout(10)

FIRST = 1 << 31
HANDLERS = RuntimeHandlers((
    RuntimeHandlerSettings(name="userns", user_namespace=True),
    RuntimeHandlerSettings(name="hardened", default_seccomp_profile="runtime/default"),
    RuntimeHandlerSettings(name="strict", default_seccomp_profile="/etc/cri-shim/strict.json"),
))


def pod(handler: str, *, userns: UserNamespaceOption | None = None, network: NamespaceMode = NamespaceMode.POD,
        privileged: bool = False) -> SandboxConfig:
    ns = NamespaceOptions(network=network, userns=userns)
    return SandboxConfig(metadata=SandboxMetadata("p", "uid", "default"), runtime_handler=handler,
                         security=SandboxSecurity(namespaces=ns, privileged=privileged))


def test_allocation_takes_the_lowest_free_aligned_block() -> None:
    last = FIRST + 4 * IDS_PER_POD - 1
    assert allocate_ids([], FIRST, last) == FIRST
    assert allocate_ids([(FIRST, IDS_PER_POD)], FIRST, last) == FIRST + IDS_PER_POD
    # a range not aligned to the blocks (kubelet's, say) blocks every block it touches
    assert allocate_ids([(FIRST + 10, IDS_PER_POD)], FIRST, last) == FIRST + 2 * IDS_PER_POD
    assert allocate_ids([(FIRST + IDS_PER_POD, IDS_PER_POD)], FIRST, last) == FIRST  # a hole is reused
    assert allocate_ids([(0, 1 << 20), (1 << 40, 5)], FIRST, last) == FIRST  # outside the range: ignored
    full = [(FIRST + i * IDS_PER_POD, IDS_PER_POD) for i in range(4)]
    with pytest.raises(ResourceExhausted, match="no free block"):
        allocate_ids(full, FIRST, last)


def test_unknown_handlers_are_refused_with_the_known_ones() -> None:
    assert HANDLERS.names == ("", "cri-shim", "userns", "hardened", "strict")
    assert HANDLERS.get("cri-shim") == RuntimeHandlerSettings(name="cri-shim")
    with pytest.raises(InvalidArgument, match=r"'kata' is not configured .*known: '', 'cri-shim', 'userns'"):
        HANDLERS.get("kata")
    with pytest.raises(InvalidArgument):
        HANDLERS.sandbox_config(pod("kata"), [])


def test_a_user_namespace_handler_gives_each_pod_its_own_ids() -> None:
    first = HANDLERS.sandbox_config(pod("userns"), [])
    ns = first.user_namespace
    assert ns is not None and ns.mode is NamespaceMode.POD
    assert ns.uids == ns.gids == (IDMapping(FIRST, 0, IDS_PER_POD),)
    check_user_namespace(first)  # what kubelet's hostUsers: false mapping would pass
    second = HANDLERS.sandbox_config(pod("userns"), mapped_ranges([first]))
    assert second.user_namespace is not None
    assert second.user_namespace.uids[0].host_id == FIRST + IDS_PER_POD
    # kubelet's own mapping (hostUsers: false) is kept; other handlers change nothing
    kubelets = UserNamespaceOption(NamespaceMode.POD, (IDMapping(65536, 0, 65536),), (IDMapping(65536, 0, 65536),))
    assert HANDLERS.sandbox_config(pod("userns", userns=kubelets), []).user_namespace == kubelets
    plain = pod("hardened")
    assert HANDLERS.sandbox_config(plain, []) is plain
    # a pod that cannot have its own user namespace is refused, naming the handler
    with pytest.raises(InvalidArgument, match="'userns' runs every pod in its own user namespace, and this pod "
                                              "uses the node's network namespace"):
        HANDLERS.sandbox_config(pod("userns", network=NamespaceMode.NODE), [])
    with pytest.raises(InvalidArgument, match="this pod is privileged"):
        HANDLERS.sandbox_config(pod("userns", privileged=True), [])


def test_a_hardened_handler_replaces_the_default_and_unconfined_profiles() -> None:
    default = SecurityProfile(ProfileType.RUNTIME_DEFAULT)
    unconfined = SecurityProfile(ProfileType.UNCONFINED)
    local = SecurityProfile(ProfileType.LOCALHOST, "/var/lib/kubelet/seccomp/mine.json")
    strict = SecurityProfile(ProfileType.LOCALHOST, "/etc/cri-shim/strict.json")
    for requested in (None, unconfined, default):
        assert HANDLERS.container_seccomp("hardened", requested) == default
        assert HANDLERS.container_seccomp("strict", requested) == strict
        assert HANDLERS.container_seccomp("", requested) == requested
    assert HANDLERS.container_seccomp("strict", local) == local


def _cfg(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_the_config_declares_handlers(tmp_path: Path) -> None:
    cfg = load(_cfg(tmp_path, '[[runtime_handlers]]\nname = "userns"\nuser_namespace = true\n\n'
                              '[[runtime_handlers]]\nname = "strict"\ndefault_seccomp_profile = "/etc/p.json"\n'))
    assert cfg.runtime_handlers == (RuntimeHandlerSettings("userns", True),
                                    RuntimeHandlerSettings("strict", False, "/etc/p.json"))
    assert cfg.runtime_settings().runtime_handlers == cfg.runtime_handlers
    for text, match in (
        ('[[runtime_handlers]]\nname = "Bad_Name"\n', "RFC 1123"),
        ('[[runtime_handlers]]\nname = ""\n', "RFC 1123"),
        ('[[runtime_handlers]]\nname = "cri-shim"\n', "built in"),
        ('[[runtime_handlers]]\nname = "a"\n[[runtime_handlers]]\nname = "a"\n', "declared twice"),
        ('[[runtime_handlers]]\nname = "a"\ndefault_seccomp_profile = "strict.json"\n', "absolute"),
        ('[[runtime_handlers]]\nname = "a"\nbogus = 1\n', "unknown config key runtime_handlers"),
        ('[pods]\nuserns_first_id = 0\n', "userns_first_id"),
        ('[pods]\nuserns_first_id = 100000\nuserns_last_id = 100001\n', "at least 65536"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(_cfg(tmp_path, text))


def test_an_oci_runtime_handler_needs_an_executable(tmp_path: Path) -> None:
    runtime = tmp_path / "runc"
    runtime.write_text("#!/bin/sh\n")
    runtime.chmod(0o755)
    cfg = load(_cfg(tmp_path, f'[[runtime_handlers]]\nname = "runc"\noci_runtime_path = "{runtime}"\n'))
    assert cfg.runtime_handlers == (RuntimeHandlerSettings("runc", oci_runtime_path=str(runtime)),)
    # a user namespace for every pod of such a handler (before: a config error)
    both = load(_cfg(tmp_path, f'[[runtime_handlers]]\nname = "a"\nuser_namespace = true\n'
                               f'oci_runtime_path = "{runtime}"\n'))
    assert both.runtime_handlers == (RuntimeHandlerSettings("a", user_namespace=True, oci_runtime_path=str(runtime)),)
    plain = tmp_path / "plain"
    plain.write_text("")
    for text, match in (
        ('[[runtime_handlers]]\nname = "a"\noci_runtime_path = "runc"\n', "must be an absolute path"),
        (f'[[runtime_handlers]]\nname = "a"\noci_runtime_path = "{tmp_path / "absent"}"\n', "not an executable"),
        (f'[[runtime_handlers]]\nname = "a"\noci_runtime_path = "{plain}"\n', "not an executable"),
        (f'[[runtime_handlers]]\nname = "a"\noci_runtime_path = "{tmp_path}"\n', "not an executable"),
    ):
        with pytest.raises(ConfigError, match=match):
            load(_cfg(tmp_path, text))


def test_an_oci_runtime_handler_takes_a_user_namespaced_pod() -> None:
    # before: Unimplemented (runtime.container.oci: the runtime joins the pod's user namespace)
    handlers = RuntimeHandlers((RuntimeHandlerSettings("runc", oci_runtime_path="/usr/sbin/runc"),))
    mapping = (IDMapping(host_id=1 << 31, container_id=0, length=IDS_PER_POD),)
    userns = UserNamespaceOption(NamespaceMode.POD, uids=mapping, gids=mapping)
    assert handlers.sandbox_config(pod("runc", userns=userns), []) == pod("runc", userns=userns)
    plain = pod("runc")
    assert handlers.sandbox_config(plain, []) == plain
