"""Run critest v1.37.0 against a fresh cri-shim daemon (or a private containerd) and
summarise the result. With ``--gate``, a whole-suite cri-shim run also fails when it falls below
tests/conformance/baseline.json for its transport: fewer passes than the floor, or a spec that
passed before and does not pass now (``--update-baseline`` records a run as the new floor).

    python -m tests.conformance.critest [--runtime cri-shim|containerd] [--websocket] [--gate]
                                        [--parallel N] [--focus RE]

Starts a local registry (Debian's docker-registry on loopback) holding stand-ins for every
image critest pulls (tests/conformance/images.py, built from busybox), then a daemon on temp
dirs whose registries.conf rewrites every registry critest names to that registry -- or, with
``--runtime containerd``, a private containerd whose hosts.toml files do the same
(tests/conformance/containerd.py) -- so nothing leaves the machine. Runs critest with the skip
list (tests/conformance/skip.txt) and a JUnit report in test-reports/critest-<label>/ (with
the runtime's log), and prints passed/failed/skipped with the duration. ``--gate`` makes a
failure (or critest failing to run) fail the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conformance import images
from tests.conformance.containerd import running_containerd
from tests.support import tools
from tests.support.daemon import running_daemon
from tests.support.registry import running_registry

REPO = Path(__file__).resolve().parents[2]
CRITEST = str(tools.CRITEST)
SKIP_FILE = REPO / "tests" / "conformance" / "skip.txt"
#: Per transport: the floor of passed specs and the names of the specs that must pass.
BASELINE_FILE = REPO / "tests" / "conformance" / "baseline.json"
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
    #: names of the specs that passed (the baseline keeps them)
    passed_names: list[str] = field(default_factory=list)
    #: why specs were skipped -> how many
    skip_reasons: dict[str, int] = field(default_factory=dict)


def skip_reason(name: str, message: str, entries: Sequence[SkipEntry]) -> str:
    """Why a spec was skipped: our skip list (by name), critest itself (its message), or
    critest's validation mode (benchmark specs run only with -benchmark)."""
    for e in entries:
        if re.search(e.pattern, name):
            return f"skip list: {e.reason}"
    message = re.sub(r"^skipped( - )?", "", message.strip())
    message = re.sub(r': failed to .*|"[0-9a-f]{8,}".*', "", message)
    if message:
        return f"critest: {message}"
    if "benchmark" in name:
        return "critest: benchmarks run only with critest -benchmark"
    return "critest: skipped"


def summarise(report: Path, entries: Sequence[SkipEntry] = ()) -> Summary:
    """Count the spec test cases of a ginkgo JUnit report (suite set-up nodes are not specs,
    but a failing one counts as a failure)."""
    s = Summary()
    if not report.exists():
        return s
    for case in ET.parse(report).getroot().iter("testcase"):
        name = re.sub(r"\s+", " ", case.get("name", "")).strip()
        failed = case.find("failure") is not None or case.find("error") is not None
        is_spec = not name.startswith("[") or name.startswith("[It]")
        skipped = case.find("skipped")
        if failed:
            s.failed += 1
            s.failures.append(name)
        elif not is_spec:
            continue
        elif skipped is not None:
            s.skipped += 1
            why = skip_reason(name, skipped.get("message", ""), entries)
            s.skip_reasons[why] = s.skip_reasons.get(why, 0) + 1
        else:
            s.passed += 1
            s.passed_names.append(name)
    return s


def load_baseline(path: Path = BASELINE_FILE) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def baseline_problems(s: Summary, transport: str, baseline: dict[str, Any]) -> list[str]:
    """Why this run falls below the conformance kept in the repo for ``transport``: fewer
    passes than the floor, or a spec that passed before and does not pass now (skipped,
    failed or gone). A feature that stops being advertised must not turn passes into skips."""
    entry = baseline.get(transport)
    if not entry:
        return [f"no baseline for {transport} in {BASELINE_FILE.name} (run with --update-baseline)"]
    problems = []
    if s.passed < entry["floor"]:
        problems.append(f"{s.passed} passed, below the floor of {entry['floor']}")
    now = set(s.passed_names)
    problems += [f"passed before, not now: {name}" for name in entry["passed"] if name not in now]
    return problems


def update_baseline(s: Summary, transport: str, path: Path = BASELINE_FILE) -> None:
    baseline = load_baseline(path)
    baseline[transport] = {"floor": s.passed, "passed": sorted(set(s.passed_names))}
    path.write_text(json.dumps(baseline, indent=1, sort_keys=True) + "\n")


