"""A real Prometheus (Debian's ``prometheus``) for tests: loopback, random port, temp storage.

    with running_prometheus(tmp_path, scrape_configs=[job]) as prom:
        prom.wait_target_up("cri-shim")
        prom.query('up{job="cri-shim"}')

It is started as a child process and ended by pid (SIGTERM, then SIGKILL) when the block
exits, also when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.daemon import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise AssertionError(f"prometheus {path}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector."""
        data = self.api("query", query=expr)
        return list(data["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an instant query (None when it returns nothing)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def wait_target_up(self, job: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                last = [t for t in self.targets() if t["labels"].get("job") == job]
                if last and all(t["health"] == "up" for t in last):
                    return last[0]
            time.sleep(0.2)
        raise AssertionError(f"target of job {job} not up in {timeout}s: {last}\n{self.log()[-3000:]}")

    def wait_value(self, expr: str, want: float, timeout: float = 30) -> None:
        """Wait until the instant query ``expr`` gives ``want`` (a later scrape saw it)."""
        deadline = time.monotonic() + timeout
        got: float | None = None
        while time.monotonic() < deadline:
            got = self.value(expr)
            if got == want:
                return
            time.sleep(0.2)
        raise AssertionError(f"{expr} = {got}, want {want} (after {timeout}s)")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@contextlib.contextmanager
def running_prometheus(base: Path, scrape_configs: list[dict[str, Any]], timeout: float = 60) -> Iterator[Prometheus]:
    """Start Prometheus on 127.0.0.1:<random port> with ``scrape_configs`` and temp storage."""
    base.mkdir(parents=True, exist_ok=True)
    config = base / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
                                      "scrape_configs": scrape_configs}))
    port = free_port()
    log_path = base / "prometheus.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={base / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    prom = Prometheus(proc, port, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{prom.log()}")
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"prometheus not ready in {timeout}s:\n{prom.log()}")
            time.sleep(0.1)
        yield prom
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
