"""Traffic shaping of built-in pods from ``kubernetes.io/{in,e}gress-bandwidth`` annotations.

The CNI ``bandwidth`` plugin's approach (containernetworking/plugins, plugins/meta/bandwidth),
with ``tc`` from iproute2 run as an async subprocess (the daemon never blocks its loop):

- ingress (traffic TO the pod) leaves the host through the host end of the pod's veth: a
  token bucket filter (``tbf``) as that device's root qdisc shapes it;
- egress (traffic FROM the pod) arrives on the host end, where a qdisc can only police, so
  it is redirected (``ingress`` qdisc, ``u32`` match-all filter, ``mirred egress
  redirect``) to an ``ifb`` device of the pod whose root ``tbf`` shapes it.

Removal: deleting the veth drops its qdiscs; the ifb device is deleted with the pod.

The annotations carry no burst. containerd passes MaxUint32 bits then, a bucket so deep a
transfer of a few hundred MB is not shaped at all; we use 10 ms of traffic at the rate (at
least 32 KiB, above one 9000-byte jumbo frame), the ``latency`` the plugin uses (25 ms).
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from runtime.errors import FailedPrecondition, Internal
from runtime.model.network import Bandwidth

log = logging.getLogger(__name__)

LATENCY = "25ms"
MIN_BURST_BITS = 32 * 1024 * 8
IFB_PREFIX = "bwp"


def ifb_name_for(sandbox_id: str) -> str:
    """The pod's ifb device: ``bwp`` + 12 hex digits of its id (15 bytes, IFNAMSIZ - 1)."""
    return IFB_PREFIX + sandbox_id[:12]


def burst_for(rate: int) -> int:
    """The bucket depth in bits for ``rate`` bits/s: 10 ms of it, at least 32 KiB."""
    return max(MIN_BURST_BITS, rate // 100)


def with_bursts(bw: Bandwidth) -> Bandwidth:
    """``bw`` with the bursts the built-in network applies (see the module docstring)."""
    return Bandwidth(
        bw.ingress_rate,
        burst_for(bw.ingress_rate) if bw.ingress_rate else 0,
        bw.egress_rate,
        burst_for(bw.egress_rate) if bw.egress_rate else 0,
    )


def _tbf(dev: str, rate: int, burst: int) -> list[str]:
    return ["qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{rate}bit", "burst", f"{burst // 8}b",
            "latency", LATENCY]  # fmt: skip


def plan_commands(host_ifname: str, ifb: str, bw: Bandwidth) -> list[list[str]]:
    """The ``ip``/``tc`` argument lists applying ``bw`` (pure; each list starts with the binary)."""
    cmds: list[list[str]] = []
    if bw.ingress_rate:
        cmds.append(["tc", *_tbf(host_ifname, bw.ingress_rate, bw.ingress_burst or burst_for(bw.ingress_rate))])
    if bw.egress_rate:
        cmds += [
            ["ip", "link", "add", ifb, "type", "ifb"],
            ["ip", "link", "set", ifb, "up"],
            ["tc", *_tbf(ifb, bw.egress_rate, bw.egress_burst or burst_for(bw.egress_rate))],
            ["tc", "qdisc", "replace", "dev", host_ifname, "handle", "ffff:", "ingress"],
            ["tc", "filter", "replace", "dev", host_ifname, "parent", "ffff:", "protocol", "all", "prio", "1",
             "u32", "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb],
        ]  # fmt: skip
    return cmds


class Shaper:
    """Applies and removes a pod's shaping with iproute2. Construction does no I/O."""

    def __init__(self, tc: str = "tc", ip: str = "ip", timeout: float = 20.0) -> None:
        self._bins = {"tc": tc, "ip": ip}
        self._timeout = timeout

    def check_available(self) -> None:
        """FailedPrecondition when ``tc``/``ip`` are missing (checked before a pod is set up)."""
        missing = [b for b in self._bins.values() if shutil.which(b) is None]
        if missing:
            raise FailedPrecondition(f"bandwidth annotations need iproute2: {', '.join(missing)} not found")

    async def apply(self, sandbox_id: str, host_ifname: str, bw: Bandwidth) -> None:
        """Shape the pod's veth; idempotent (``replace``; an ifb left by an earlier try is
        deleted first). Raises Internal with tc's message on failure."""
        ifb = ifb_name_for(sandbox_id)
        if bw.egress_rate:
            await self._run(["ip", "link", "del", ifb], check=False)
        for cmd in plan_commands(host_ifname, ifb, bw):
            await self._run(cmd)

    async def remove(self, sandbox_id: str) -> None:
        """Delete the pod's ifb device if any (the veth's qdiscs go with the veth). Never raises."""
        try:
            await self._run(["ip", "link", "del", ifb_name_for(sandbox_id)], check=False)
        except Exception as exc:
            log.error("network: removing the ifb device of sandbox %s failed: %s", sandbox_id, exc)

    async def _run(self, cmd: list[str], *, check: bool = True) -> None:
        argv = [self._bins[cmd[0]], *cmd[1:]]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as exc:
            raise Internal(f"cannot run {argv[0]}: {exc.strerror}") from None
        try:
            _out, err = await asyncio.wait_for(proc.communicate(), self._timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise Internal(f"{' '.join(argv)} did not finish within {self._timeout}s") from None
        if check and proc.returncode != 0:
            raise Internal(f"{' '.join(argv)} failed (exit {proc.returncode}): {err.decode(errors='replace').strip()}")
