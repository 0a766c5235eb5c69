"""nftables for the built-in network: one table of our own, computed as text, loaded atomically.

Plans as data: :func:`render_ruleset` is a pure function of the persisted state (subnets in
use, hostPort mappings) and returns the whole ``nft -f -`` script; :class:`NftCli` is the thin
step that runs it. The script first declares the table (a no-op if it exists), deletes it and
declares it again with every chain and rule, so one ``nft`` transaction replaces the table as
a whole: no window where half the rules exist, and nothing of an earlier ruleset lingers.

What the table does (``table ip <name>``; ``table ip6 <name>`` does the same for IPv6
pods, without the input chain, see :func:`_render_ip6`):

- ``prerouting`` / ``output`` (nat, dstnat priority): packets to a local address
  (``fib daddr type local``) jump to ``hostports``, which DNATs each hostPort (TCP, UDP,
  SCTP; with ``ip daddr <host_ip>`` when the mapping names a host IP) to ``pod_ip:port``.
  ``output`` makes hostPorts work from the node itself, 127.0.0.1 included.
- ``postrouting`` (nat, srcnat priority): masquerade
  - DNATed connections from loopback (the node's own 127.0.0.1 -> hostPort -> pod),
  - DNATed connections from a pod to a pod ("hairpin": pod A -> hostIP:hostPort -> pod B or
    A itself; without it B answers A directly and A drops the reply),
  - pod egress leaving the pod subnets (not to the subnets, not multicast, not to the
    ``no_masquerade`` ranges: on a cluster its pod range, where pods of other nodes must see a
    pod's own address).
- ``input`` (filter): drop what arrives from the bridge for 127.0.0.0/8 unless it belongs to
  a DNATed connection (CVE-2020-8558, the rule kube-proxy added). The bridge has
  ``route_localnet`` on so that the node's own 127.0.0.1 -> hostPort connections can be
  DNATed out to a pod; the same switch makes the kernel accept frames a pod with CAP_NET_RAW
  addresses to the bridge's MAC with IP destination 127.0.0.1, which would reach services
  listening on the node's loopback only. Replies of the hostPort connections are DNATed
  (their conntrack entry carries the DNAT bit), so they pass. Written ``ct status & dnat
  == 0``: nft 1.0.6 compiles ``ct status != dnat`` to a compare of the whole status word,
  which would drop those replies too.

Why not pyroute2.nftables: marked a prototype upstream, and DNAT needs hand-built
expressions; the ``nft`` CLI is one atomic transaction per call and easy to read in tests.

Cost: one ``nft -f -`` run takes 10-25 ms on this machine (the kernel commit dominates), so
:class:`NatTable` applies only when the computed text differs from what it last applied, and
defers pure removals (see its docstring).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol as TypingProtocol

from runtime.errors import Internal, InvalidArgument
from runtime.network.state import NatState

log = logging.getLogger(__name__)

DEFAULT_TABLE = "cri_shim"
_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")  # IFNAMSIZ - 1, nothing nft would parse
MULTICAST = "224.0.0.0/4"
MULTICAST6 = "ff00::/8"


def check_table_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise InvalidArgument(f"invalid nftables table name {name!r}: letters, digits, _; at most 32")
    return name


def _set(items: list[str]) -> str:
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def render_delete(table: str) -> str:
    """Script removing the tables (``ip`` and ``ip6``) if they exist (declare-then-delete
    never fails on absence)."""
    check_table_name(table)
    return _delete("ip", table) + _delete("ip6", table)


def _delete(family: str, table: str) -> str:
    return f"table {family} {table} {{}}\ndelete table {family} {table}\n"


def _split(state: NatState, version: int) -> NatState:
    """The part of ``state`` of one address family (a rule's pod IP decides its family)."""
    return NatState(
        tuple(s for s in state.subnets if ipaddress.ip_network(s).version == version),
        tuple(r for r in state.host_ports if ipaddress.ip_address(r.pod_ip).version == version),
    )


def render_ruleset(table: str, state: NatState, *, bridge: str, no_masquerade: Sequence[str] = ()) -> str:
    """The whole script for ``state`` with the loopback guard of ``bridge``: the ``ip``
    table for IPv4, the ``ip6`` table of the same name for IPv6, each deleted when its
    family has nothing (the delete script when the state is empty: no pod on the bridge)."""
    check_table_name(table)
    if not _IFNAME.match(bridge):
        raise InvalidArgument(f"invalid bridge name {bridge!r}")
    if state.empty:
        return render_delete(table)
    v4, v6 = _split(state, 4), _split(state, 6)
    keep4 = [str(n) for n in map(ipaddress.ip_network, no_masquerade) if n.version == 4]
    keep6 = [str(n) for n in map(ipaddress.ip_network, no_masquerade) if n.version == 6]
    return (_delete("ip", table) if v4.empty else _render_ip(table, v4, bridge, keep4)) + (
        _delete("ip6", table) if v6.empty else _render_ip6(table, v6, keep6)
    )


def _render_ip(table: str, state: NatState, bridge: str, keep: Sequence[str] = ()) -> str:
    # Overlapping subnets (after a pod CIDR change) would be conflicting set intervals.
    subnets = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(s) for s in state.subnets)]
    lines = [
        f"table ip {table} {{}}",
        f"delete table ip {table}",
        f"table ip {table} {{",
        *_dnat_chains(state, "ip", lambda ip, port: f"{ip}:{port}"),
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    if state.host_ports:
        lines.append("\t\tct status dnat ip saddr 127.0.0.0/8 masquerade")
    if subnets:
        lines.append(f"\t\tct status dnat ip saddr {_set(subnets)} ip daddr {_set(subnets)} masquerade")
        # collapsed: an nft set refuses overlapping intervals (the subnet is inside the cluster range)
        unmasked = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv4Network(c) for c in [*subnets, *keep])]
        lines.append(f"\t\tip saddr {_set(subnets)} ip daddr != {_set([*unmasked, MULTICAST])} masquerade")
    lines += [
        "\t}",
        "\tchain input {",
        "\t\ttype filter hook input priority filter; policy accept;",
        f'\t\tiifname "{bridge}" ip daddr 127.0.0.0/8 ct status & dnat == 0 drop',
        "\t}",
        "}",
        "",
    ]
    return "\n".join(lines)


