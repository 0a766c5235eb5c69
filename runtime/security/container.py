"""Everything security-related about one container, computed once at CreateContainer.

The container service calls :meth:`ContainerSecurityPlanner.plan` (blocking: run it in a
thread) with the CRI config, the sandbox config and the image's user and files, and gets a
:class:`ContainerSecurityPlan`: the process identity and privileges, the seccomp program,
the mounts, devices, device-cgroup rules, masked and read-only paths. It then builds the
LaunchSpec with :meth:`ContainerSecurityPlan.process` and the plan's fields, and reports
``plan.user.user`` as ContainerStatus.user.

Checks that make CreateContainer fail (InvalidArgument unless said otherwise): a privileged
container in a non-privileged sandbox; an unknown user or group name; run_as_group without
a user; a capability the runtime does not hold; a bad/missing Localhost seccomp profile; an
AppArmor Localhost profile without AppArmor; bad mount or device paths; propagation the
host mount cannot give (FailedPrecondition); SELinux labels on an SELinux host
(Unimplemented).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from runtime.cdi.apply import CdiLaunchEdits, launch_edits
from runtime.cdi.spec import ContainerEdits
from runtime.cgroups.host import CgroupHost
from runtime.cgroups.oomscore import read_oom_score_adj, restrict_oom_score_adj
from runtime.errors import InvalidArgument
from runtime.linux import seccomp as kseccomp
from runtime.model.container import ContainerConfig
from runtime.model.launch import Capabilities, DeviceSpec, MountSpec, ProcessSpec, Rlimit
from runtime.model.sandbox import SandboxConfig
from runtime.security import devices as dev
from runtime.security import mounts as mnt
from runtime.security.capabilities import compute_capabilities, read_current_capabilities
from runtime.security.lsm import LsmState, apparmor_profile, check_selinux, detect_lsm
from runtime.security.seccomp.service import SeccompChoice, SeccompProfiles, kernel_version
from runtime.security.users import FileReader, ResolvedUser, resolve_user


@dataclass(frozen=True, slots=True)
class SecurityHost:
    """Facts about the host the plans depend on, probed once (:func:`probe_security_host`).

    ``capabilities``: what the runtime process holds (it cannot grant more);
    ``own_oom_score_adj``: the daemon's own value (containers never get a lower one).
    """

    capabilities: frozenset[int]
    kernel: tuple[int, int]
    native_arch: str
    lsm: LsmState = dataclasses.field(default_factory=LsmState)
    own_oom_score_adj: int = 0
    cgroups: CgroupHost | None = None


def probe_security_host(cgroups: CgroupHost | None = None) -> SecurityHost:
    """Read the runtime's capabilities, kernel release, LSMs and oom_score_adj. Blocking."""
    return SecurityHost(
        capabilities=read_current_capabilities(),
        kernel=kernel_version(),
        native_arch=kseccomp.native_arch(),
        lsm=detect_lsm(),
        own_oom_score_adj=read_oom_score_adj(),
        cgroups=cgroups,
    )


def security_features(kernel: tuple[int, int]) -> dict[str, bool]:
    """The RuntimeFeatures this module implements, for ``Engine.set_features(**...)``."""
    return {
        "recursive_read_only_mounts": mnt.rro_supported(kernel),
        "supplemental_groups_policy": True,
    }


@dataclass(frozen=True, slots=True)
class ContainerSecurityPlan:
    """What the container service puts into the LaunchSpec (and ContainerStatus)."""

    user: ResolvedUser
    capabilities: Capabilities
    seccomp: SeccompChoice
    no_new_privs: bool
    apparmor_profile: str
    mounts: tuple[MountSpec, ...]
    devices: tuple[DeviceSpec, ...]
    device_rules: tuple[dev.DeviceRule, ...]
    masked_paths: tuple[str, ...]
    readonly_paths: tuple[str, ...]
    readonly_rootfs: bool
    privileged: bool
    oom_score_adj: int | None = None
    rlimits: tuple[Rlimit, ...] = ()
    warnings: tuple[str, ...] = ()

    def process(
        self,
        args: tuple[str, ...],
        env: tuple[str, ...],
        cwd: str = "/",
        *,
        tty: bool = False,
        stdin: bool = False,
        stdin_once: bool = False,
        main: bool = True,
    ) -> ProcessSpec:
        """The ProcessSpec of the container's process (``main``) or of an exec in it.

        ``env`` is "KEY=value" strings; HOME is added from the user's passwd entry when
        absent (runc's rule). Exec processes get the same identity, capabilities, seccomp
        program, no_new_privs and AppArmor profile, but not oom_score_adj (they inherit the
        container's) — as runc exec does.
        """
        if not any(e.startswith("HOME=") for e in env):
            env = (*env, f"HOME={self.user.home}")
        return ProcessSpec(
            args=args,
            env=env,
            cwd=cwd or "/",
            uid=self.user.uid,
            gid=self.user.gid,
            additional_gids=self.user.additional_gids,
            capabilities=self.capabilities,
            no_new_privs=self.no_new_privs,
            seccomp_bpf=self.seccomp.bpf,
            oom_score_adj=self.oom_score_adj if main else None,
            rlimits=self.rlimits if main else (),
            tty=tty,
            stdin=stdin,
            stdin_once=stdin_once,
            apparmor_profile=self.apparmor_profile,
        )


