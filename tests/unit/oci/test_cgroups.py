"""The container cgroup an OCI runtime is given: the daemon's path (cgroupfs drivers), or
under the systemd driver runc's and crun's ``slice:prefix:name`` naming the very scope the
driver's own containers get (``cri-shim-<id>.scope`` in the pod's slice), with the unit
properties of the daemon's scopes as ``org.systemd.property.*`` annotations; and the
``--systemd-cgroup`` flag of the daemon's ``delete``."""

from __future__ import annotations

import pytest

from runtime.cgroups.systemd.units import container_scope, expand_slice
from runtime.container.oci import delete_argv
from runtime.oci.cgroups import runtime_cgroup, systemd_cgroups_path

pytestmark = pytest.mark.timeout(10)

CID = "c" * 64


def runc_scope(cgroups_path: str) -> tuple[str, str]:
    """(unit, cgroup path) runc and crun make of ``slice:prefix:name`` (runc getUnitName and
    ExpandSlice; crun get_systemd_scope_and_slice): ``<prefix>-<name>.scope`` in the slice."""
    slice_name, prefix, name = cgroups_path.split(":")
    unit = f"{prefix}-{name}.scope"
    return unit, f"{expand_slice(slice_name)}/{unit}"


@pytest.mark.parametrize("pod_slice", [
    "cri_shim-" + "a" * 64 + ".slice",  # a pod of ours (no parent given)
    "kubepods-burstable-pod1234_5678.slice",  # kubelet's (cgroupDriver: systemd)
    "kubepods-pod1234_5678.slice",  # guaranteed
    "test.slice",  # critest's parent
])
def test_the_runtime_starts_the_scope_where_the_driver_puts_it(pod_slice: str) -> None:
    path = f"{expand_slice(pod_slice)}/{container_scope(CID)}"
    cgroups_path = systemd_cgroups_path(path)
    assert cgroups_path == f"{pod_slice}:cri-shim:{CID}"
    assert runc_scope(cgroups_path) == (container_scope(CID), path)


def test_cgroupfs_drivers_give_the_path_itself() -> None:
    assert runtime_cgroup("/kubepods/burstable/pod1/" + CID, systemd=False) == ("/kubepods/burstable/pod1/" + CID, {})
    path = f"/cri_shim.slice/cri_shim-p.slice/{container_scope(CID)}"
    # crun 1.8 would put the process in <scope>/container without the empty subgroup
    assert runtime_cgroup(path, systemd=True) == (
        f"cri_shim-p.slice:cri-shim:{CID}",
        {"org.systemd.property.CollectMode": "'inactive-or-failed'", "run.oci.systemd.subgroup": ""})


@pytest.mark.parametrize("path", [
    "/kubepods/burstable/pod1/" + CID,  # a cgroupfs path
    f"/cri_shim.slice/cri_shim-p.slice/{CID}",  # not a scope
    "/cri_shim.slice/cri_shim-p.slice/other-x.scope",  # not a container's scope
    f"/cri_shim.slice/a-b.slice/{container_scope(CID)}",  # a-b.slice is not below cri_shim.slice
    f"/{container_scope(CID)}",  # in no slice
    f"/x/cri_shim.slice/{container_scope(CID)}",  # not where systemd puts that slice
])
def test_a_path_the_runtime_would_not_start_the_scope_at_is_refused(path: str) -> None:
    with pytest.raises(ValueError):
        systemd_cgroups_path(path)
    with pytest.raises(ValueError):
        runtime_cgroup(path, systemd=True)


def test_the_daemons_delete_passes_the_flag_before_the_command() -> None:
    assert delete_argv("/usr/sbin/runc", "/r", CID) == ["/usr/sbin/runc", "--root", "/r", "delete", "--force", CID]
    assert delete_argv("/usr/bin/crun", "/r", CID, systemd_cgroup=True) == [
        "/usr/bin/crun", "--root", "/r", "--systemd-cgroup", "delete", "--force", CID]
