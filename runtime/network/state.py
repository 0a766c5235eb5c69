"""The network's durable state in the store: attachments, IP allocations, host ports.

Tables (component ``network``):

- ``network_attachments``: one row per sandbox with a network (an :class:`Attachment` as JSON).
- ``network_ips``: built-in IPAM, one address per sandbox and family (``rank`` 0 is the
  primary address, 1 the other family's on a dual-stack pod; version 2 of the schema, which
  replaced the one-address-per-sandbox table).
- ``network_ipam_cursor``: the last address handed out per subnet (round-robin allocation).
- ``network_host_ports``: reserved hostPorts of built-in sandboxes; the nftables DNAT rules
  are recomputed from this table, so they survive a daemon restart.

Every method is one transaction on the store thread: an allocation, its host ports and its
attachment record appear (and disappear) together, also across ``kill -9``.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_address, ip_network

from runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from runtime.model.network import (
    Attachment,
    AttachPhase,
    Bandwidth,
    NetworkMode,
    PodAddress,
    PortMapping,
    Protocol,
)
from runtime.network import ipam
from runtime.store import Migration, Store, from_json, to_json

NETWORK_MIGRATIONS = [
    Migration(
        "network",
        1,
        (
            "CREATE TABLE network_attachments (sandbox_id TEXT PRIMARY KEY, mode TEXT NOT NULL,"
            " record TEXT NOT NULL, updated_at REAL NOT NULL)",
            "CREATE TABLE network_ips (ip TEXT PRIMARY KEY, subnet TEXT NOT NULL,"
            " sandbox_id TEXT NOT NULL UNIQUE, allocated_at REAL NOT NULL)",
            "CREATE TABLE network_ipam_cursor (subnet TEXT PRIMARY KEY, last_ip TEXT NOT NULL)",
            "CREATE TABLE network_host_ports (protocol TEXT NOT NULL, host_ip TEXT NOT NULL,"
            " host_port INTEGER NOT NULL, sandbox_id TEXT NOT NULL, container_port INTEGER NOT NULL,"
            " PRIMARY KEY (protocol, host_ip, host_port))",
            "CREATE INDEX network_host_ports_sandbox ON network_host_ports(sandbox_id)",
        ),
    ),
    # Dual stack: up to one address per family and sandbox (SQLite cannot drop a UNIQUE
    # constraint, so the table is copied; existing rows are the IPv4 primaries).
    Migration(
        "network",
        2,
        (
            "CREATE TABLE network_ips_v2 (ip TEXT PRIMARY KEY, subnet TEXT NOT NULL,"
            " sandbox_id TEXT NOT NULL, family INTEGER NOT NULL, rank INTEGER NOT NULL,"
            " allocated_at REAL NOT NULL, UNIQUE (sandbox_id, family), UNIQUE (sandbox_id, rank))",
            "INSERT INTO network_ips_v2(ip, subnet, sandbox_id, family, rank, allocated_at)"
            " SELECT ip, subnet, sandbox_id, 4, 0, allocated_at FROM network_ips",
            "DROP TABLE network_ips",
            "ALTER TABLE network_ips_v2 RENAME TO network_ips",
        ),
    ),
]


@dataclass(frozen=True, slots=True, order=True)
class HostPortRule:
    """One DNAT: ``host_ip`` ("" = every local address) ``protocol``/``host_port`` -> pod.

    ``pod_ip`` and ``host_ip`` (when set) are of one family: a mapping without a host IP
    gives one rule per address of the pod (IPv4 and IPv6 on a dual-stack pod)."""

    protocol: Protocol
    host_port: int
    host_ip: str
    pod_ip: str
    container_port: int


@dataclass(frozen=True, slots=True)
class NatState:
    """What the nftables table must hold: subnets to masquerade and the hostPort DNATs."""

    subnets: tuple[str, ...] = ()
    host_ports: tuple[HostPortRule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.subnets and not self.host_ports


def host_port_mappings(mappings: Sequence[PortMapping]) -> list[PortMapping]:
    """The mappings that need a DNAT (host_port > 0), validated, duplicates dropped.

    Two different mappings of one protocol/host port/host IP in one pod: InvalidArgument.
    """
    seen: dict[tuple[Protocol, int, str], PortMapping] = {}
    for raw in mappings:
        pm = raw.validated()
        if pm.host_port == 0:
            continue
        key = (pm.protocol, pm.host_port, pm.host_ip)
        if key in seen and seen[key] != pm:
            raise InvalidArgument(
                f"hostPort {pm.host_port}/{pm.protocol} on {pm.host_ip or '0.0.0.0'} is mapped twice in one pod"
            )
        for (proto, port, hip), other in seen.items():
            if proto == pm.protocol and port == pm.host_port and (not hip or not pm.host_ip) and hip != pm.host_ip:
                raise InvalidArgument(
                    f"hostPort {pm.host_port}/{pm.protocol} is mapped on {other.host_ip or '0.0.0.0'} and on "
                    f"{pm.host_ip or '0.0.0.0'} in one pod"
                )
        seen[key] = pm
    return list(seen.values())


class NetworkState:
    """Typed access to the network tables. Construction does no I/O."""

    def __init__(self, store: Store) -> None:
        self._store = store

    # -- reads --------------------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> Attachment | None:
        return await self._store.read(lambda c: _get(c, sandbox_id))

    async def attachments(self) -> list[Attachment]:
        def q(c: sqlite3.Connection) -> list[Attachment]:
            rows = c.execute("SELECT record FROM network_attachments ORDER BY sandbox_id").fetchall()
            return [from_json(Attachment, r[0]) for r in rows]

        return await self._store.read(q)

    async def nat_state(self) -> NatState:
        return await self._store.read(_nat_state)

    async def allocated_ips(self) -> dict[str, str]:
        """sandbox id -> its primary built-in IP address."""
        rows = await self._store.read(
            lambda c: c.execute("SELECT sandbox_id, ip FROM network_ips WHERE rank=0").fetchall()
        )
        return {str(s): str(ip) for s, ip in rows}

    async def allocations(self) -> list[tuple[str, str]]:
        """Every built-in allocation as (sandbox id, address), both families."""
        rows = await self._store.read(
            lambda c: c.execute("SELECT sandbox_id, ip FROM network_ips ORDER BY sandbox_id, rank").fetchall()
        )
        return [(str(s), str(ip)) for s, ip in rows]

    # -- writes -------------------------------------------------------------------------------

    async def put(self, attachment: Attachment) -> None:
        await self._store.write(lambda c: _put(c, attachment))

    async def prepare_builtin(
        self,
        sandbox_id: str,
        subnets: Sequence[ipam.Network],
        host_ifname: str,
        mappings: Sequence[PortMapping],
        bandwidth: Bandwidth | None = None,
    ) -> tuple[Attachment, bool]:
        """Allocate one address per subnet (the first is the primary) and reserve host ports
        for ``sandbox_id`` in one transaction.

        Idempotent per sandbox: an existing built-in attachment keeps its addresses (its host
        ports are replaced by ``mappings``). Raises AlreadyExists when a host port is held by
        another sandbox, ResourceExhausted when a subnet is full, FailedPrecondition when
        a subnet's gateway address is held by a pod of an older pod CIDR, InvalidArgument
        when a mapping names a host IP of a family the pod has no address of; nothing is
        written then. Returns the attachment and whether it is new.
        """
        ports = host_port_mappings(mappings)
        return await self._store.write(
            lambda c: _prepare_builtin(c, sandbox_id, subnets, host_ifname, ports, bandwidth)
        )

    async def release(self, sandbox_id: str) -> Attachment | None:
        """Drop the sandbox's attachment, address and host ports; returns what was there."""

        def tx(c: sqlite3.Connection) -> Attachment | None:
            found = _get(c, sandbox_id)
            c.execute("DELETE FROM network_host_ports WHERE sandbox_id=?", (sandbox_id,))
            c.execute("DELETE FROM network_ips WHERE sandbox_id=?", (sandbox_id,))
            c.execute("DELETE FROM network_attachments WHERE sandbox_id=?", (sandbox_id,))
            return found

        return await self._store.write(tx)

    async def release_orphans(self) -> list[str]:
        """Drop addresses and host ports whose sandbox has no attachment record."""

        def tx(c: sqlite3.Connection) -> list[str]:
            orphans = [
                str(r[0])
                for r in c.execute(
                    "SELECT sandbox_id FROM network_ips WHERE sandbox_id NOT IN"
                    " (SELECT sandbox_id FROM network_attachments)"
                    " UNION SELECT sandbox_id FROM network_host_ports WHERE sandbox_id NOT IN"
                    " (SELECT sandbox_id FROM network_attachments)"
                ).fetchall()
            ]
            for sid in orphans:
                c.execute("DELETE FROM network_host_ports WHERE sandbox_id=?", (sid,))
                c.execute("DELETE FROM network_ips WHERE sandbox_id=?", (sid,))
            return orphans

        return await self._store.write(tx)