def critest_command(endpoint: str, report: Path, parallel: int, websocket: bool,
                    skip: str, focus: str = "") -> list[str]:
    cmd = [
        CRITEST, f"--runtime-endpoint={endpoint}", f"--image-endpoint={endpoint}",
        f"--ginkgo.junit-report={report}", "--ginkgo.no-color", f"--ginkgo.timeout={SUITE_TIMEOUT_MIN}m",
    ]
    if parallel > 1:
        # critest runs the ginkgo CLI with --nodes=N; --parallel=1 would reach go test's own
        # -parallel flag, which ginkgo refuses
        cmd.append(f"--parallel={parallel}")
    if websocket:
        cmd += ["-websocket-exec", "-websocket-attach", "-websocket-portforward"]
    if skip:
        cmd.append("--ginkgo.skip=" + skip)
    if focus:
        cmd.append("--ginkgo.focus=" + focus)
    return cmd


@contextlib.contextmanager
def runtime_under_test(name: str, base: Path, registry_host: str) -> Iterator[tuple[str, Path, str]]:
    """(CRI endpoint, its log file, a description) of a fresh cri-shim or private containerd
    whose registry configuration sends critest's registries to ``registry_host``."""
    if name == "containerd":
        with running_containerd(base / "containerd", registry_host, images.UPSTREAM_REGISTRIES) as cd:
            yield cd.endpoint, cd.log_path, cd.version()
        return
    conf = base / "registries.conf"
    conf.write_text(images.registries_conf(registry_host))
    with running_daemon(base / "d", extra_config=f'[image]\nregistries_config = "{conf}"\n') as d:
        yield d.endpoint, d.log_path, "cri-shim"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", choices=("cri-shim", "containerd"), default="cri-shim")
    ap.add_argument("--websocket", action="store_true", help="-websocket-exec -websocket-attach -websocket-portforward")
    ap.add_argument("--gate", action="store_true", help="exit 1 when a spec fails")
    ap.add_argument("--parallel", type=int, default=int(os.environ.get("CRITEST_PARALLEL", "2")))
    ap.add_argument("--focus", default="", help="ginkgo focus regex (for debugging one area)")
    ap.add_argument("--update-baseline", action="store_true",
                    help=f"record this run's passes as the floor in {BASELINE_FILE.name} (cri-shim, no --focus)")
    ap.add_argument("--label", default="", help="report directory suffix (default: [containerd-]spdy/websocket)")
    args = ap.parse_args(argv)
    transport = "websocket" if args.websocket else "spdy"
    label = args.label or (transport if args.runtime == "cri-shim" else f"{args.runtime}-{transport}")
    reports = REPO / "test-reports" / f"critest-{label}"
    shutil.rmtree(reports, ignore_errors=True)
    reports.mkdir(parents=True)
    report = reports / "junit.xml"
    base = Path(tempfile.mkdtemp(prefix="critest-"))
    started = time.monotonic()
    rc = -1
    what = args.runtime
    try:
        with running_registry(base) as reg:
            images.push_all(reg.url)
            with runtime_under_test(args.runtime, base, reg.host) as (endpoint, log_path, what):
                cmd = critest_command(endpoint, report, args.parallel, args.websocket,
                                      ginkgo_skip(skip_entries()), args.focus)
                print("+", " ".join(cmd), flush=True)
                env = dict(os.environ, PATH=f"/usr/local/bin:{os.environ.get('PATH', '')}")
                # cwd: the throw-away dir (critest writes nothing we keep)
                try:
                    res = subprocess.run(cmd, cwd=base, env=env, timeout=(SUITE_TIMEOUT_MIN + 5) * 60, check=False)
                    rc = res.returncode
                finally:
                    shutil.copyfile(log_path, reports / f"{args.runtime}.log")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    s = summarise(report, skip_entries())
    print(f"\ncritest v1.37.0 against {what} ({transport}, --parallel={args.parallel}): {s.passed} passed, "
          f"{s.failed} failed, {s.skipped} skipped in {elapsed / 60:.1f} min (critest exit {rc}); JUnit in {report}")
    for why, n in sorted(s.skip_reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  skipped {n:3d}: {why}")
    for name in s.failures:
        print("  FAILED:", name)
    # The floor applies to a whole-suite run of cri-shim: a focused run or containerd has none.
    if args.runtime == "cri-shim" and not args.focus:
        if args.update_baseline:
            update_baseline(s, transport)
            print(f"baseline for {transport}: floor {s.passed} written to {BASELINE_FILE}")
        problems = baseline_problems(s, transport, load_baseline())
        for p in problems:
            print("  BELOW BASELINE:", p)
        if args.gate and problems:
            return 1
    if args.gate and (s.failed or rc != 0):
        return 1
    if not args.gate and (s.failed or rc != 0):
        print("(not gating: run with --gate or CRITEST_GATE=1 to fail on any failure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
