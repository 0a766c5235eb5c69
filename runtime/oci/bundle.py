"""An OCI bundle's ``config.json`` (runtime-spec 1.0.2) from a container's launch plan.

The daemon plans a container once (runtime.container.service: identity, capabilities,
seccomp, masked and read-only paths, mounts, devices, cgroup) into a
:class:`~runtime.model.launch.LaunchSpec`; for a pod whose runtime handler names an OCI
runtime this module turns the same plan into the runtime's config, so a container run by
runc carries the protections a native one gets:

- process: args, env, cwd, uid/gid and supplementary groups, the five capability sets,
  noNewPrivileges, rlimits, oomScoreAdj, the AppArmor profile; ``terminal`` for a tty
  (runc makes it; the shim gets its master through ``--console-socket``);
- root: the overlay the shim mounts at ``rootfs.path`` (runtime.shim.ociproc), read-only
  when the container asks;
- in a pod with its own user namespace: that namespace joined first, its uid/gid maps
  (``uidMappings``/``gidMappings``: runc 1.1 wants them even to join one), and the binds'
  sources replaced by the mount points where the shim attached them, prepared as host root
  (idmapped where the plan says "idmap", an option no runtime is given):
  :func:`userns_bind_point`, runtime.container.oci;
- mounts: the plan's, in order; its per-hierarchy cgroup v1 mounts become the one
  ``cgroup`` mount runc builds itself (read-only unless privileged);
- linux: the pod's net/ipc/uts namespaces (and its PID namespace when shared, or a TARGET
  container's) joined by path (a PID namespace's ``/proc/<pid>/ns/pid`` here is replaced by
  the pod shim, just before the create, with its own fd of that namespace taken through the
  process's pidfd: :func:`with_pid_namespace`, runtime.shim.ocipidns); new mount, cgroup
  and (unless joined or the node's) PID namespaces; devices, the device cgroup rules,
  memory/cpu/cpuset limits, the cgroup path (the same one the daemon's driver made), masked
  and read-only paths, seccomp in its JSON form (runtime.oci.seccomp) and
  ``rootfsPropagation: rshared`` when a mount is bidirectional (as containerd sets it);
- hooks: the container's CDI hooks (from the operator's CDI spec files only, never from the
  pod), each under the OCI hook name its ``hookName`` is (CDI spec: the names are the OCI
  runtime spec's, as containerd and CRI-O hand them over), with its args, env and timeout
  (the CDI default when it names none, so no hook can hold a runtime command forever).

Pure but for the two bundle helpers at the end (``read_bundle``, ``write_bundle``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from runtime.cdi.hooks import DEFAULT_TIMEOUT
from runtime.linux.caps import CAP_NAMES
from runtime.linux.mounts import IDMAP
from runtime.model.container import ContainerHook
from runtime.model.launch import Capabilities, DeviceSpec, LaunchSpec, MountSpec, NamespaceSpec, ProcessSpec
from runtime.model.resources import Resources
from runtime.oci.seccomp import oci_seccomp
from runtime.security.devices import DeviceRule
from runtime.security.seccomp.profile import SeccompFilter
from runtime.store.files import atomic_write

OCI_VERSION = "1.0.2"
CONFIG_FILE = "config.json"
#: RLIMIT_* numbers (Linux, asm-generic/resource.h) -> names, as the runtime-spec spells them
#: (explicit: Python's resource module also has aliases, such as RLIMIT_OFILE)
RLIMIT_NAMES = dict(enumerate((
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
    "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME",
)))
_CGROUP_FS = ("cgroup", "cgroup2")
#: one line of a uid or gid map: (container id, host id, length)
IdMap = tuple[int, int, int]
#: the OCI runtime spec's hook names (config.md "POSIX-platform Hooks"), which CDI's hookName takes
OCI_HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")


def _cap_names(caps: tuple[int, ...]) -> list[str]:
    return [CAP_NAMES[c] for c in caps if 0 <= c < len(CAP_NAMES)]


def oci_capabilities(caps: Capabilities | None, last_cap: int) -> dict[str, list[str]]:
    """The five sets; ``None`` (privileged: keep every capability) is every capability up to
    the kernel's ``last_cap`` in all sets but ambient."""
    if caps is None:
        every = list(CAP_NAMES[: last_cap + 1])
        return {"bounding": every, "effective": every, "permitted": every, "inheritable": every, "ambient": []}
    return {
        "bounding": _cap_names(caps.bounding), "effective": _cap_names(caps.effective),
        "permitted": _cap_names(caps.permitted), "inheritable": _cap_names(caps.inheritable),
        "ambient": _cap_names(caps.ambient),
    }


