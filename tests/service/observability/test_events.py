"""GetContainerEvents against a running daemon: `crictl events` and a generated-client stream
both see every transition of a pod+container scenario, in order, with statuses."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import CRICTL, DaemonProcess
from tests.support.pods import container_config, pod_config, pull, to_json_file

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(120)]


class CrictlEvents:
    """`crictl events -o json` in the background; decodes the JSON objects it prints."""

    def __init__(self, d: DaemonProcess) -> None:
        self.proc = subprocess.Popen(
            [CRICTL, "--runtime-endpoint", d.endpoint, "events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._buf = ""
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        decoder = json.JSONDecoder()
        for line in self.proc.stdout:
            self._buf += line
            while True:
                text = self._buf.lstrip()
                if not text:
                    break
                try:
                    obj, end = decoder.raw_decode(text)
                except json.JSONDecodeError:
                    break
                self.events.append(obj)
                self._buf = text[end:]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class ClientStream:
    """A GetContainerEvents stream read by the generated gRPC client in a thread."""

    def __init__(self, d: DaemonProcess) -> None:
        self.call = d.runtime.GetContainerEvents(pb.GetEventsRequest())
        self.events: list[pb.ContainerEventResponse] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for e in self.call:
                self.events.append(e)
        except grpc.RpcError as exc:
            self.error = exc

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(10)


def _wait(pred: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def _streams(d: DaemonProcess) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("cri_shim_container_event_streams "):
                return int(float(line.split()[1]))
    raise AssertionError("no cri_shim_container_event_streams")


def test_two_subscribers_see_the_whole_scenario_in_order(d: DaemonProcess, tmp_path: Path, busybox: str) -> None:
    pull(d, busybox)
    base = _streams(d)
    crictl = CrictlEvents(d)
    client = ClientStream(d)
    try:
        _wait(lambda: _streams(d) == base + 2)
        pcfg = pod_config(labels={"suite": "events"})
        pod = d.crictl("runp", str(to_json_file(pcfg, tmp_path / "pod.json"))).stdout.strip()
        ccfg = container_config("app", busybox, ["sleep", "3600"])
        ccfg.linux.security_context.namespace_options.pid = pb.CONTAINER
        cid = d.crictl("create", pod, str(to_json_file(ccfg, tmp_path / "c.json")), str(tmp_path / "pod.json")
                       ).stdout.strip()
        d.crictl("start", cid)
        d.crictl("stop", "--timeout", "0", cid)
        d.crictl("rm", cid)
        d.crictl("stopp", pod)
        d.crictl("rmp", pod)
        want = [
            ("CONTAINER_CREATED_EVENT", pod), ("CONTAINER_STARTED_EVENT", pod),
            ("CONTAINER_CREATED_EVENT", cid), ("CONTAINER_STARTED_EVENT", cid),
            ("CONTAINER_STOPPED_EVENT", cid), ("CONTAINER_DELETED_EVENT", cid),
            ("CONTAINER_STOPPED_EVENT", pod), ("CONTAINER_DELETED_EVENT", pod),
        ]
        _wait(lambda: len(client.events) >= len(want) and len(crictl.events) >= len(want))
        time.sleep(0.5)  # nothing more may come (no duplicates)
        got_client = [(pb.ContainerEventType.Name(e.container_event_type), e.container_id) for e in client.events]
        got_crictl = [(e.get("containerEventType", "CONTAINER_CREATED_EVENT"), e["containerId"])
                      for e in crictl.events]
        assert got_client == want, got_client
        assert got_crictl == want, got_crictl
        # every event carries the pod's status; container events the container's status
        for e in client.events:
            assert e.pod_sandbox_status.id == pod and e.pod_sandbox_status.metadata.name == pcfg.metadata.name
            assert e.created_at > 0
        states = {pb.ContainerEventType.Name(e.container_event_type): [c.state for c in e.containers_statuses]
                  for e in client.events if e.container_id == cid}
        assert states["CONTAINER_CREATED_EVENT"] in ([pb.CONTAINER_CREATED], [pb.CONTAINER_RUNNING])
        assert states["CONTAINER_STOPPED_EVENT"] == [pb.CONTAINER_EXITED]
        assert states["CONTAINER_DELETED_EVENT"] == []
        last = client.events[-1]
        assert last.pod_sandbox_status.state == pb.SANDBOX_NOTREADY  # the pod's last status, after removal
        stamps = [e.created_at for e in client.events]
        assert stamps == sorted(stamps)
        # crictl printed the same statuses as the client received
        assert [json_format.MessageToDict(e)["podSandboxStatus"]["id"] for e in client.events] == [
            e["podSandboxStatus"]["id"] for e in crictl.events]
    finally:
        crictl.close()
        client.close()
    _wait(lambda: _streams(d) == base)
    assert client.error is not None and client.error.code() == grpc.StatusCode.CANCELLED


def test_streams_end_when_the_daemon_stops(d: DaemonProcess) -> None:
    client = ClientStream(d)
    _wait(lambda: _streams(d) >= 1)
    started = time.monotonic()
    d.stop()
    client._thread.join(15)
    assert not client._thread.is_alive()
    assert time.monotonic() - started < 8, "the stream held up the shutdown"