def _render_ip6(table: str, state: NatState, keep: Sequence[str] = ()) -> str:
    """The IPv6 twin of the ``ip`` table: hostPort DNAT, hairpin and egress masquerade.

    No input chain: IPv6 has no ``route_localnet`` and the kernel drops a packet for ::1
    that arrives on any interface but lo (ip6_rcv_core, RFC 4291 2.5.3), so the
    CVE-2020-8558 hole the ``ip`` table closes does not exist here. For the same reason a
    connection from ::1 DNATed to a pod would never leave the node (measured: it hangs), so
    ``[::1]:hostPort`` is not DNATed at all and is refused at once; the node reaches its
    hostPorts over IPv6 on any other local address (the bridge's, say). kube-proxy has the
    same limit (localhost NodePorts are IPv4 only).
    """
    subnets = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv6Network(s) for s in state.subnets)]
    lines = [
        f"table ip6 {table} {{}}",
        f"delete table ip6 {table}",
        f"table ip6 {table} {{",
        *_dnat_chains(state, "ip6", lambda ip, port: f"[{ip}]:{port}", output_match="ip6 daddr != ::1 "),
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
    ]
    if subnets:
        lines.append(f"\t\tct status dnat ip6 saddr {_set(subnets)} ip6 daddr {_set(subnets)} masquerade")
        unmasked = [str(n) for n in ipaddress.collapse_addresses(ipaddress.IPv6Network(c) for c in [*subnets, *keep])]
        lines.append(f"\t\tip6 saddr {_set(subnets)} ip6 daddr != {_set([*unmasked, MULTICAST6])} masquerade")
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


def _dnat_chains(
    state: NatState, family: str, target: Callable[[str, int], str], output_match: str = ""
) -> list[str]:
    lines = [
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tfib daddr type local jump hostports",
        "\t}",
        "\tchain output {",
        "\t\ttype nat hook output priority -100; policy accept;",  # nft 1.0.6: no "dstnat" for output
        f"\t\t{output_match}fib daddr type local jump hostports",
        "\t}",
        "\tchain hostports {",
    ]
    for rule in state.host_ports:
        match = f"{family} daddr {rule.host_ip} " if rule.host_ip else ""
        lines.append(
            f"\t\t{match}{rule.protocol} dport {rule.host_port} dnat to {target(rule.pod_ip, rule.container_port)}"
        )
    lines.append("\t}")
    return lines


class NftError(Internal):
    """``nft`` refused a script or could not be run."""


class NftRunner(TypingProtocol):
    async def run(self, script: str) -> None:
        """Load ``script`` in one transaction; raise NftError with nft's message on failure."""
        ...