def _get(c: sqlite3.Connection, sandbox_id: str) -> Attachment | None:
    row = c.execute("SELECT record FROM network_attachments WHERE sandbox_id=?", (sandbox_id,)).fetchone()
    return None if row is None else from_json(Attachment, row[0])


def _put(c: sqlite3.Connection, attachment: Attachment) -> None:
    c.execute(
        "INSERT INTO network_attachments(sandbox_id, mode, record, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(sandbox_id) DO UPDATE SET mode=excluded.mode, record=excluded.record,"
        " updated_at=excluded.updated_at",
        (attachment.sandbox_id, str(attachment.mode), to_json(attachment), time.time()),
    )


def _nat_state(c: sqlite3.Connection) -> NatState:
    subnets = sorted({str(r[0]) for r in c.execute("SELECT subnet FROM network_ips").fetchall()})
    rules = sorted(
        HostPortRule(Protocol(proto), int(hport), str(hip), str(ip), int(cport))
        for proto, hip, hport, cport, ip in c.execute(
            "SELECT p.protocol, p.host_ip, p.host_port, p.container_port, i.ip"
            " FROM network_host_ports p JOIN network_ips i ON i.sandbox_id = p.sandbox_id"
        ).fetchall()
        if not hip or ip_address(hip).version == ip_address(ip).version
    )
    return NatState(tuple(subnets), tuple(rules))


