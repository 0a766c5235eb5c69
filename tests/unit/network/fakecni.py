"""Fake CNI plugins for unit tests: small Python scripts that log their calls to a file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

PLUGIN = r'''#!{python}
import json, os, sys, time
LOG = {log!r}
KIND = {kind!r}
conf = sys.stdin.read()
cmd = os.environ.get("CNI_COMMAND", "")
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
with open(LOG, "a") as f:
    rec = {{"plugin": os.path.basename(sys.argv[0]), "env": env, "conf": json.loads(conf or "{{}}")}}
    f.write(json.dumps(rec) + "\n")
fail = os.path.join(os.path.dirname(LOG), "fail-" + os.path.basename(sys.argv[0]) + "-" + cmd)
if os.path.exists(fail):
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "boom", "details": "on purpose"}}))
    sys.exit(1)
if os.path.exists(os.path.join(os.path.dirname(LOG), "hang")):
    time.sleep(60)
c = json.loads(conf or "{{}}")
if cmd == "ADD":
    if KIND == "main":
        print(json.dumps({{"cniVersion": c.get("cniVersion"),
            "interfaces": [{{"name": "cni0"}}, {{"name": os.environ["CNI_IFNAME"], "mac": "aa:bb:cc:dd:ee:ff",
                            "sandbox": os.environ["CNI_NETNS"]}}],
            "ips": [{{"address": "fd00::5/64", "interface": 1}},
                    {{"address": "10.22.0.5/24", "gateway": "10.22.0.1", "interface": 1}}],
            "dns": {{"nameservers": ["10.22.0.1"]}}}}))
    else:
        print(json.dumps(c["prevResult"]))
'''


def install(bin_dir: Path, log: Path, main: str = "fakemain", chained: tuple[str, ...] = ("fakechain",)) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, kind in ((main, "main"), *((c, "chain") for c in chained)):
        p = bin_dir / name
        p.write_text(PLUGIN.format(python=sys.executable, log=str(log), kind=kind))
        p.chmod(0o755)


def calls(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def conflist(name: str = "fakenet", version: str = "1.0.0", plugins: tuple[str, ...] = ("fakemain", "fakechain"),
             **extra: Any) -> str:
    doc: dict[str, Any] = {"cniVersion": version, "name": name, "plugins": []}
    for p in plugins:
        entry: dict[str, Any] = {"type": p}
        if p == "fakechain":
            entry["capabilities"] = {"portMappings": True}
        doc["plugins"].append(entry)
    doc.update(extra)
    return json.dumps(doc)
