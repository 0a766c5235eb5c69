from __future__ import annotations

from runtime.model.network import Bandwidth
from runtime.network.shaping import burst_for, ifb_name_for, plan_commands, with_bursts


def test_plan_ingress_only_is_a_tbf_on_the_veth() -> None:
    assert plan_commands("vethabc", "bwpabc", with_bursts(Bandwidth(ingress_rate=1_000_000))) == [
        ["tc", "qdisc", "replace", "dev", "vethabc", "root", "tbf", "rate", "1000000bit", "burst", "32768b",
         "latency", "25ms"],
    ]  # fmt: skip


def test_plan_egress_redirects_to_an_ifb() -> None:
    cmds = plan_commands("vethabc", "bwpabc", with_bursts(Bandwidth(egress_rate=100_000_000)))
    assert cmds[0] == ["ip", "link", "add", "bwpabc", "type", "ifb"]
    assert cmds[2][:8] == ["tc", "qdisc", "replace", "dev", "bwpabc", "root", "tbf", "rate"]
    assert "burst" in cmds[2] and cmds[2][cmds[2].index("burst") + 1] == f"{burst_for(100_000_000) // 8}b"
    assert cmds[-1][-6:] == ["action", "mirred", "egress", "redirect", "dev", "bwpabc"]


def test_names_and_bursts() -> None:
    assert ifb_name_for("0123456789abcdef" * 4) == "bwp0123456789ab" and len(ifb_name_for("f" * 64)) == 15
    assert burst_for(1_000_000) == 32 * 1024 * 8 and burst_for(10_000_000_000) == 100_000_000
