"""User namespaces (hostUsers: false), the pure rules: which userns_options a pod may ask
for, which CRI mounts become idmapped, what the shim's process table makes of a hand-over,
and how the edge reports mappings."""

from __future__ import annotations

from pathlib import Path

import pytest

from cri_shim.api.containers import _mount_to_pb
from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.translate import namespace_options_from_pb, namespace_options_to_pb
from runtime.errors import InvalidArgument, Unimplemented
from runtime.linux.mounts import IDMAP, parse_options
from runtime.linux.userns import map_text
from runtime.model.container import IdMapping, Mount, MountPropagation
from runtime.model.launch import NamespaceSpec
from runtime.model.sandbox import (
    IDMapping,
    NamespaceMode,
    NamespaceOptions,
    SandboxConfig,
    SandboxMetadata,
    SandboxSecurity,
    UserNamespaceOption,
)
from runtime.sandbox.validate import check_sandbox_config, check_user_namespace
from runtime.security import mounts as mnt
from runtime.shim.procs import _fork_pid_ns, _handed_over_pid

pytestmark = pytest.mark.timeout(10)

POD = NamespaceMode.POD


def userns(uids: tuple[tuple[int, int, int], ...] = ((0, 65536, 65536),),
           gids: tuple[tuple[int, int, int], ...] | None = None,
           mode: NamespaceMode = POD) -> UserNamespaceOption:
    """Mappings as (container id, host id, length)."""
    def maps(rows: tuple[tuple[int, int, int], ...]) -> tuple[IDMapping, ...]:
        return tuple(IDMapping(host_id=h, container_id=c, length=n) for c, h, n in rows)

    return UserNamespaceOption(mode=mode, uids=maps(uids), gids=maps(uids if gids is None else gids))


def pod(u: UserNamespaceOption | None, privileged: bool = False, **modes: NamespaceMode) -> SandboxConfig:
    return SandboxConfig(
        metadata=SandboxMetadata("web", "uid-1", "default"),
        security=SandboxSecurity(namespaces=NamespaceOptions(userns=u, **modes),  # type: ignore[arg-type]
                                 privileged=privileged),
    )


def test_kubelet_and_critest_mappings_are_accepted() -> None:
    for u in (userns(), userns(((0, 1000, 100000),)), userns(((0, 65536 * 7, 65536 * 2),))):
        check_user_namespace(pod(u))
        assert check_sandbox_config(pod(u)) == {}
    check_user_namespace(pod(UserNamespaceOption(mode=NamespaceMode.NODE)))
    check_user_namespace(pod(None))


