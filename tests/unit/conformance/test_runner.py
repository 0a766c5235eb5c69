"""The critest runner's pieces that need no daemon: the command line, the JUnit summary and
why each spec was skipped; containerd's registry and CNI configuration."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.conformance import containerd, critest
from tests.support import cni

pytestmark = pytest.mark.timeout(10)

JUNIT = """<?xml version="1.0" encoding="UTF-8"?>
<testsuites><testsuite name="CRI validation">
  <testcase name="[BeforeSuite]" status="passed"></testcase>
  <testcase name="[It] [k8s.io] Image Manager public image with tag should be pulled and removed" status="passed">
  </testcase>
  <testcase name="[It] [k8s.io] Streaming runtime should support attach" status="failed">
    <failure message="boom">boom</failure></testcase>
  <testcase name="[It] [k8s.io] AppArmor runtime should support apparmor field x" status="skipped">
    <skipped message="skipped"></skipped></testcase>
  <testcase name="[It] [k8s.io] NRI pod sandbox lifecycle y" status="skipped">
    <skipped message="skipped - NRI socket not configured (use -nri-socket flag)"></skipped></testcase>
  <testcase name="[It] [k8s.io] Image benchmark about operations on Image" status="skipped">
    <skipped message="skipped"></skipped></testcase>
  <testcase name="[AfterSuite]" status="failed"><failure message="teardown">x</failure></testcase>
</testsuite></testsuites>
"""


def test_summary_counts_specs_and_explains_skips(tmp_path: Path) -> None:
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    entries = [critest.SkipEntry(r"\[k8s.io\] AppArmor", "no AppArmor here")]
    s = critest.summarise(report, entries)
    assert (s.passed, s.failed, s.skipped) == (1, 2, 3)
    assert s.failures == ["[It] [k8s.io] Streaming runtime should support attach", "[AfterSuite]"]
    assert s.skip_reasons == {
        "skip list: no AppArmor here": 1,
        "critest: NRI socket not configured (use -nri-socket flag)": 1,
        "critest: benchmarks run only with critest -benchmark": 1,
    }
    assert critest.summarise(tmp_path / "absent.xml").passed == 0


def test_command_line() -> None:
    cmd = critest.critest_command("unix:///x.sock", Path("/r/junit.xml"), 2, True, "(a)|(b)", "Image")
    assert "--parallel=2" in cmd and "--runtime-endpoint=unix:///x.sock" in cmd
    assert "--image-endpoint=unix:///x.sock" in cmd and "--ginkgo.junit-report=/r/junit.xml" in cmd
    assert cmd[-5:] == ["-websocket-exec", "-websocket-attach", "-websocket-portforward", "--ginkgo.skip=(a)|(b)",
                        "--ginkgo.focus=Image"]
    serial = critest.critest_command("unix:///x.sock", Path("/r/junit.xml"), 1, False, "", "")
    assert not any(a.startswith("--parallel") or a.startswith("-websocket") or "skip" in a for a in serial)


def test_containerd_config_sends_every_registry_to_the_local_one(tmp_path: Path) -> None:
    hosts = tomllib.loads(containerd.hosts_toml("127.0.0.1:5000"))
    assert hosts == {"server": "http://127.0.0.1:5000",
                     "host": {"http://127.0.0.1:5000": {"capabilities": ["pull", "resolve"]}}}
    cfg = tomllib.loads(containerd.config_toml(tmp_path, tmp_path / "c.sock", tmp_path / "certs", tmp_path / "cni"))
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["registry"] == {"config_path": str(tmp_path / "certs")}  # no mirrors with fallbacks
    assert cri["sandbox_image"] == containerd.PAUSE_IMAGE
    assert cri["containerd"]["runtimes"]["runc"]["options"]["Root"] == str(tmp_path / "runc")
    assert cfg["root"].startswith(str(tmp_path)) and cfg["state"].startswith(str(tmp_path))
    net = cni.bridge_conflist("n", "br-x", "10.1.2.0/24", Path("/tmp/ipam"))
    assert [p["type"] for p in net["plugins"]] == ["bridge", "portmap"] and net["plugins"][0]["bridge"] == "br-x"
    assert net["plugins"][0]["ipam"]["dataDir"] == "/tmp/ipam"  # nothing in /var/lib/cni/networks


def test_baseline_fails_on_a_lower_count_and_on_a_pass_turned_skip(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    before = critest.Summary(passed=2, passed_names=["[It] a", "[It] b"])
    critest.update_baseline(before, "spdy", path)
    baseline = critest.load_baseline(path)
    assert baseline["spdy"] == {"floor": 2, "passed": ["[It] a", "[It] b"]}
    assert critest.baseline_problems(before, "spdy", baseline) == []
    # b is skipped now (a feature stopped being advertised), c is new: below the floor and b lost
    after = critest.Summary(passed=2, skipped=1, passed_names=["[It] a", "[It] c"])
    assert critest.baseline_problems(after, "spdy", baseline) == ["passed before, not now: [It] b"]
    fewer = critest.Summary(passed=1, passed_names=["[It] a"])
    problems = critest.baseline_problems(fewer, "spdy", baseline)
    assert problems[0] == "1 passed, below the floor of 2"
    assert "passed before, not now: [It] b" in problems
    assert critest.baseline_problems(before, "websocket", baseline)[0].startswith("no baseline for websocket")


def test_the_kept_baseline_has_both_transports_at_the_floor() -> None:
    baseline = critest.load_baseline()
    for transport in ("spdy", "websocket"):
        assert baseline[transport]["floor"] >= 114
        assert len(baseline[transport]["passed"]) == baseline[transport]["floor"]
