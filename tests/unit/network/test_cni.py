from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from runtime.errors import DeadlineExceeded
from runtime.model.network import PodNetworkRequest, PortMapping, Protocol
from runtime.network.cni import CniNetwork, parse_result
from runtime.network.cniconf import parse_config
from runtime.network.cniexec import CniPluginError
from tests.unit.network import fakecni

pytestmark = pytest.mark.timeout(60)

SID = "b" * 64


@pytest.fixture
def env(tmp_path: Path) -> dict[str, Path]:
    d = {"conf": tmp_path / "net.d", "bin": tmp_path / "bin", "cache": tmp_path / "cache", "log": tmp_path / "log"}
    d["conf"].mkdir()
    fakecni.install(d["bin"], d["log"])
    return d


def make(env: dict[str, Path], **kw: object) -> CniNetwork:
    return CniNetwork(env["conf"], (env["bin"],), env["cache"], **kw)  # type: ignore[arg-type]


async def test_not_ready_without_config(env: dict[str, Path]) -> None:
    cni = make(env)
    await cni.refresh()
    cond = await cni.status()
    assert not cond.ready and cond.reason == "NetworkPluginNotReady"
    assert "cni config uninitialized" in cond.message


async def test_config_appearing_makes_it_ready(env: dict[str, Path]) -> None:
    cni = make(env)
    await cni.refresh()
    assert not (await cni.status()).ready
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist())
    await cni.refresh_if_dir_changed()
    assert (await cni.status()).ready


async def test_missing_binary_is_not_ready(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist(plugins=("fakemain", "absent")))
    cni = make(env)
    await cni.refresh()
    cond = await cni.status()
    assert not cond.ready and "absent" in cond.message


async def test_add_chains_results_and_caches(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist())
    cni = make(env)
    scan = await cni.refresh()
    assert scan.config is not None
    req = PodNetworkRequest(
        SID, name="web", namespace="ns1", uid="u1", port_mappings=(PortMapping(Protocol.TCP, 80, 8080),)
    )
    res = await cni.add(req, "/run/netns/x", scan.config)
    assert res.ips == ("10.22.0.5", "fd00::5")  # IPv4 first
    assert res.gateway == "10.22.0.1" and res.mac == "aa:bb:cc:dd:ee:ff"
    assert res.dns is not None and res.dns.servers == ("10.22.0.1",)

    main, chain = fakecni.calls(env["log"])
    assert main["plugin"] == "fakemain" and chain["plugin"] == "fakechain"
    for call in (main, chain):
        assert call["env"]["CNI_COMMAND"] == "ADD"
        assert call["env"]["CNI_CONTAINERID"] == SID
        assert call["env"]["CNI_NETNS"] == "/run/netns/x"
        assert call["env"]["CNI_IFNAME"] == "eth0"
        assert call["env"]["CNI_PATH"] == str(env["bin"])
        assert "K8S_POD_NAME=web" in call["env"]["CNI_ARGS"]
        assert call["conf"]["name"] == "fakenet" and call["conf"]["cniVersion"] == "1.0.0"
    assert "prevResult" not in main["conf"] and "runtimeConfig" not in main["conf"]
    assert chain["conf"]["prevResult"]["ips"][1]["address"] == "10.22.0.5/24"
    assert chain["conf"]["runtimeConfig"] == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    }

    cache_file = env["cache"] / "results" / f"fakenet-{SID}-eth0"
    doc = json.loads(cache_file.read_text())
    assert doc["kind"] == "cniCacheV1" and doc["containerId"] == SID and doc["ifName"] == "eth0"
    assert json.loads(base64.b64decode(doc["config"]))["name"] == "fakenet"
    assert doc["result"]["ips"][1]["address"] == "10.22.0.5/24"
    assert ["K8S_POD_NAMESPACE", "ns1"] in doc["cniArgs"]


async def test_del_after_restart_uses_cached_config(env: dict[str, Path], tmp_path: Path) -> None:
    conf = env["conf"] / "10-fake.conflist"
    conf.write_text(fakecni.conflist())
    cni = make(env)
    scan = await cni.refresh()
    assert scan.config is not None
    netns = tmp_path / "netns"
    netns.write_text("")
    await cni.add(PodNetworkRequest(SID, name="web"), str(netns), scan.config)
    conf.unlink()  # the operator removed the config meanwhile

    restarted = make(env)
    await restarted.refresh()
    assert await restarted.delete(SID, "fakenet", str(netns)) is True
    dels = [c for c in fakecni.calls(env["log"]) if c["env"]["CNI_COMMAND"] == "DEL"]
    assert [c["plugin"] for c in dels] == ["fakechain", "fakemain"]  # reverse order
    assert all(c["conf"]["prevResult"]["ips"][1]["address"] == "10.22.0.5/24" for c in dels)
    assert all(c["env"]["CNI_NETNS"] == str(netns) for c in dels)
    assert "K8S_POD_NAME=web" in dels[0]["env"]["CNI_ARGS"]
    assert not (env["cache"] / "results" / f"fakenet-{SID}-eth0").exists()
    # a second DEL has nothing to work with and says so
    assert await restarted.delete(SID, "fakenet", str(netns)) is False


