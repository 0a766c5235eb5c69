"""A container's cgroup as an OCI runtime (runc, crun) is given it in config.json.

With cri-shim's cgroupfs drivers the daemon makes the container's cgroup before the runtime
runs, and ``linux.cgroupsPath`` is that cgroup's path: the runtime joins it.

With the systemd driver (``[cgroups] driver = "systemd"``) a container's cgroup is a
transient scope, which systemd only makes around a process: the runtime, run with
``--systemd-cgroup``, starts it itself around its init, in the pod's slice (which cri-shim's
driver made, or kubelet's). runc and crun then read ``linux.cgroupsPath`` as
``slice:prefix:name`` and name the scope ``<prefix>-<name>.scope`` in ``Slice=<slice>``
(runc docs/systemd.md, libcontainer/cgroups/systemd ``getUnitName``; crun
``get_systemd_scope_and_slice``). With the prefix ``cri-shim`` and the container id as name
that is the very scope (and cgroup path) the daemon's driver gives a native container,
``cri-shim-<id>.scope`` (runtime.cgroups.systemd.units.container_scope), so stats, OOM
counters, UpdateContainerResources and removal find it where they find any container's.

``org.systemd.property.*`` annotations set or override unit properties at the runtime's
StartTransientUnit (runc docs/systemd-properties.md; crun reads them too, gvariant text):
``CollectMode=inactive-or-failed``, as the daemon's own scopes have, so a scope that ended
failed (an OOM kill) is unloaded at once instead of lingering until a reset-failed. And
``run.oci.systemd.subgroup`` empty: crun 1.8 otherwise puts the container's process in a
sub-cgroup ``<scope>/container`` on cgroup v2 (crun(1): "If not specified, it defaults to
container on cgroup v2"; seen on the node VM), where the daemon, kubelet and a native
container's tooling expect it in the scope itself. runc ignores the annotation.

Pure: no I/O.
"""

from __future__ import annotations

from runtime.cgroups.systemd.units import SCOPE, SCOPE_PREFIX, container_id_of, expand_slice, parent_slice_of
from runtime.errors import InvalidArgument

#: the ``prefix`` of ``slice:prefix:name``: the runtime joins it and the name with '-'
SYSTEMD_PREFIX = SCOPE_PREFIX.removesuffix("-")
#: unit properties the runtime sets on the scope it starts (gvariant text, as runc parses it),
#: and no sub-cgroup of crun's in it (see the module docstring)
SYSTEMD_ANNOTATIONS = {"org.systemd.property.CollectMode": "'inactive-or-failed'", "run.oci.systemd.subgroup": ""}


def systemd_cgroups_path(cgroup_path: str) -> str:
    """``slice:cri-shim:<id>`` for the container scope at ``cgroup_path``
    (``/a.slice/a-b.slice/cri-shim-<id>.scope``, as the systemd driver's ``container_path``
    makes it). ValueError when the path is not such a scope directly in the slice its parent
    names (the runtime would start the scope elsewhere than the daemon looks for it)."""
    parent, _, unit = cgroup_path.rstrip("/").rpartition("/")
    container_id = container_id_of(unit)
    if container_id is None or not unit.endswith(SCOPE):
        raise ValueError(f"cgroup {cgroup_path!r} is not a container scope (cri-shim-<id>.scope)")
    try:
        slice_name = parent_slice_of(cgroup_path)
        expanded = expand_slice(slice_name)
    except InvalidArgument as exc:  # not in a slice, or a bad slice name
        raise ValueError(f"cgroup {cgroup_path!r} is not in a systemd slice: {exc}") from None
    if expanded != parent:
        raise ValueError(f"cgroup {cgroup_path!r}: its slice {slice_name} lives at {expanded}, not {parent}")
    return f"{slice_name}:{SYSTEMD_PREFIX}:{container_id}"


def runtime_cgroup(cgroup_path: str, *, systemd: bool) -> tuple[str, dict[str, str]]:
    """``linux.cgroupsPath`` and the annotations config.json gets for the container cgroup
    at ``cgroup_path``: the path itself (cgroupfs drivers), or with ``systemd`` the
    ``slice:prefix:name`` form and :data:`SYSTEMD_ANNOTATIONS`. ValueError as
    :func:`systemd_cgroups_path`."""
    if not systemd:
        return cgroup_path, {}
    return systemd_cgroups_path(cgroup_path), dict(SYSTEMD_ANNOTATIONS)
