"""Summary of an e2e run from ginkgo's JUnit report (scripts/cluster-e2e.sh prints it).

    python scripts/clusterlib/e2ereport.py REPORT.xml [--specs]

Prints passed / failed / skipped counts per area (the ``[sig-...]`` and the first words of the
spec's container, e.g. ``[sig-node] Pods``), then the failed specs with the first line of
their failure, and with ``--specs`` every spec with its state and duration. Ginkgo's suite
nodes (BeforeSuite, AfterSuite, ...) are not specs and are not counted. Exit status 1 when a
spec failed.
"""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    state: str  # passed, failed, skipped
    seconds: float
    message: str

    @property
    def area(self) -> str:
        text = re.sub(r"^\[It\]\s*", "", self.name)
        m = re.match(r"(\[sig-[\w-]+\])\s+(.*)", text)
        if not m:
            return "other"
        words = re.sub(r"\[[^\]]*\]", "", m.group(2)).split()
        return f"{m.group(1)} {' '.join(words[:1])}".strip()


def load(path: str) -> list[Spec]:
    specs = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "")
        if not name.startswith("[It]"):
            continue  # [SynchronizedBeforeSuite], [ReportAfterSuite], ...
        status = case.get("status", "")
        failure = case.find("failure")
        if failure is None:
            failure = case.find("error")
        if case.find("skipped") is not None or status == "skipped":
            state = "skipped"
        elif failure is not None or status in ("failed", "panicked", "interrupted", "timedout", "aborted"):
            state = "failed"
        else:
            state = "passed"
        msg = ""
        if failure is not None:
            msg = (failure.get("message") or failure.text or "").strip().splitlines()[0:1]
            msg = msg[0][:300] if msg else ""  # type: ignore[index]
        specs.append(Spec(name[len("[It] "):], state, float(case.get("time", "0") or 0), str(msg)))
    return specs


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    specs = load(argv[0])
    areas: dict[str, Counter[str]] = defaultdict(Counter)
    for s in specs:
        areas[s.area][s.state] += 1
    total: Counter[str] = Counter(s.state for s in specs)
    print(f"{'area':50} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for area in sorted(areas):
        c = areas[area]
        print(f"{area:50} {c['passed']:7} {c['failed']:7} {c['skipped']:8}")
    print(f"{'total':50} {total['passed']:7} {total['failed']:7} {total['skipped']:8}")
    failed = [s for s in specs if s.state == "failed"]
    if failed:
        print("\nfailed:")
        for s in failed:
            print(f"  {s.name}\n      {s.message}")
    if "--specs" in argv[1:]:
        print("\nspecs:")
        for s in sorted(specs, key=lambda s: s.name):
            print(f"  {s.state:8} {s.seconds:7.1f}s  {s.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