class ContainerSecurityPlanner:
    """Builds :class:`ContainerSecurityPlan`s. Construction does no I/O; :meth:`plan` blocks."""

    def __init__(
        self,
        host: SecurityHost,
        seccomp: SeccompProfiles | None = None,
        *,
        create_missing_host_paths: bool = True,
        default_rlimits: tuple[Rlimit, ...] = (),
    ) -> None:
        self.host = host
        self.seccomp = seccomp or SeccompProfiles(native_arch=host.native_arch, kernel=host.kernel)
        self.create_missing_host_paths = create_missing_host_paths
        self.default_rlimits = default_rlimits

    def plan(
        self,
        config: ContainerConfig,
        sandbox: SandboxConfig,
        *,
        image_user: str,
        read_image_file: FileReader,
        shm_path: str = "",
        sandbox_mounts: tuple[MountSpec, ...] = (),
        mountinfo: str | None = None,
        cdi: ContainerEdits | None = None,
    ) -> ContainerSecurityPlan:
        """Compute the plan for ``config`` in ``sandbox``.

        ``image_user`` is the image config's User; ``read_image_file`` reads a file of the
        image rootfs (``LayeredRootfs(lowerdirs).read_file``); ``shm_path`` is the pod's
        /dev/shm; ``sandbox_mounts`` are the pod's files (hosts, resolv.conf, hostname) as
        bind MountSpecs, which CRI mounts at the same destination override; ``cdi`` the
        resolved edits of the container's CDI devices (``runtime.cdi``): their device nodes,
        mounts and groups are added last, so they replace CRI ones at the same path. Raises
        the errors listed in the module docstring; creates missing host paths of CRI mounts.
        """
        sec = config.security
        privileged = sec.privileged
        if privileged and not sandbox.security.privileged:
            raise InvalidArgument("a privileged container needs a privileged sandbox (pod)")
        userns = sandbox.user_namespace
        if privileged and userns is not None:
            raise InvalidArgument("a container in a pod with its own user namespace cannot be privileged")
        check_selinux(sec.selinux, state=self.host.lsm)
        user = resolve_user(sec, image_user, read_image_file)
        extra = launch_edits(cdi, uid=user.uid, gid=user.gid) if cdi is not None else CdiLaunchEdits()
        if extra.additional_gids:
            gids = tuple(dict.fromkeys((*user.additional_gids, *extra.additional_gids)))
            user = dataclasses.replace(user, additional_gids=gids)
        caps = compute_capabilities(sec.capabilities, privileged=privileged, uid=user.uid,
                                    available=self.host.capabilities)
        warnings = [f"unknown capability {name!r} ignored" for name in caps.ignored]
        choice = self.seccomp.choose(sec.seccomp, privileged=privileged, bounding_caps=caps.bounding_names)
        apparmor = apparmor_profile(sec.apparmor, privileged=privileged, state=self.host.lsm)

        cri_mounts = mnt.host_mounts(config.mounts, kernel=self.host.kernel,
                                     create_missing=self.create_missing_host_paths, mountinfo=mountinfo,
                                     userns=userns)
        defaults = mnt.default_mounts(privileged=privileged, shm_path=shm_path, host_ipc=sandbox.host_ipc,
                                      cgroups=self.host.cgroups)
        mounts = mnt.merge_mounts(mnt.merge_mounts(mnt.merge_mounts(defaults, sandbox_mounts), cri_mounts),
                                  extra.mounts)
        masked, readonly = mnt.masked_and_readonly_paths(sec.masked_paths, sec.readonly_paths, privileged=privileged)

        cri_devices, cri_rules = dev.resolve_devices(config.devices)
        base_devices = dev.host_devices() if privileged else dev.standard_devices()
        by_path = {d.path: d for d in base_devices}
        by_path.update({d.path: d for d in cri_devices})
        by_path.update({d.path: d for d in extra.devices})
        rules = dev.device_rules((*cri_rules, *extra.device_rules), privileged=privileged)

        oom: int | None = None
        if config.resources is not None:
            oom = restrict_oom_score_adj(config.resources.oom_score_adj, self.host.own_oom_score_adj)
        return ContainerSecurityPlan(
            user=user,
            capabilities=caps.capabilities,
            seccomp=choice,
            no_new_privs=sec.no_new_privs,
            apparmor_profile=apparmor,
            mounts=mounts,
            devices=tuple(by_path.values()),
            device_rules=rules,
            masked_paths=masked,
            readonly_paths=readonly,
            readonly_rootfs=sec.readonly_rootfs,
            privileged=privileged,
            oom_score_adj=oom,
            rlimits=self.default_rlimits,
            warnings=tuple(warnings),
        )