def oci_process(process: ProcessSpec, last_cap: int) -> dict[str, Any]:
    """The runtime-spec ``process`` object (also what ``runc exec --process`` reads).
    ``terminal`` for a tty: the runtime makes it in the container's devpts and sends its
    master to the shim's console socket (runtime.shim.ociproc). ValueError for an rlimit
    Linux does not name."""
    out: dict[str, Any] = {
        "terminal": process.tty,
        "user": {"uid": process.uid, "gid": process.gid},
        "args": list(process.args),
        "env": list(process.env),
        "cwd": process.cwd or "/",
        "capabilities": oci_capabilities(process.capabilities, last_cap),
        "noNewPrivileges": process.no_new_privs,
    }
    if process.additional_gids:
        out["user"]["additionalGids"] = list(process.additional_gids)
    if process.rlimits:
        limits = []
        for r in process.rlimits:
            name = RLIMIT_NAMES.get(r.resource)
            if name is None:
                raise ValueError(f"rlimit resource {r.resource} has no name")
            limits.append({"type": name, "soft": r.soft, "hard": r.hard})
        out["rlimits"] = limits
    if process.oom_score_adj is not None:
        out["oomScoreAdj"] = process.oom_score_adj
    if process.apparmor_profile:
        out["apparmorProfile"] = process.apparmor_profile
    return out


def oci_mounts(mounts: Sequence[MountSpec], *, privileged: bool,
               bind_sources: Mapping[int, str] | None = None) -> list[dict[str, Any]]:
    """The plan's mounts as runtime-spec mounts. Its cgroup hierarchies (a tmpfs at
    /sys/fs/cgroup and one ``cgroup`` mount per v1 hierarchy, or one cgroup2) become one
    ``cgroup`` mount at /sys/fs/cgroup, which runc expands itself; a bind gets ``rbind``
    unless it says ``bind``. ``bind_sources`` (a pod with its own user namespace) replaces
    the source of the bind at each index of ``mounts``: the mount point where the pod shim
    attached it, prepared (idmapped where it says "idmap") by host root; "idmap" is never
    passed on (runc 1.1 has no such option)."""
    out: list[dict[str, Any]] = []
    cgroup_at = -1
    for i, m in enumerate(mounts):
        is_cgroup = m.type in _CGROUP_FS or (m.destination == "/sys/fs/cgroup" and m.type == "tmpfs")
        if is_cgroup and m.destination.startswith("/sys/fs/cgroup"):
            if cgroup_at < 0:
                cgroup_at = len(out)
                options = ["nosuid", "noexec", "nodev", "relatime"] + ([] if privileged else ["ro"])
                out.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                            "options": options})
            continue
        options = [o for o in m.options if o != IDMAP]
        if m.type == "bind" and "bind" not in options and "rbind" not in options:
            options.insert(0, "rbind")
        source = (bind_sources or {}).get(i, m.source) if m.type == "bind" else m.source
        out.append({"destination": m.destination, "type": m.type, "source": source or m.type,
                    "options": options})
    return out


def userns_bind_point(rootfs_path: str, index: int) -> str:
    """Where the pod shim attaches bind ``index`` of a container in a pod with its own user
    namespace: next to its rootfs mount point (runtime.container.oci.make_userns_mount_points)."""
    return os.path.join(os.path.dirname(rootfs_path), f"m{index}")


def oci_namespaces(ns: NamespaceSpec) -> list[dict[str, str]]:
    """Namespaces to join (a path) or make (no path); one not listed is the node's. The
    pod's user namespace comes first: it owns the net/ipc/uts namespaces joined after it, and
    the ones the runtime makes then belong to it."""
    if ns.mnt:
        raise ValueError("joined mount namespaces are not supported through an OCI runtime")
    out: list[dict[str, str]] = [{"type": "user", "path": ns.user}] if ns.user else []
    for kind, path in (("network", ns.net), ("ipc", ns.ipc), ("uts", ns.uts)):
        if path:
            out.append({"type": kind, "path": path})
    if ns.pid:
        out.append({"type": "pid", "path": ns.pid})
    elif ns.new_pid:
        out.append({"type": "pid"})
    out.append({"type": "mount"})
    if ns.cgroup_ns:
        out.append({"type": "cgroup"})
    return out


def oci_hooks(hooks: Sequence[ContainerHook]) -> dict[str, list[dict[str, Any]]]:
    """``hooks``: each hook under its name, in order, with its timeout (the CDI default when
    it has none). ValueError for a name the OCI runtime spec does not have."""
    out: dict[str, list[dict[str, Any]]] = {}
    for hook in hooks:
        if hook.name not in OCI_HOOK_NAMES:
            raise ValueError(f"CDI hook {hook.path}: {hook.name!r} is not an OCI hook name")
        entry: dict[str, Any] = {"path": hook.path, "args": list(hook.args or (hook.path,)),
                                 "timeout": hook.timeout or DEFAULT_TIMEOUT}
        if hook.env:
            entry["env"] = list(hook.env)
        out.setdefault(hook.name, []).append(entry)
    return out


def _id_map(m: IdMap) -> dict[str, int]:
    return {"containerID": m[0], "hostID": m[1], "size": m[2]}


def oci_device(dev: DeviceSpec) -> dict[str, Any]:
    return {"path": dev.path, "type": dev.type, "major": dev.major, "minor": dev.minor,
            "fileMode": dev.file_mode, "uid": dev.uid, "gid": dev.gid}