def _check_ports(c: sqlite3.Connection, sandbox_id: str, ports: Sequence[PortMapping]) -> None:
    for pm in ports:
        for (holder, hip) in c.execute(
            "SELECT sandbox_id, host_ip FROM network_host_ports WHERE protocol=? AND host_port=? AND sandbox_id<>?",
            (str(pm.protocol), pm.host_port, sandbox_id),
        ).fetchall():
            if not hip or not pm.host_ip or hip == pm.host_ip:
                raise AlreadyExists(
                    f"hostPort {pm.host_port}/{pm.protocol} on {pm.host_ip or '0.0.0.0'} is already mapped "
                    f"by sandbox {holder} (on {hip or '0.0.0.0'})"
                )


def _prepare_builtin(
    c: sqlite3.Connection,
    sandbox_id: str,
    subnets: Sequence[ipam.Network],
    host_ifname: str,
    ports: Sequence[PortMapping],
    bandwidth: Bandwidth | None,
) -> tuple[Attachment, bool]:
    existing = _get(c, sandbox_id)
    if existing is not None and existing.mode is not NetworkMode.BUILTIN:
        return existing, False
    _check_ports(c, sandbox_id, ports)
    rows = c.execute("SELECT ip, subnet FROM network_ips WHERE sandbox_id=? ORDER BY rank", (sandbox_id,)).fetchall()
    if rows:
        held = [(ip_address(ip), ip_network(net)) for ip, net in rows]
    else:
        held = [_allocate(c, sandbox_id, net, rank) for rank, net in enumerate(subnets)]
    families = {address.version for address, _ in held}
    for pm in ports:
        if pm.host_ip and ip_address(pm.host_ip).version not in families:
            raise InvalidArgument(
                f"hostPort {pm.host_port}/{pm.protocol} on {pm.host_ip}: the pod has no IPv"
                f"{ip_address(pm.host_ip).version} address (pod CIDR {ipam.format_subnets([n for _, n in held])})"
            )
    c.execute("DELETE FROM network_host_ports WHERE sandbox_id=?", (sandbox_id,))
    for pm in ports:
        c.execute(
            "INSERT INTO network_host_ports(protocol, host_ip, host_port, sandbox_id, container_port)"
            " VALUES (?, ?, ?, ?, ?)",
            (str(pm.protocol), pm.host_ip, pm.host_port, sandbox_id, pm.container_port),
        )
    assigned = [
        PodAddress(str(address), net.prefixlen, str(ipam.gateway_of(net)), str(net)) for address, net in held
    ]
    primary, more = assigned[0], tuple(assigned[1:])
    base = existing or Attachment(sandbox_id=sandbox_id, mode=NetworkMode.BUILTIN)
    attachment = replace(
        base,
        phase=base.phase if existing else AttachPhase.PREPARED,
        host_ifname=host_ifname if not existing else (existing.host_ifname or host_ifname),
        ip=primary.address,
        prefixlen=primary.prefixlen,
        gateway=primary.gateway,
        subnet=primary.subnet,
        mac=ipam.mac_for(held[0][0]),
        port_mappings=tuple(ports),
        additional_ips=tuple(a.address for a in more),
        more_addresses=more,
        bandwidth=bandwidth if not existing else existing.bandwidth,
    )
    _put(c, attachment)
    return attachment, existing is None


