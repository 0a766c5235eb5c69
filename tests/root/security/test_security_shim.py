"""Security mechanisms on real containers: plans from ContainerSecurityPlanner, run by the pod
shim on a busybox rootfs; each test looks at what the container process can and cannot do."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runtime.cgroups.host import probe_cgroups
from runtime.hostinfo import CgroupMode, detect_cgroup_mode
from runtime.linux import libc
from runtime.model.container import (
    CapabilityChange,
    ContainerConfig,
    ContainerMetadata,
    ContainerSecurity,
    Device,
    ImageSpec,
    Mount,
    MountPropagation,
)
from runtime.model.launch import LaunchSpec, NamespaceSpec, RootfsSpec
from runtime.model.resources import Resources
from runtime.model.sandbox import ProfileType, SandboxConfig, SandboxMetadata, SandboxSecurity, SecurityProfile
from runtime.security.container import ContainerSecurityPlan, ContainerSecurityPlanner, probe_security_host
from runtime.security.devices import apply_device_rules
from runtime.security.rootfs import LayeredRootfs
from runtime.shim.manager import ShimManager
from runtime.shim.protocol import ExitEvent, NamespacesRequest, ProcPhase, Subscribed
from tests.support.names import unique
from tests.support.rootfs import busybox_rootfs
from tests.support.shims import running_shim

pytestmark = [pytest.mark.root, pytest.mark.timeout(90)]

SID = "5" * 64
EXTRA_APPLETS = ("unshare", "chown", "ping", "mknod", "umount", "grep", "sed", "cut", "setpriv")
POD = SandboxConfig(SandboxMetadata("sec", "uid-sec", "default"))
PRIV_POD = SandboxConfig(SandboxMetadata("sec", "uid-priv", "default"), security=SandboxSecurity(privileged=True))
RUNTIME_DEFAULT = SecurityProfile(ProfileType.RUNTIME_DEFAULT)


class Pod:
    """A pod shim with pinned net/ipc/uts namespaces and a busybox image dir."""

    def __init__(self, mgr: ShimManager, base: Path, pins: dict[str, str]) -> None:
        self.mgr = mgr
        self.base = base
        self.pins = pins
        self.lower = base / "image"
        self.image = LayeredRootfs([self.lower])
        host = probe_security_host(_cgroup_host())
        self.planner = ContainerSecurityPlanner(host)
        self.client = mgr.client(SID)
        self.n = 0

    def plan(self, *, image_user: str = "", sandbox: SandboxConfig = POD, mounts: tuple[Mount, ...] = (),
             devices: tuple[Device, ...] = (), resources: Resources | None = None,
             **security: Any) -> ContainerSecurityPlan:
        config = ContainerConfig(ContainerMetadata("c"), ImageSpec("busybox"),
                                 security=ContainerSecurity(**security), mounts=mounts, devices=devices,
                                 resources=resources)
        return self.planner.plan(config, sandbox, image_user=image_user, read_image_file=self.image.read_file)

    def spec(self, plan: ContainerSecurityPlan, script: str, cgroup_procs: tuple[str, ...] = (),
             host_ipc: bool = False) -> LaunchSpec:
        self.n += 1
        cid = f"{self.n:x}".rjust(64, "c")
        d = self.base / f"c{self.n}"
        for sub in ("upper", "work", "rootfs", "exit"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        return LaunchSpec(
            container_id=cid, sandbox_id=SID,
            process=plan.process(("sh", "-c", script), ("PATH=/bin",)),
            namespaces=NamespaceSpec(net=self.pins["net"], ipc="" if host_ipc else self.pins["ipc"],
                                     uts=self.pins["uts"]),
            rootfs=RootfsSpec(str(d / "rootfs"), (str(self.lower),), str(d / "upper"), str(d / "work"),
                              readonly=plan.readonly_rootfs),
            mounts=plan.mounts, devices=plan.devices, masked_paths=plan.masked_paths,
            readonly_paths=plan.readonly_paths, cgroup_procs=cgroup_procs,
            log_path=str(d / "log"), exit_dir=str(d / "exit"), privileged=plan.privileged,
        )

    async def run(self, plan: ContainerSecurityPlan, script: str, cgroup_procs: tuple[str, ...] = (),
                  host_ipc: bool = False) -> str:
        """Run ``script`` to its end; its stdout+stderr text."""
        spec = self.spec(plan, script, cgroup_procs, host_ipc)
        events = self.client.subscribe()
        try:
            assert await anext(events) == Subscribed()
            await self.client.create(spec)
            await self.client.start(spec.container_id)
            while True:
                ev = await asyncio.wait_for(anext(events), 20)
                if isinstance(ev, ExitEvent) and ev.container_id == spec.container_id:
                    break
        finally:
            await events.aclose()
        await self.client.delete(spec.container_id)
        return self.output(spec)

    @staticmethod
    def output(spec: LaunchSpec) -> str:
        lines = Path(spec.log_path).read_text().splitlines() if os.path.exists(spec.log_path) else []
        return "\n".join(line.split(" ", 3)[3] if line.count(" ") >= 3 else "" for line in lines)

    async def start(self, plan: ContainerSecurityPlan, script: str) -> LaunchSpec:
        spec = self.spec(plan, script)
        await self.client.create(spec)
        await self.client.start(spec.container_id)
        return spec

    async def exec(self, spec: LaunchSpec, script: str, plan: ContainerSecurityPlan) -> tuple[int, str]:
        proc = plan.process(("sh", "-c", script), ("PATH=/bin",), main=False)
        r = await self.client.exec_sync(spec.container_id, proc, timeout=10)
        return r.exit_code, (r.stdout + r.stderr).decode()

    async def kill(self, spec: LaunchSpec) -> None:
        with contextlib.suppress(Exception):
            await self.client.kill(spec.container_id, signal.SIGKILL)
        for _ in range(100):
            state = await self.client.state(spec.container_id)
            if state.state is not ProcPhase.RUNNING:
                break
            await asyncio.sleep(0.05)
        await self.client.delete(spec.container_id)


def _host_has_what_gets_masked() -> bool:
    return bool(Path("/proc/timer_list").read_text() and os.listdir("/sys/firmware") and Path("/proc/keys").read_text())


def _own_oom_score_adj() -> int:
    return int(Path("/proc/self/oom_score_adj").read_text())


def _a_loop_device() -> str:
    return next(f"/dev/loop{i}" for i in range(8) if os.path.exists(f"/dev/loop{i}"))


def _cgroup_host() -> Any:
    mode = detect_cgroup_mode(Path("/sys/fs/cgroup"))
    return probe_cgroups(Path("/sys/fs/cgroup"), mode)


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    base = Path(tempfile.mkdtemp(prefix="sect", dir="/tmp"))
    lower = busybox_rootfs(base / "image")
    for applet in EXTRA_APPLETS:
        with contextlib.suppress(FileExistsError):
            os.symlink("busybox", lower / "bin" / applet)
    for d in ("mnt", "data", "vol", "home/app"):
        (lower / d).mkdir(parents=True, exist_ok=True)
    os.chown(lower / "home/app", 1000, 1000)
    pins_dir = base / "pins"
    pins_dir.mkdir()
    try:
        async with running_shim(base / "state", SID, pins_dir) as mgr:
            ns = await mgr.client(SID).create_namespaces(
                NamespacesRequest(str(pins_dir), ("net", "ipc", "uts"), hostname="secpod"))
            yield Pod(mgr, base, ns.pins.pins())
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


async def test_runtime_default_seccomp_denies_with_eperm(pod: Pod) -> None:
    confined = pod.plan(seccomp=RUNTIME_DEFAULT)
    out = await pod.run(confined, "grep Seccomp: /proc/self/status; unshare -U true; echo rc=$?")
    assert "Seccomp:\t2" in out and "Operation not permitted" in out and "rc=1" in out, out
    # Same request without the filter: creating a user namespace needs no capability.
    out = await pod.run(pod.plan(), "grep Seccomp: /proc/self/status; unshare -U true; echo rc=$?")
    assert "Seccomp:\t0" in out and "rc=0" in out, out
    # A caps-conditional rule: with CAP_SYS_ADMIN granted, RuntimeDefault allows unshare.
    admin = pod.plan(seccomp=RUNTIME_DEFAULT, capabilities=CapabilityChange(add=("SYS_ADMIN",)))
    out = await pod.run(admin, "unshare -m true; echo rc=$?")
    assert "rc=0" in out, out


async def test_localhost_profile(pod: Pod) -> None:
    profile = pod.base / "deny-mkdir.json"
    profile.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mkdir", "mkdirat"], '
                       '"action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}')
    plan = pod.plan(seccomp=SecurityProfile(ProfileType.LOCALHOST, str(profile)))
    out = await pod.run(plan, "mkdir /tmp/x; echo rc=$?; touch /tmp/y && echo touched")
    assert "Permission denied" in out and "rc=1" in out and "touched" in out, out


async def test_dropped_capabilities_deny_their_operations(pod: Pod) -> None:
    script = "touch /tmp/f; chown 1000 /tmp/f; echo chown=$?; ping -c1 -W1 127.0.0.1 >/dev/null 2>&1; echo ping=$?"
    out = await pod.run(pod.plan(), script)
    assert "chown=0" in out and "ping=0" in out, out
    out = await pod.run(pod.plan(capabilities=CapabilityChange(drop=("CHOWN", "NET_RAW"))), script)
    assert "chown=1" in out and "ping=1" in out, out


async def test_non_root_user_identity_and_bind_service(pod: Pod) -> None:
    plan = pod.plan(image_user="app", supplemental_groups=(5000,))
    out = await pod.run(plan, "id; grep -E 'Cap(Eff|Prm)' /proc/self/status; "
                                    "nc -l -p 80 & pid=$!; sleep 0.3; kill $pid 2>/dev/null && echo bound80")
    assert "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra),5000" in out, out
    assert "CapEff:\t0000000000000000" in out and "bound80" not in out, out
    ambient = pod.plan(image_user="app", capabilities=CapabilityChange(drop=("ALL",),
                                                                     add_ambient=("NET_BIND_SERVICE",)))
    out = await pod.run(ambient, "grep CapEff /proc/self/status; "
                                       "nc -l -p 80 & pid=$!; sleep 0.3; kill $pid && echo bound80")
    assert "CapEff:\t0000000000000400" in out and "bound80" in out, out
    strict = pod.plan(run_as_user=1000, run_as_group=3000, supplemental_groups_policy="strict")
    out = await pod.run(strict, "id -u; id -g; id -G")
    assert out.split() == ["1000", "3000", "3000"], out


async def test_masked_readonly_and_no_new_privs(pod: Pod) -> None:
    plan = pod.plan(no_new_privs=True)
    assert _host_has_what_gets_masked()
    out = await pod.run(plan, "wc -c < /proc/timer_list; ls /sys/firmware | wc -l; cat /proc/keys | wc -c; "
                                    "echo 1 > /proc/sys/net/ipv4/ip_forward; echo sys=$?; "
                                    "grep NoNewPrivs /proc/self/status; touch /sys/x 2>&1; echo sysfs=$?")
    lines = out.splitlines()
    assert lines[:3] == ["0", "0", "0"], out
    assert "Read-only file system" in out and "sys=1" in out and "sysfs=1" in out, out
    assert "NoNewPrivs:\t1" in out
    unmasked = pod.plan(masked_paths=("/proc/keys",), readonly_paths=("/proc/bus",))  # kubelet's lists win
    out = await pod.run(unmasked, "cat /proc/timer_list | wc -c; ls /sys/firmware | wc -l; "
                                        "echo 0 > /proc/sys/net/ipv4/ip_forward")
    # /proc/sys is not read-only now: the write reaches the kernel, which wants CAP_NET_ADMIN.
    assert int(out.splitlines()[0]) > 0 and int(out.splitlines()[1]) > 0, out
    assert "Operation not permitted" in out and "Read-only" not in out, out


async def test_readonly_rootfs_oom_score_and_cgroup_mount(pod: Pod) -> None:
    own = _own_oom_score_adj()
    plan = pod.plan(readonly_rootfs=True, resources=Resources(oom_score_adj=max(own, 0) + 7))
    out = await pod.run(plan, "touch /x; echo root=$?; touch /tmp/ok && echo tmp-is-rootfs; "
                                    "cat /proc/self/oom_score_adj; ls /sys/fs/cgroup | wc -l; "
                                    "mkdir /sys/fs/cgroup/memory/x; echo cg=$?")
    assert "root=1" in out and "tmp-is-rootfs" not in out, out
    assert str(max(own, 0) + 7) in out.splitlines(), out
    assert "cg=1" in out, out


@pytest.fixture
def host_dir() -> Any:
    """A host directory with a tmpfs mounted on it; the tmpfs is made shared."""
    made: list[str] = []

    def make(shared: bool = True) -> Path:
        path = Path(tempfile.mkdtemp(prefix="secm", dir="/tmp"))
        libc.mount("tmpfs", str(path), "tmpfs", 0, "size=1m")
        made.append(str(path))
        if shared:
            libc.mount(None, str(path), None, libc.MS_SHARED)
        return path

    yield make
    for path in reversed(made):
        with contextlib.suppress(OSError):
            libc.umount2(path, libc.MNT_DETACH)
        with contextlib.suppress(OSError):
            os.rmdir(path)


async def test_recursive_read_only_mount(pod: Pod, host_dir: Any) -> None:
    src = host_dir(shared=False)
    (src / "sub").mkdir()
    libc.mount("tmpfs", str(src / "sub"), "tmpfs", 0, "size=1m")
    try:
        script = "touch /data/a; echo top=$?; touch /data/sub/b; echo sub=$?"
        out = await pod.run(pod.plan(mounts=(Mount("/data", str(src), readonly=True),)), script)
        assert "top=1" in out and "sub=0" in out, out  # plain ro: submounts stay writable
        rro = Mount("/data", str(src), readonly=True, recursive_read_only=True)
        out = await pod.run(pod.plan(mounts=(rro,)), script)
        assert "top=1" in out and "sub=1" in out, out
    finally:
        libc.umount2(str(src / "sub"), libc.MNT_DETACH)


async def test_rslave_sees_host_mounts_made_after_start(pod: Pod, host_dir: Any) -> None:
    src = host_dir()
    plan = pod.plan(mounts=(Mount("/vol", str(src), propagation=MountPropagation.HOST_TO_CONTAINER),
                            Mount("/data", str(src))))
    spec = await pod.start(plan, "while true; do sleep 1; done")
    try:
        (src / "late").mkdir()
        libc.mount("tmpfs", str(src / "late"), "tmpfs", 0, "size=1m")
        (src / "late" / "hello").write_text("from host\n")
        _, out = await pod.exec(spec, "cat /vol/late/hello; ls /data/late | wc -l", plan)
        assert out.splitlines() == ["from host", "0"], out  # rslave sees it, rprivate does not
    finally:
        with contextlib.suppress(OSError):
            libc.umount2(str(src / "late"), libc.MNT_DETACH)
        await pod.kill(spec)


async def test_rshared_propagates_back_and_private_sources_are_refused(pod: Pod, host_dir: Any) -> None:
    from runtime.errors import FailedPrecondition

    private = host_dir(shared=False)
    with pytest.raises(FailedPrecondition, match="not shared"):
        pod.plan(mounts=(Mount("/vol", str(private), propagation=MountPropagation.BIDIRECTIONAL),))
    src = host_dir()
    (src / "inner").mkdir()
    plan = pod.plan(sandbox=PRIV_POD, privileged=True,
                    mounts=(Mount("/vol", str(src), propagation=MountPropagation.BIDIRECTIONAL),))
    try:
        out = await pod.run(plan, "mount -t tmpfs -o size=1m none /vol/inner && echo ok > /vol/inner/f "
                                        "&& echo mounted")
        assert "mounted" in out, out
        assert (src / "inner" / "f").read_text() == "ok\n"
    finally:
        with contextlib.suppress(OSError):
            libc.umount2(str(src / "inner"), libc.MNT_DETACH)


async def test_privileged_container(pod: Pod) -> None:
    plan = pod.plan(sandbox=PRIV_POD, privileged=True, seccomp=RUNTIME_DEFAULT)
    held = pod.planner.host.capabilities
    mask = sum(1 << c for c in held)
    out = await pod.run(plan, "grep -E 'CapEff|Seccomp:' /proc/self/status; "
                                    "mount -t tmpfs none /mnt && echo mounted; ls /dev | wc -l; "
                                    "touch /sys/kernel/x 2>&1 | grep -c 'Read-only'")
    assert f"CapEff:\t{mask:016x}" in out and "Seccomp:\t0" in out and "mounted" in out, out
    devs = int(out.splitlines()[3])
    assert devs >= len(os.listdir("/dev")) - 10, out
    assert out.splitlines()[-1] == "0", out  # /sys is not mounted read-only


async def test_device_cgroup_denies_unlisted_devices(pod: Pod) -> None:
    host = pod.planner.host.cgroups
    if host is None or host.mode is CgroupMode.V2 or "devices" not in host.v1_mounts:
        pytest.skip("needs the v1 devices controller")
    name = unique("sec")
    cg = f"/{name}"
    directory = host.v1_mounts["devices"] / name
    directory.mkdir()
    try:
        # A host block device outside the default list, allowed for reading only.
        loop = _a_loop_device()
        plan = pod.plan(devices=(Device("/dev/myloop", loop, "r"),))
        assert apply_device_rules(host, cg, plan.device_rules) == "v1"
        other = int(loop.removeprefix("/dev/loop")) ^ 1  # a loop device the rules do not list
        out = await pod.run(plan, f"mknod /tmp/blk b 7 {other} && echo made; "
                                  "dd if=/tmp/blk of=/dev/null count=1 2>/dev/null; echo other=$?; "
                                  "dd if=/dev/myloop of=/dev/null count=1 2>/dev/null; echo read=$?; "
                                  "(echo x > /dev/myloop) 2>/dev/null; echo write=$?; "
                                  "echo y > /dev/null; echo null=$?",
                                  cgroup_procs=(str(directory / "cgroup.procs"),))
        assert "made" in out and "other=1" in out and "read=0" in out and "write=1" in out and "null=0" in out, out
    finally:
        for _ in range(50):
            try:
                directory.rmdir()
                break
            except OSError:
                await asyncio.sleep(0.1)


async def test_host_ipc_pod_sees_the_hosts_shm_and_mqueue(pod: Pod) -> None:
    from runtime.model.sandbox import NamespaceMode, NamespaceOptions

    host_ipc_pod = SandboxConfig(SandboxMetadata("sec", "uid-ipc", "default"),
                                 security=SandboxSecurity(namespaces=NamespaceOptions(ipc=NamespaceMode.NODE)))
    marker = unique("shm")
    _write_host_shm(marker)
    try:
        out = await pod.run(pod.plan(sandbox=host_ipc_pod), f"ls /dev/shm | grep -c {marker}; "
                                                              "grep -c ' /dev/mqueue ' /proc/self/mountinfo",
                            host_ipc=True)
        assert out.split() == ["1", "1"], out
        out = await pod.run(pod.plan(), f"ls /dev/shm | grep -c {marker}")
        assert out.split() == ["0"], out  # the pod's own IPC namespace and shm
    finally:
        _remove_host_shm(marker)


def _write_host_shm(name: str) -> None:
    Path("/dev/shm", name).write_text("x")


def _remove_host_shm(name: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(os.path.join("/dev/shm", name))


async def test_exec_gets_the_containers_confinement(pod: Pod) -> None:
    plan = pod.plan(image_user="app", seccomp=RUNTIME_DEFAULT, no_new_privs=True,
                    capabilities=CapabilityChange(drop=("ALL",), add_ambient=("NET_BIND_SERVICE",)))
    spec = await pod.start(plan, "while true; do sleep 1; done")
    try:
        _, out = await pod.exec(spec, "id -u; grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status; "
                                      "unshare -U true; echo rc=$?", plan)
        assert out.splitlines()[0] == "1000", out
        assert "Seccomp:\t2" in out and "NoNewPrivs:\t1" in out and "CapEff:\t0000000000000400" in out, out
        assert "rc=1" in out, out
    finally:
        await pod.kill(spec)
