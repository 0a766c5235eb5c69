"""CNI network config lists for tests and benchmarks (Debian's containernetworking-plugins).

Every list names its own bridge and subnet and keeps host-local's allocations in a
directory the caller owns (``dataDir``), so nothing is left in /var/lib/cni/networks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def bridge_conflist(
    name: str, bridge: str, subnet: str, data_dir: Path, *, plugin: str = "bridge",
    hairpin: bool = False, loopback: bool = False,
) -> dict[str, Any]:
    """bridge (gateway, masquerade) + host-local + portmap [+ loopback], CNI 1.0.0."""
    main: dict[str, Any] = {
        "type": plugin, "bridge": bridge, "isGateway": True, "ipMasq": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                 "dataDir": str(data_dir)},
    }
    if hairpin:
        main["hairpinMode"] = True
    plugins: list[dict[str, Any]] = [main, {"type": "portmap", "capabilities": {"portMappings": True}}]
    if loopback:
        plugins.append({"type": "loopback"})
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


def write_conflist(conf_dir: Path, doc: dict[str, Any], filename: str = "10-test.conflist") -> Path:
    conf_dir.mkdir(parents=True, exist_ok=True)
    path = conf_dir / filename
    path.write_text(json.dumps(doc, indent=2))
    return path


def _nft_tables() -> set[tuple[str, str]]:
    import subprocess

    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=False).stdout
    return {(parts[1], parts[2]) for parts in (ln.split() for ln in out.splitlines()) if len(parts) == 3}


@contextlib.contextmanager
def iptables_tables_restored() -> Iterator[None]:
    """The bridge plugin's ipMasq and portmap use iptables (nf_tables backend), which creates
    the ``ip``/``ip6`` nat, filter and mangle tables if they are missing; their per-pod chains
    go with DEL, the shared ones stay. Tables that did not exist before the block are removed
    after it, so a test leaves the host as it found it."""
    import subprocess

    before = _nft_tables()
    try:
        yield
    finally:
        for family, name in sorted(_nft_tables() - before):
            if family in ("ip", "ip6") and name in ("nat", "filter", "mangle"):
                subprocess.run(["nft", "delete", "table", family, name], capture_output=True, timeout=10, check=False)