def _allocate(
    c: sqlite3.Connection, sandbox_id: str, net: ipam.Network, rank: int
) -> tuple[ipam.Address, ipam.Network]:
    """One new address in ``net`` for ``sandbox_id`` (a row of ``network_ips``, cursor moved)."""
    all_ips = [(ip_address(ip), ip_network(s)) for ip, s in c.execute("SELECT ip, subnet FROM network_ips")]
    gw = ipam.gateway_of(net)
    for ip, _s in all_ips:
        if ip == gw:
            raise FailedPrecondition(
                f"pod CIDR {net}: its gateway {gw} is the address of a pod from an earlier pod CIDR; "
                "remove that pod first"
            )
    gateways = {ipam.gateway_of(s) for _, s in all_ips} | {gw}
    cursor = c.execute("SELECT last_ip FROM network_ipam_cursor WHERE subnet=?", (str(net),)).fetchone()
    last = ip_address(cursor[0]) if cursor else None
    in_net = [ip for ip, _ in all_ips if ip.version == net.version and ip in net]
    address = ipam.pick_address(net, in_net, last, gateways)
    c.execute(
        "INSERT INTO network_ips(ip, subnet, sandbox_id, family, rank, allocated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (str(address), str(net), sandbox_id, net.version, rank, time.time()),
    )
    c.execute(
        "INSERT INTO network_ipam_cursor(subnet, last_ip) VALUES (?, ?)"
        " ON CONFLICT(subnet) DO UPDATE SET last_ip=excluded.last_ip",
        (str(net), str(address)),
    )
    return address, net


def is_ipv4(value: str) -> bool:
    try:
        return ip_address(value).version == 4
    except ValueError:
        return False
