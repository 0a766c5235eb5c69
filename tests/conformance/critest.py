"""Run critest v1.37.0 against a fresh cri-shim daemon and summarise the result.

    python -m tests.conformance.critest [--websocket] [--gate] [--parallel N] [--focus RE]

Starts a local registry (Debian's docker-registry on loopback) holding stand-ins for every
image critest pulls (tests/conformance/images.py, built from busybox-static), a daemon on
temp dirs whose registries.conf rewrites every registry critest names to that registry (so
nothing leaves the machine), runs critest with a JUnit report in test-reports/critest-<label>/
and the skip list (tests/conformance/skip.txt), and prints passed/failed/skipped with the
duration. ``--gate`` makes a failure (or critest failing to run) fail the run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.conformance import images
from tests.support.daemon import running_daemon
from tests.support.registry import running_registry

REPO = Path(__file__).resolve().parents[2]
CRITEST = shutil.which("critest") or "/usr/local/bin/critest"
SKIP_FILE = REPO / "tests" / "conformance" / "skip.txt"
#: Whole-suite limit given to ginkgo, and the harder limit on the critest process.
SUITE_TIMEOUT_MIN = 40


@dataclass(frozen=True)
class SkipEntry:
    pattern: str
    reason: str


def skip_entries(path: Path = SKIP_FILE) -> list[SkipEntry]:
    """skip.txt: one ``REGEX  # reason`` per line; blank lines and ``#`` lines are comments."""
    out = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition("  #")
        if not sep or not reason.strip():
            raise ValueError(f"{path}: every skip needs a reason after '  #': {line!r}")
        out.append(SkipEntry(pattern.strip(), reason.strip()))
    return out


def ginkgo_skip(entries: Sequence[SkipEntry]) -> str:
    return "|".join(f"({e.pattern})" for e in entries)


@dataclass
class Summary:
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    skips: list[str] = field(default_factory=list)


def summarise(report: Path) -> Summary:
    """Count the spec test cases of a ginkgo JUnit report (suite set-up nodes are not specs,
    but a failing one counts as a failure)."""
    s = Summary()
    if not report.exists():
        return s
    for case in ET.parse(report).getroot().iter("testcase"):
        name = re.sub(r"\s+", " ", case.get("name", "")).strip()
        failed = case.find("failure") is not None or case.find("error") is not None
        is_spec = not name.startswith("[") or name.startswith("[It]")
        if failed:
            s.failed += 1
            s.failures.append(name)
        elif not is_spec:
            continue
        elif case.find("skipped") is not None:
            s.skipped += 1
            s.skips.append(name)
        else:
            s.passed += 1
    return s


def critest_command(endpoint: str, report: Path, parallel: int, websocket: bool,
                    skip: str, focus: str = "") -> list[str]:
    cmd = [
        CRITEST, f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}",
        f"--parallel={parallel}", f"--ginkgo.junit-report={report}", "--ginkgo.no-color",
        f"--ginkgo.timeout={SUITE_TIMEOUT_MIN}m",
    ]
    if websocket:
        cmd += ["-websocket-exec", "-websocket-attach", "-websocket-portforward"]
    if skip:
        cmd.append("--ginkgo.skip=" + skip)
    if focus:
        cmd.append("--ginkgo.focus=" + focus)
    return cmd


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--websocket", action="store_true", help="-websocket-exec -websocket-attach -websocket-portforward")
    ap.add_argument("--gate", action="store_true", help="exit 1 when a spec fails")
    ap.add_argument("--parallel", type=int, default=int(os.environ.get("CRITEST_PARALLEL", "2")))
    ap.add_argument("--focus", default="", help="ginkgo focus regex (for debugging one area)")
    ap.add_argument("--label", default="", help="report directory suffix (default: spdy/websocket)")
    args = ap.parse_args(argv)
    label = args.label or ("websocket" if args.websocket else "spdy")
    reports = REPO / "test-reports" / f"critest-{label}"
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    report = reports / "junit.xml"
    base = Path(tempfile.mkdtemp(prefix="critest-"))
    started = time.monotonic()
    rc = -1
    try:
        with running_registry(base) as reg:
            images.push_all(reg.url)
            conf = base / "registries.conf"
            conf.write_text(images.registries_conf(reg.host))
            extra = f'[image]\nregistries_config = "{conf}"\n'
            with running_daemon(base / "d", extra_config=extra) as d:
                cmd = critest_command(d.endpoint, report, args.parallel, args.websocket,
                                      ginkgo_skip(skip_entries()), args.focus)
                print("+", " ".join(cmd), flush=True)
                env = dict(os.environ, PATH=f"/usr/local/bin:{os.environ.get('PATH', '')}")
                # cwd: critest writes temp files (seccomp profiles, logs) relative to nothing
                # we keep; run it in the throw-away dir.
                res = subprocess.run(cmd, cwd=base, env=env, timeout=(SUITE_TIMEOUT_MIN + 5) * 60, check=False)
                rc = res.returncode
                shutil.copyfile(d.log_path, reports / "daemon.log")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    s = summarise(report)
    print(f"\ncritest v1.37.0 ({label}, --parallel={args.parallel}): {s.passed} passed, {s.failed} failed, "
          f"{s.skipped} skipped in {elapsed / 60:.1f} min (critest exit {rc}); JUnit in {report}")
    for name in s.failures:
        print("  FAILED:", name)
    if args.gate and (s.failed or rc != 0):
        return 1
    if not args.gate and (s.failed or rc != 0):
        print("(not gating: run with --gate or CRITEST_GATE=1 to fail on any failure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
