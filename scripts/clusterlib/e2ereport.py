r"""Summary of an e2e run from ginkgo's JSON report (scripts/cluster-e2e.sh prints it).

    python scripts/clusterlib/e2ereport.py REPORT.json [--specs] [--focus REGEX]

Prints passed / failed / skipped counts per area (the spec's outermost container, e.g.
``[sig-node] Pods``), then the failed specs with the first line of their failure, and with
``--specs`` every spec with its state and duration. Counted are the specs matching the focus
(default ``\[Conformance\]``): "skipped" is what the skip list left out and what skipped
itself; ginkgo's suite nodes (BeforeSuite, AfterSuite, ...) are not specs. Exit status 1
when a spec failed.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class Spec:
    area: str
    name: str
    state: str  # passed, failed, skipped
    seconds: float
    message: str


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\[(?!sig-)[^\]]*\]", "", text)).strip()


def load(path: str, focus: str = r"\[Conformance\]") -> list[Spec]:
    specs = []
    for suite in json.loads(Path(path).read_text(encoding="utf-8")):
        for r in suite.get("SpecReports") or []:
            if r.get("LeafNodeType") != "It":
                continue
            state = r.get("State", "")
            containers: list[str] = r.get("ContainerHierarchyTexts") or []
            name = " ".join([*containers, r.get("LeafNodeText", "")])
            if not re.search(focus, name):
                continue  # out of the focus: not one of this run's specs
            failure: dict[str, Any] = r.get("Failure") or {}
            msg = (failure.get("Message") or "").strip().splitlines()
            state = {"passed": "passed", "skipped": "skipped", "pending": "skipped"}.get(state, "failed")
            specs.append(Spec(_clean(containers[0]) if containers else "other", name, state,
                              (r.get("RunTime") or 0) / 1e9, msg[0][:300] if msg and state == "failed" else ""))
    return specs


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    focus = argv[argv.index("--focus") + 1] if "--focus" in argv else r"\[Conformance\]"
    specs = load(argv[0], focus)
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