class NftCli:
    """Runs ``nft -f -`` (an async subprocess: the daemon never forks Python code)."""

    def __init__(self, binary: str = "nft", timeout: float = 30.0) -> None:
        self._binary = binary
        self._timeout = timeout

    async def run(self, script: str) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                self._binary,
                "-f",
                "-",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise NftError(f"cannot run {self._binary}: {exc.strerror}") from None
        try:
            _out, err = await asyncio.wait_for(proc.communicate(script.encode()), self._timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise NftError(f"{self._binary} -f - did not finish within {self._timeout}s") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip()
            raise NftError(f"{self._binary} -f - failed (exit {proc.returncode}): {message}")


class NatTable:
    """Keeps the kernel's table equal to the rendering of the persisted state.

    - :meth:`sync` reads the state (under a lock, so concurrent callers apply in order and
      the last one applies the freshest state) and applies it if its text differs from the
      last text applied. Callers that add rules (attach) await it.
    - :meth:`sync_later` is for callers that only remove rules (teardown): after ``linger``
      seconds it runs :meth:`sync`, unless a :meth:`sync` ran meanwhile. A stale DNAT to a
      gone pod for a few seconds is harmless, and pod churn (run/stop/run) does not pay two
      nft transactions (~40 ms) per pod for creating and deleting the table. ``linger=0``
      makes it synchronous.
    - The table goes when the last built-in sandbox goes (empty state -> delete script).
    """

    def __init__(
        self,
        runner: NftRunner,
        table: str,
        load: Callable[[], Awaitable[NatState]],
        *,
        bridge: str,
        no_masquerade: Sequence[str] = (),
        linger: float = 5.0,
        on_apply: Callable[[float, BaseException | None], None] | None = None,
    ) -> None:
        self.table = check_table_name(table)
        self.bridge = bridge
        self.no_masquerade = tuple(no_masquerade)
        self._runner = runner
        self._load = load
        self._linger = linger
        self._on_apply = on_apply
        self._lock = asyncio.Lock()
        self._applied: str | None = None  # None: unknown (not applied since start)
        self._applied_state: NatState | None = None
        self._timer: asyncio.Task[None] | None = None
        self._timer_sleeping = False

    @property
    def applied(self) -> str | None:
        """The script last applied successfully (None before the first apply or after a failure)."""
        return self._applied

    async def sync(self, *, force: bool = False) -> bool:
        """Apply the current state if it changed (or always, with ``force``); True if applied.

        The apply runs in its own task: a caller cancelled mid-way (a request deadline) never
        leaves an ``nft`` process running outside the lock, which could commit out of order.
        """
        self._cancel_timer()
        return await asyncio.shield(asyncio.ensure_future(self._locked_sync(force)))

    async def _locked_sync(self, force: bool) -> bool:
        async with self._lock:
            state = await self._load()
            script = render_ruleset(self.table, state, bridge=self.bridge, no_masquerade=self.no_masquerade)
            if script == self._applied and not force:
                return False
            started = time.monotonic()
            try:
                await self._runner.run(script)
            except BaseException as exc:
                self._applied = None
                self._applied_state = None
                if self._on_apply is not None:
                    self._on_apply(time.monotonic() - started, exc)
                raise
            self._applied = script
            self._applied_state = state
            if self._on_apply is not None:
                self._on_apply(time.monotonic() - started, None)
            return True

    def covers(self, subnet: str) -> bool:
        """True if the table as applied masquerades ``subnet`` and no apply is under way.

        A sandbox without host ports in such a subnet changes nothing in the rendering, so
        its attach can skip :meth:`sync` (and the store read it costs). A pending deferred
        sync is fine: it re-reads the state, which already holds that sandbox.
        """
        if self._applied is None or self._lock.locked() or not subnet:
            return False
        return self._applied_state is not None and subnet in self._applied_state.subnets

    async def sync_later(self) -> None:
        """Schedule a :meth:`sync` after ``linger`` seconds (now, awaited, when linger is 0).

        Never raises: a failed removal leaves stale rules that the next change replaces (the
        whole table is rewritten every time), so it is logged, not passed to the teardown.
        """
        if self._linger <= 0:
            try:
                await self.sync()
            except Exception:
                log.exception("nft: shrinking table %s failed (retried at the next change)", self.table)
            return
        if self._timer is None or self._timer.done() or not self._timer_sleeping:
            self._timer_sleeping = True
            self._timer = asyncio.get_running_loop().create_task(self._deferred(), name=f"nft-linger-{self.table}")

    async def settle(self) -> None:
        """Apply any deferred change now, or wait for one being applied (tests; shutdown)."""
        timer = self._timer
        if timer is None or timer.done():
            return
        if self._timer_sleeping:
            await self.sync()
        else:
            await asyncio.shield(timer)

    async def close(self) -> None:
        """Apply a deferred change before shutdown; failures are logged, not raised."""
        try:
            await self.settle()
        except Exception:
            log.exception("nft: applying the deferred change of table %s at shutdown failed", self.table)
        self._cancel_timer()

    def _cancel_timer(self) -> None:
        """Cancel a deferred sync that is still sleeping (one already applying runs to its end)."""
        timer = self._timer
        if timer is not None and not timer.done() and self._timer_sleeping:
            timer.cancel()
            self._timer = None

    async def _deferred(self) -> None:
        try:
            await asyncio.sleep(self._linger)
        except asyncio.CancelledError:
            return
        self._timer_sleeping = False
        try:
            await self.sync()
        except Exception:
            log.exception("nft: deferred update of table %s failed (retried at the next change)", self.table)
