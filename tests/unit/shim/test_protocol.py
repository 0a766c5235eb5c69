"""The typed shim protocol (runtime.shim.protocol): every request, reply, event and frame
survives the trip through a JSON line, and the lines are those of protocol 1, so a daemon of
this version talks to a pod shim that was forked before the upgrade (and the other way)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runtime import errors
from runtime.model.launch import (
    Capabilities,
    CriuExternal,
    ExitStatus,
    LaunchSpec,
    MountSpec,
    NamespaceSpec,
    ProcessSpec,
    RestorePlan,
    Rlimit,
    RootfsSpec,
)
from runtime.model.network import (
    NetworkMode,
    PodInterfacePlan,
    PodInterfaceResult,
    PodNetnsPlan,
    PodNetnsResult,
)
from runtime.model.sandbox import PinnedNamespaces
from runtime.shim import protocol as p
from runtime.shim import wire
from runtime.store.codec import to_plain

pytestmark = pytest.mark.timeout(30)

PROCESS = ProcessSpec(
    args=("sh", "-c", "echo hi"), env=("PATH=/bin",), cwd="/tmp", uid=1000, gid=1000, additional_gids=(5, 6),
    capabilities=Capabilities(bounding=("CAP_CHOWN",), effective=("CAP_CHOWN",)), no_new_privs=True,
    seccomp_bpf=b"\x06\x00\x00\x00\xff\xff\xff\x7f", oom_score_adj=500, rlimits=(Rlimit("RLIMIT_NOFILE", 1024, 2048),),
    tty=True, stdin=True, stdin_once=True, apparmor_profile="cri-shim-default",
)
NAMESPACES = NamespaceSpec(net="/pins/net", ipc="/pins/ipc", uts="/pins/uts", pid="", new_pid=True, pid_of="")
SPEC = LaunchSpec(
    container_id="c" * 64, sandbox_id="s" * 64, process=PROCESS, namespaces=NAMESPACES,
    rootfs=RootfsSpec("/r", ("/l1", "/l2"), "/u", "/w", readonly=True),
    mounts=(MountSpec("/proc", "proc", "proc", ("nosuid",)),), masked_paths=("/proc/kcore",),
    cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",), log_path="/log", exit_dir="/exit", sysctls={"a.b": "1"},
)
EXIT = ExitStatus(137, signal=9, started_at_ns=1, finished_at_ns=2, oom_killed=True, pid=42, reason="OOMKilled",
                  message="killed")
PLAN = PodNetnsPlan("s" * 64, NetworkMode.BUILTIN, True, PodInterfacePlan(
    "s" * 64, "eth0", "veth1234", "10.88.0.2", 16, "10.88.0.1", "02:00:00:00:00:01"))

#: one instance of every request, each field away from its default
REQUESTS: list[p.ShimRequest[Any]] = [
    p.Ping(),
    p.CreateNamespaces(p.NamespacesRequest(
        "/pins", ("net", "ipc", "uts"), hostname="pod", sysctls={"/proc/sys/net/ipv4/ip_forward": "1"},
        network=PLAN, userns=p.IdMaps(((0, 100000, 65536),), ((0, 100000, 65536),)))),
    p.PidHolder("/pins/user"),
    p.Precreate("c" * 64, NAMESPACES, ("/cg/cgroup.procs",), stdin=True, tty=True),
    p.Create(SPEC),
    p.Start("c" * 64),
    p.Kill("c" * 64, 15),
    p.Wait("c" * 64, 2.5),
    p.State("c" * 64),
    p.ListProcs(),
    p.ReopenLog("c" * 64),
    p.Delete("c" * 64),
    p.ExecSync("c" * 64, PROCESS, 3.0),
    p.Shutdown(),
    p.Subscribe(),
    p.Attach("c" * 64, stdin=True, stdout=False, stderr=True),
    p.ExecSession("c" * 64, PROCESS, stdin=True, stdout=True, stderr=False),
    p.PortConnect("/pins/net", 8080, "::1", 2.0),
    p.NetlinkSocket("/pins/net"),
    p.Adopt("s" * 64, "/state/shims/ssss.sock", 8, "0123456789abcdef"),
    p.Restore("c" * 64, RestorePlan(
        "/usr/sbin/criu", "/run/c/checkpoint/checkpoint", "/run/c/checkpoint",
        (CriuExternal("/etc/hosts", "/run/pods/p/hosts"),), ("file[1a:5]",), ("/dev/null", "pipe:[11]", "pipe:[12]"),
        "extRootNetNS", (CriuExternal("uts", "/pins/uts"),), 90.0)),
]

#: one reply of every kind
REPLIES: list[tuple[p.ShimRequest[Any], Any]] = [
    (p.Ping(), p.ShimInfo(7, "s" * 64, p.SHIM_PROTOCOL)),
    (REQUESTS[1], p.NamespacesResult(PinnedNamespaces(net="/pins/net", uts="/pins/uts", user="/pins/user"),
                                     PodNetnsResult("s" * 64, True, PodInterfaceResult("eth0", "veth1234", 3,
                                                                                        "02:00:00:00:00:01"), 0.25))),
    (p.PidHolder(), p.Pid(8)),
    (p.Create(SPEC), p.ProcState("c" * 64, 9, p.ProcPhase.CREATED, 10, 0, None)),
    (p.Wait("c" * 64), p.ProcState("c" * 64, 9, p.ProcPhase.EXITED, 10, 11, EXIT)),
    (p.ListProcs(), (p.ProcState("a" * 64, 1, p.ProcPhase.RUNNING, 2, 3), p.ProcState("b" * 64))),
    (p.Delete("c"), p.Ack()),
    (p.ExecSync("c", PROCESS), p.ExecSyncResult(7, b"out\x00\xff", b"err")),
    (p.PortConnect("", 80), p.Connected()),
    (p.NetlinkSocket("/pins/net"), p.Connected()),
    (p.Adopt("s" * 64, "/s.sock", 8), p.ShimInfo(7, "s" * 64, p.SHIM_PROTOCOL)),
]


def through_the_wire(obj: dict[str, Any]) -> dict[str, Any]:
    line = wire.encode(obj)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    decoded: dict[str, Any] = json.loads(line)
    return decoded


def test_every_request_type_has_a_sample_here() -> None:
    assert {type(r) for r in REQUESTS} == set(p.REQUESTS.values())


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda r: r.OP)
def test_each_request_round_trips(request_: p.ShimRequest[Any]) -> None:
    line = through_the_wire(p.request_line(request_, 5))
    assert (line["id"], line["op"]) == (5, request_.OP)
    assert p.decode_request(line) == request_


@pytest.mark.parametrize(("request_", "reply"), REPLIES, ids=lambda x: type(x).__name__)
def test_each_reply_round_trips(request_: p.ShimRequest[Any], reply: Any) -> None:
    assert p.decode_reply(request_, through_the_wire({"result": to_plain(reply)})["result"]) == reply


def test_events_round_trip_and_unknown_ones_are_skipped() -> None:
    for event in (p.Subscribed(), p.ExitEvent("c" * 64, EXIT)):
        assert p.decode_event(through_the_wire(p.event_line(event))) == event
    assert p.decode_event({"event": "oom", "container_id": "c"}) is None  # a newer shim's


def test_frames_round_trip_and_a_bad_one_is_invalid() -> None:
    for frame in (p.ExitFrame(3), p.ResizeFrame(80, 24), p.ErrorFrame("gone")):
        assert p.decode_frame(type(frame), p.frame_payload(frame)) == frame
    with pytest.raises(errors.InvalidArgument, match="ResizeFrame"):
        p.decode_frame(p.ResizeFrame, b'{"width": 80}')
    with pytest.raises(errors.InvalidArgument):
        p.decode_frame(p.ExitFrame, b"not json")


def test_an_unknown_or_malformed_request_is_invalid_argument() -> None:
    with pytest.raises(errors.InvalidArgument, match="unknown shim operation 'teleport'"):
        p.decode_request({"id": 1, "op": "teleport"})
    with pytest.raises(errors.InvalidArgument, match="unknown shim operation None"):
        p.decode_request({"id": 1})
    with pytest.raises(errors.InvalidArgument, match="malformed shim request start"):
        p.decode_request({"id": 1, "op": "start"})  # no container_id
    with pytest.raises(errors.InvalidArgument, match="malformed shim request create"):
        p.decode_request({"id": 1, "op": "create", "spec": ["not", "a", "spec"]})


# -- protocol 1: the lines as the dict-based daemon and shim wrote them -------------------------

#: (request, the line a protocol-1 daemon sent for it)
V1_REQUESTS: list[tuple[p.ShimRequest[Any], dict[str, Any]]] = [
    (p.Ping(), {"op": "ping"}),
    (p.Precreate("c", NAMESPACES, ("/cg",), True, False),
     {"op": "precreate", "container_id": "c", "namespaces": to_plain(NAMESPACES), "cgroup_procs": ["/cg"],
      "stdin": True, "tty": False}),
    (p.Start("c"), {"op": "start", "container_id": "c"}),
    (p.Kill("c", 9), {"op": "kill", "container_id": "c", "signal": 9}),
    (p.Wait("c", 10), {"op": "wait", "container_id": "c", "timeout": 10}),
    (p.State("c"), {"op": "state", "container_id": "c"}),
    (p.ListProcs(), {"op": "list"}),
    (p.ReopenLog("c"), {"op": "reopen_log", "container_id": "c"}),
    (p.Delete("c"), {"op": "delete", "container_id": "c"}),
    (p.ExecSync("c", PROCESS, 10), {"op": "exec_sync", "container_id": "c", "process": to_plain(PROCESS),
                                    "timeout": 10}),
    (p.Shutdown(), {"op": "shutdown"}),
    (p.Subscribe(), {"op": "subscribe"}),
    (p.Attach("c", False, True, True), {"op": "attach", "container_id": "c", "stdin": False, "stdout": True,
                                        "stderr": True}),
    (p.ExecSession("c", PROCESS, True, True, False),
     {"op": "exec_session", "container_id": "c", "process": to_plain(PROCESS), "stdin": True, "stdout": True,
      "stderr": False}),
    (p.PortConnect("/run/netns/x", 8080, "127.0.0.1", 5),
     {"op": "port_connect", "netns": "/run/netns/x", "port": 8080, "host": "127.0.0.1", "timeout": 5}),
]


@pytest.mark.parametrize(("request_", "v1"), V1_REQUESTS, ids=lambda x: getattr(x, "OP", ""))
def test_requests_are_the_lines_of_protocol_1(request_: p.ShimRequest[Any], v1: dict[str, Any]) -> None:
    """What this daemon sends, a shim of protocol 1 reads as before; what a protocol-1 daemon
    sent, this shim decodes."""
    assert through_the_wire(p.request_line(request_)) == through_the_wire(v1)
    assert p.decode_request(through_the_wire(v1)) == request_


def test_create_namespaces_as_protocol_1_spelled_it() -> None:
    """The daemon added "userns" only for a pod with its own user namespace; a protocol-1
    shim reads a null one as none."""
    v1 = {"op": "create_namespaces", "request": {
        "pin_dir": "/pins", "types": ["net", "uts"], "hostname": "pod", "sysctls": {"/proc/sys/x": "1"},
        "network": to_plain(PLAN)}}
    typed = p.CreateNamespaces(p.NamespacesRequest("/pins", ("net", "uts"), "pod", {"/proc/sys/x": "1"}, PLAN))
    assert p.decode_request(v1) == typed
    line = through_the_wire(p.request_line(typed))
    assert line["request"].pop("userns") is None
    assert line == through_the_wire(v1)


def test_create_as_protocol_1_spelled_it() -> None:
    """The daemon added "early" (protocol 6: answer before the set-up is ready); an older
    shim ignores it and answers once ready, and a line without it decodes as the create
    that waits for "ready"."""
    v1 = {"op": "create", "spec": to_plain(SPEC)}
    assert p.decode_request(through_the_wire(v1)) == p.Create(SPEC)
    assert p.Create(SPEC).early is False
    line = through_the_wire(p.request_line(p.Create(SPEC, early=True)))
    assert line.pop("early") is True
    assert line == through_the_wire(v1)


def test_pid_holder_as_protocol_1_spelled_it() -> None:
    """The daemon added "pause" (the binary the holder execs); a protocol-1 shim ignores it
    and forks its Python holder, and a line without it decodes with none (the shim then
    refuses to start a holder)."""
    v1 = {"op": "pid_holder", "user_ns": ""}
    assert p.decode_request(v1) == p.PidHolder("", "")
    line = through_the_wire(p.request_line(p.PidHolder("", "/usr/libexec/pause")))
    assert line.pop("pause") == "/usr/libexec/pause"
    assert line == through_the_wire(v1)


def test_replies_of_a_protocol_1_shim_decode() -> None:
    exit_v1 = {"exit_code": 137, "signal": 9, "started_at_ns": 1, "finished_at_ns": 2, "oom_killed": True,
               "pid": 42, "reason": "OOMKilled", "message": "killed"}
    proc_v1 = {"container_id": "c", "pid": 9, "state": "exited", "created_at_ns": 10, "started_at_ns": 11,
               "exit": exit_v1}
    assert p.decode_reply(p.Wait("c"), proc_v1) == p.ProcState("c", 9, p.ProcPhase.EXITED, 10, 11, EXIT)
    assert p.decode_reply(p.ListProcs(), [proc_v1]) == (p.ProcState("c", 9, p.ProcPhase.EXITED, 10, 11, EXIT),)
    assert p.decode_reply(p.Ping(), {"pid": 3, "sandbox_id": "s", "protocol": 1}) == p.ShimInfo(3, "s", 1)
    assert p.decode_reply(p.Precreate("c", NAMESPACES), {"pid": 4}) == p.Pid(4)
    assert p.decode_reply(p.Delete("c"), {}) == p.Ack()
    assert p.decode_reply(p.ExecSync("c", PROCESS), {"exit_code": 1, "stdout": "aGk=", "stderr": ""}) \
        == p.ExecSyncResult(1, b"hi", b"")
    made = p.decode_reply(REQUESTS[1], {"pins": {"net": "/pins/net", "ipc": "/pins/ipc"}, "network": None})
    assert made == p.NamespacesResult(PinnedNamespaces(net="/pins/net", ipc="/pins/ipc"))
    assert p.decode_event({"event": "exit", "container_id": "c", "exit": exit_v1}) == p.ExitEvent("c", EXIT)


def test_replies_read_by_a_protocol_1_daemon_keep_their_keys() -> None:
    """A daemon downgraded below this version reads ``result["pid"]``, ``["exit"]``,
    ``["pins"]`` and base64 output, as before."""
    state = to_plain(p.ProcState("c", 9, p.ProcPhase.RUNNING, 10, 11, EXIT))
    assert state["state"] == "running" and state["exit"]["exit_code"] == 137 and state["pid"] == 9
    assert to_plain(p.ExecSyncResult(0, b"hi", b"")) == {"exit_code": 0, "stdout": "aGk=", "stderr": ""}
    pins = to_plain(p.NamespacesResult(PinnedNamespaces(net="/n")))["pins"]
    assert PinnedNamespaces(**pins) == PinnedNamespaces(net="/n")  # the v1 daemon's reading of it
