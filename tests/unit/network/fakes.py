"""Test doubles of the network's host ports: netlink/sysctl and nft, recording typed calls."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from runtime.errors import FailedPrecondition
from runtime.model.network import NetworkEvent
from runtime.network.nft import NftError


@dataclass
class FakeHost:
    """An in-memory host: links (name -> master index), bridge addresses, sysctls."""

    links: dict[str, int | None] = field(default_factory=dict)
    indexes: dict[str, int] = field(default_factory=dict)
    bridge_addresses: dict[str, set[tuple[str, int]]] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=lambda: {"net.ipv4.ip_forward": "0"})
    calls: list[tuple[object, ...]] = field(default_factory=list)
    closed: bool = False

    def add_link(self, name: str) -> None:
        self.links[name] = None
        self.indexes[name] = len(self.indexes) + 10

    async def ensure_bridge(self, name: str, mac: str, mtu: int, addresses: Sequence[tuple[str, int]]) -> int:
        self.calls.append(("ensure_bridge", name, tuple(sorted(addresses))))
        if name not in self.links:
            self.add_link(name)
        self.bridge_addresses[name] = set(addresses)
        return self.indexes[name]

    async def attach_to_bridge(self, ifname: str, bridge_index: int) -> None:
        self.calls.append(("attach", ifname, bridge_index))
        if ifname not in self.links:
            raise FailedPrecondition(f"host interface {ifname} does not exist")
        self.links[ifname] = bridge_index

    async def delete_link(self, ifname: str) -> bool:
        self.calls.append(("delete", ifname))
        self.indexes.pop(ifname, None)
        return self.links.pop(ifname, "absent") != "absent"

    async def link_index(self, ifname: str) -> int | None:
        return self.indexes.get(ifname)

    def link_exists(self, ifname: str) -> bool:
        return ifname in self.links

    async def link_master(self, ifname: str) -> int | None:
        return self.links.get(ifname)

    def read_sysctl(self, key: str) -> str:
        return self.sysctls.get(key, "0")

    def write_sysctl(self, key: str, value: str) -> None:
        self.calls.append(("sysctl", key, value))
        self.sysctls[key] = value

    def ipv6_conf_names(self) -> list[str]:
        prefix = "net.ipv6.conf."
        return sorted({k[len(prefix):].rsplit(".", 1)[0] for k in self.sysctls if k.startswith(prefix)})

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeNft:
    scripts: list[str] = field(default_factory=list)
    fail: bool = False
    delay: float = 0.0

    async def run(self, script: str) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise NftError("nft -f - failed (exit 1): injected")
        self.scripts.append(script)

    @property
    def table_present(self) -> bool:
        return bool(self.scripts) and "chain" in self.scripts[-1]


@dataclass
class Events:
    events: list[NetworkEvent] = field(default_factory=list)

    def network_event(self, event: NetworkEvent) -> None:
        self.events.append(event)

    def ops(self) -> list[tuple[str, str]]:
        return [(e.operation, e.error) for e in self.events]
