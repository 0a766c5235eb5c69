"""The rendered ruleset against the real nft and kernel: accepted, applied atomically, removed."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from runtime.model.network import Protocol
from runtime.network.nft import NatTable, NftCli, NftError, render_ruleset
from runtime.network.state import HostPortRule, NatState
from tests.root.network.conftest import Leaks
from tests.root.network.helpers import nft_table_text
from tests.support.names import unique

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

FULL = NatState(
    subnets=("10.203.0.0/16", "10.203.7.0/24", "10.204.0.0/24"),
    host_ports=(
        HostPortRule(Protocol.TCP, 8080, "", "10.203.0.5", 80),
        HostPortRule(Protocol.UDP, 5353, "127.0.0.1", "10.203.0.6", 53),
        HostPortRule(Protocol.SCTP, 9000, "192.0.2.1", "10.204.0.7", 9000),
    ),
)


def _check(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)


def test_nft_accepts_every_shape() -> None:
    table = unique("tnc")
    for state in (NatState(), NatState(subnets=("10.203.0.0/16",)), FULL):
        result = _check(render_ruleset(table, state, bridge="crishim0"))
        assert result.returncode == 0, result.stderr


async def test_apply_replace_delete(leaks: Leaks) -> None:
    table = unique("tnr")
    leaks.tables.add(table)
    state = [FULL]

    async def load() -> NatState:
        return state[0]

    nat = NatTable(NftCli(), table, load, bridge="crishim0", linger=0.1)
    try:
        assert await nat.sync() is True
        text = nft_table_text(table)
        assert text is not None and "dnat to 10.203.0.5:80" in text and "sctp dport 9000" in text
        assert await nat.sync() is False  # unchanged: no nft run
        state[0] = NatState(subnets=("10.203.0.0/16",))
        await nat.sync()
        text = nft_table_text(table)
        assert text is not None and "dnat to" not in text  # replaced as a whole
        state[0] = NatState()
        await nat.sync_later()
        assert nft_table_text(table) is not None  # lingers
        await asyncio.sleep(0.3)
        assert nft_table_text(table) is None
        with pytest.raises(NftError):
            await NatTable(NftCli(binary="/nonexistent/nft"), table, load, bridge="crishim0").sync()
    finally:
        await nat.close()  # the leaks fixture fails the test if the table is still there