async def test_del_without_netns_passes_empty(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist())
    cni = make(env)
    scan = await cni.refresh()
    assert scan.config is not None
    await cni.add(PodNetworkRequest(SID), "/nonexistent/netns", scan.config)
    await cni.delete(SID, "fakenet", "/nonexistent/netns")
    dels = [c for c in fakecni.calls(env["log"]) if c["env"]["CNI_COMMAND"] == "DEL"]
    assert dels and all(c["env"]["CNI_NETNS"] == "" for c in dels)


async def test_plugin_error_is_typed_and_cache_kept(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist())
    cni = make(env)
    scan = await cni.refresh()
    assert scan.config is not None
    await cni.add(PodNetworkRequest(SID), "/x", scan.config)
    (env["log"].parent / "fail-fakemain-DEL").write_text("")
    with pytest.raises(CniPluginError) as err:
        await cni.delete(SID, "fakenet", "/x")
    assert err.value.code == 11 and err.value.msg == "boom" and "on purpose" in str(err.value)
    assert (env["cache"] / "results" / f"fakenet-{SID}-eth0").exists()  # so DEL can be retried


async def test_timeout_kills_plugin(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist())
    cni = make(env, timeout=0.5)
    scan = await cni.refresh()
    assert scan.config is not None
    (env["log"].parent / "hang").write_text("")
    with pytest.raises(DeadlineExceeded):
        await cni.add(PodNetworkRequest(SID), "/x", scan.config)


async def test_check(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist())
    cni = make(env)
    scan = await cni.refresh()
    assert scan.config is not None
    await cni.add(PodNetworkRequest(SID), "/x", scan.config)
    assert await cni.check(SID, "fakenet", "/x") is True
    checks = [c for c in fakecni.calls(env["log"]) if c["env"]["CNI_COMMAND"] == "CHECK"]
    assert [c["plugin"] for c in checks] == ["fakemain", "fakechain"]
    assert all("prevResult" in c["conf"] for c in checks)


async def test_status_and_gc_for_1_1(env: dict[str, Path]) -> None:
    (env["conf"] / "10-fake.conflist").write_text(fakecni.conflist(version="1.1.0"))
    clock = [0.0]
    cni = make(env, clock=lambda: clock[0], status_ttl=5.0)
    await cni.refresh()
    assert (await cni.status()).ready
    statuses = [c for c in fakecni.calls(env["log"]) if c["env"]["CNI_COMMAND"] == "STATUS"]
    assert len(statuses) == 2
    assert set(statuses[0]["env"]) == {"CNI_COMMAND", "CNI_PATH"}
    # a plugin that reports itself unavailable makes the network not ready (after the TTL)
    (env["log"].parent / "fail-fakechain-STATUS").write_text("")
    assert (await cni.status()).ready  # cached
    clock[0] = 10.0
    cond = await cni.status()
    assert not cond.ready and "boom" in cond.message

    assert await cni.gc([(SID, "eth0")]) is True
    gcs = [c for c in fakecni.calls(env["log"]) if c["env"]["CNI_COMMAND"] == "GC"]
    assert len(gcs) == 2
    assert gcs[0]["conf"]["cni.dev/valid-attachments"] == [{"containerID": SID, "ifname": "eth0"}]


async def test_gc_skipped_before_1_1_and_when_disabled(env: dict[str, Path]) -> None:
    cni = make(env)
    old = parse_config(fakecni.conflist(version="1.0.0").encode())
    off = parse_config(fakecni.conflist(version="1.1.0", disableGC=True).encode())
    assert await cni.gc([], old) is False
    assert await cni.gc([], off) is False
    assert fakecni.calls(env["log"]) == []


def test_parse_result_prefers_named_sandbox_interface() -> None:
    doc = {
        "interfaces": [{"name": "eth0", "sandbox": "/n"}, {"name": "net1", "sandbox": "/n"}],
        "ips": [{"address": "10.0.1.2/24", "interface": 1}, {"address": "10.0.0.2/24", "interface": 0}],
    }
    assert parse_result(doc).ips == ("10.0.0.2",)
    assert parse_result({"ips": [{"address": "10.0.0.9/8"}]}).ip == "10.0.0.9"
    assert parse_result(None).ip == ""