def oci_device_rule(rule: DeviceRule) -> dict[str, Any]:
    out: dict[str, Any] = {"allow": rule.allow, "access": rule.access}
    if rule.type != "a":
        out["type"] = rule.type
    if rule.major is not None:
        out["major"] = rule.major
    if rule.minor is not None:
        out["minor"] = rule.minor
    return out


def oci_resources(resources: Resources | None, device_rules: Sequence[DeviceRule]) -> dict[str, Any]:
    """``linux.resources``: the device rules (the full list, deny-all first, as the daemon
    applies them) and the memory, CPU and cpuset limits. The rest (swap, huge pages,
    ``unified``) the daemon's cgroup driver wrote to the same cgroup; runc leaves what it is
    not given alone."""
    out: dict[str, Any] = {"devices": [oci_device_rule(r) for r in device_rules]}
    if resources is None:
        return out
    if resources.memory_limit_in_bytes:
        out["memory"] = {"limit": resources.memory_limit_in_bytes}
    cpu: dict[str, Any] = {}
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    return out


def runtime_config(
    spec: LaunchSpec,
    *,
    cgroups_path: str,
    device_rules: Sequence[DeviceRule] = (),
    resources: Resources | None = None,
    seccomp: SeccompFilter | None = None,
    last_cap: int = len(CAP_NAMES) - 1,
    hooks: Sequence[ContainerHook] = (),
    id_maps: tuple[Sequence[IdMap], Sequence[IdMap]] | None = None,
    bind_sources: Mapping[int, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of ``spec`` (see the module docstring). ``cgroups_path``: the
    container's cgroup as runc names it (cgroupfs: the path under each hierarchy's root;
    systemd: "slice:prefix:name", with the unit properties of ``annotations``:
    runtime.oci.cgroups); ``hooks``: the container's CDI hooks, which the runtime
    runs. In a pod with its own user namespace (``spec.namespaces.user``): ``id_maps`` its
    uid and gid maps as (container id, host id, length), which runc 1.1 needs even to join
    it, and ``bind_sources`` (:func:`oci_mounts`). ValueError for what an OCI runtime cannot
    be given (a joined mount namespace, a user namespace without its maps)."""
    if spec.rootfs is None:
        raise ValueError("a container run through an OCI runtime needs a rootfs")
    if spec.namespaces.user and not id_maps:
        raise ValueError("a container in a user namespace needs its id maps")
    linux: dict[str, Any] = {
        "namespaces": oci_namespaces(spec.namespaces),
        "devices": [oci_device(d) for d in spec.devices],
        "resources": oci_resources(resources, device_rules),
        "cgroupsPath": cgroups_path,
        "maskedPaths": list(spec.masked_paths),
        "readonlyPaths": list(spec.readonly_paths),
    }
    if spec.namespaces.user and id_maps:
        linux["uidMappings"] = [_id_map(m) for m in id_maps[0]]
        linux["gidMappings"] = [_id_map(m) for m in id_maps[1]]
    if spec.sysctls:
        linux["sysctl"] = dict(spec.sysctls)
    if seccomp is not None:
        linux["seccomp"] = oci_seccomp(seccomp)
    if any("rshared" in m.options for m in spec.mounts):
        linux["rootfsPropagation"] = "rshared"
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": oci_process(spec.process, last_cap),
        "root": {"path": spec.rootfs.path, "readonly": spec.rootfs.readonly},
        "mounts": oci_mounts(spec.mounts, privileged=spec.privileged, bind_sources=bind_sources),
        "linux": linux,
        "annotations": {**(annotations or {}), "io.kubernetes.cri.sandbox-id": spec.sandbox_id},
    }
    if hooks:
        config["hooks"] = oci_hooks(hooks)
    return config


def with_pid_namespace(config: dict[str, Any], path: str) -> dict[str, Any]:
    """``config`` joining the PID namespace at ``path`` (the shim's
    ``/proc/<shim pid>/fd/<n>``) instead of the one it names; ValueError when it joins none."""
    namespaces = [dict(ns) for ns in config.get("linux", {}).get("namespaces", ())]
    joined = [ns for ns in namespaces if ns.get("type") == "pid" and ns.get("path")]
    if len(joined) != 1:
        raise ValueError("the config joins no PID namespace")
    joined[0]["path"] = path
    return {**config, "linux": {**config["linux"], "namespaces": namespaces}}


def read_bundle(bundle: Path) -> dict[str, Any]:
    """The config.json of ``bundle``."""
    config: dict[str, Any] = json.loads((bundle / CONFIG_FILE).read_bytes())
    return config


def write_bundle(bundle: Path, config: dict[str, Any]) -> None:
    """Make the bundle directory (0700) and write its config.json atomically (0600: it names
    host paths and the container's environment)."""
    bundle.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(bundle, 0o700)
    atomic_write(bundle / CONFIG_FILE, json.dumps(config, indent=1).encode(), 0o600)