@pytest.mark.parametrize(
    ("u", "words"),
    [
        (userns(((0, 1000, 100000), (0, 2000, 100000))), "exactly one uid mapping"),
        (userns(gids=()), "exactly one gid mapping"),
        (userns(((1, 1000, 100000),)), "container id 0"),
        (userns(((0, 0, 65536),)), "host id 0"),
        (userns(((0, 4294901760, 65536),)), "out of range"),
        (userns(((0, 65536, 0),)), "out of range"),
        (UserNamespaceOption(mode=NamespaceMode.CONTAINER), "CONTAINER"),
        (UserNamespaceOption(mode=NamespaceMode.TARGET), "TARGET"),
        (userns(mode=NamespaceMode.NODE), "NODE takes no"),
    ],
)
def test_bad_user_namespace_options_are_invalid(u: UserNamespaceOption, words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_sandbox_config(pod(u))
    assert words in str(info.value)


@pytest.mark.parametrize("kind", ["network", "pid", "ipc"])
def test_a_user_namespace_pod_cannot_use_node_namespaces(kind: str) -> None:
    with pytest.raises(InvalidArgument, match="node's"):
        check_user_namespace(pod(userns(), **{kind: NamespaceMode.NODE}))


def test_a_user_namespace_pod_cannot_be_privileged() -> None:
    with pytest.raises(InvalidArgument, match="privileged"):
        check_user_namespace(pod(userns(), privileged=True))


def test_without_support_a_valid_pod_request_is_unimplemented_with_the_reason() -> None:
    with pytest.raises(Unimplemented, match="idmapped mounts: EINVAL"):
        check_sandbox_config(pod(userns()), userns_unavailable="idmapped mounts: EINVAL")
    with pytest.raises(InvalidArgument):  # a bad request stays a bad request
        check_sandbox_config(pod(userns(((1, 1000, 10),))), userns_unavailable="no")
    check_sandbox_config(pod(None), userns_unavailable="no")  # hostUsers: true is unaffected


def test_host_root_and_id_maps() -> None:
    u = userns(((0, 100000, 65536),), ((0, 200000, 65536),))
    assert u.host_root == (100000, 200000)
    assert u.id_maps() == ([(0, 100000, 65536)], [(0, 200000, 65536)])
    assert UserNamespaceOption().host_root == (0, 0)
    assert map_text(u.id_maps()[0]) == "0 100000 65536\n"
    assert pod(u).user_namespace == u
    assert pod(UserNamespaceOption(mode=NamespaceMode.NODE)).user_namespace is None


def cri_mount(path: Path, uids: tuple[tuple[int, int, int], ...] = (), **kw: object) -> Mount:
    maps = tuple(IdMapping(host_id=h, container_id=c, length=n) for c, h, n in uids)
    return Mount("/data", str(path), uid_mappings=maps, gid_mappings=maps, **kw)  # type: ignore[arg-type]


def test_volumes_with_the_pods_mappings_become_idmapped_binds(tmp_path: Path) -> None:
    u = userns()
    plain, mapped = mnt.host_mounts(
        (Mount("/plain", str(tmp_path)), cri_mount(tmp_path, ((0, 65536, 65536),), readonly=True)),
        kernel=(6, 18), userns=u, mountinfo="")
    assert IDMAP not in plain.options
    assert mapped.options == ("rbind", "rprivate", "ro", IDMAP)
    # "idmap" says how the source is prepared; it is no mount flag or filesystem data
    assert parse_options(mapped.options)[2] == ""


def test_idmapped_volumes_need_the_pods_own_mappings(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="differ from the pod's"):
        mnt.host_mounts((cri_mount(tmp_path, ((0, 1000, 65536),)),), kernel=(6, 18), userns=userns())
    with pytest.raises(InvalidArgument, match="need a pod with its own user namespace"):
        mnt.host_mounts((cri_mount(tmp_path, ((0, 65536, 65536),)),), kernel=(6, 18))
    with pytest.raises(InvalidArgument, match="BIDIRECTIONAL"):
        mnt.host_mounts((Mount("/b", str(tmp_path), propagation=MountPropagation.BIDIRECTIONAL),),
                        kernel=(6, 18), userns=userns())


def test_shim_forks_container_pid_namespaces_itself_only_without_a_user_namespace() -> None:
    assert _fork_pid_ns(NamespaceSpec()) == ("", True)
    assert _fork_pid_ns(NamespaceSpec(user="/run/ns/user")) == ("", False)  # the child makes it
    assert _fork_pid_ns(NamespaceSpec(pid="/proc/9/ns/pid", new_pid=False, user="/u")) == ("/proc/9/ns/pid", False)
    assert _fork_pid_ns(NamespaceSpec(new_pid=False)) == ("", False)


def test_hand_over_line() -> None:
    assert _handed_over_pid(["pid 4242", "ready"]) == 4242
    assert _handed_over_pid(["ready"]) == 0
    assert _handed_over_pid(["error pid 12", "pid x"]) == 0


def test_edge_reports_mappings_of_mounts_and_pods() -> None:
    m = Mount("/data", "/host", uid_mappings=(IdMapping(65536, 0, 65536),), gid_mappings=(IdMapping(70000, 0, 10),))
    out = _mount_to_pb(m)
    assert [(x.host_id, x.container_id, x.length) for x in out.uidMappings] == [(65536, 0, 65536)]
    assert [(x.host_id, x.container_id, x.length) for x in out.gidMappings] == [(70000, 0, 10)]
    opts = NamespaceOptions(pid=NamespaceMode.CONTAINER, userns=userns(((0, 1000, 100000),)))
    msg = namespace_options_to_pb(opts)
    assert msg.userns_options.mode == pb.POD
    assert [(x.container_id, x.host_id, x.length) for x in msg.userns_options.uids] == [(0, 1000, 100000)]
    assert namespace_options_from_pb(msg) == opts
