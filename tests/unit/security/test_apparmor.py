"""The default AppArmor profile: its text, loading it when missing or stale, the real parser."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runtime.errors import FailedPrecondition
from runtime.security.apparmor import (
    DEFAULT_PROFILE,
    AppArmorParser,
    default_profile_text,
    ensure_default_profile,
    loaded_profiles,
    profile_digest,
)

from .test_sysctls_lsm import fake_sys


@dataclass
class FakeParser:
    """Records the texts it is asked to load and 'loads' them into the fake securityfs."""

    sys_root: Path
    fail: str = ""
    loads: list[str] = field(default_factory=list)

    async def replace(self, text: str) -> None:
        self.loads.append(text)
        if self.fail:
            raise FailedPrecondition(self.fail)
        profiles = self.sys_root / "kernel/security/apparmor/profiles"
        name = text.split("\nprofile ", 1)[1].split(maxsplit=1)[0]
        if name not in loaded_profiles(self.sys_root):
            profiles.write_text(profiles.read_text() + f"{name} (enforce)\n")


def ensure(parser: FakeParser, tmp_path: Path):  # type: ignore[no-untyped-def]
    return asyncio.run(ensure_default_profile(parser, tmp_path / "state", sys_root=parser.sys_root))


def test_profile_text_denies_the_host_surfaces() -> None:
    text = default_profile_text()
    assert f"profile {DEFAULT_PROFILE} flags=(attach_disconnected,mediate_deleted)" in text
    for rule in ("deny mount,", "deny @{PROC}/sysrq-trigger rwklx,", "deny /sys/kernel/security/** rwklx,",
                 "deny @{PROC}/sys/[^k]** w,", "ptrace (trace,read,tracedby,readby) peer=cri-shim-default,",
                 "signal (receive) peer=unconfined,"):
        assert rule in text


def test_nothing_happens_without_apparmor(tmp_path: Path) -> None:
    parser = FakeParser(fake_sys(tmp_path / "sys", enabled="N"))
    status = ensure(parser, tmp_path)
    assert not status.enabled and parser.loads == []
    parser = FakeParser(tmp_path / "no-sys")  # no apparmor module at all
    assert not ensure(parser, tmp_path).enabled and parser.loads == []


def test_loaded_once_then_left_alone_then_replaced_when_stale(tmp_path: Path) -> None:
    parser = FakeParser(fake_sys(tmp_path / "sys"))
    status = ensure(parser, tmp_path)
    assert (status.enabled, status.default_loaded, status.action) == (True, True, "loaded")
    assert parser.loads == [default_profile_text()]
    marker = tmp_path / "state" / f"{DEFAULT_PROFILE}.sha256"
    assert marker.read_text().strip() == profile_digest(default_profile_text())
    assert ensure(parser, tmp_path).action == "unchanged" and len(parser.loads) == 1
    marker.write_text("0" * 64 + "\n")  # loaded by an older cri-shim with another text
    assert ensure(parser, tmp_path).action == "replaced" and len(parser.loads) == 2
    marker.unlink()  # the kernel has it but we cannot tell which text: load ours
    assert ensure(parser, tmp_path).action == "replaced"


def test_a_failed_load_is_reported_not_raised(tmp_path: Path) -> None:
    parser = FakeParser(fake_sys(tmp_path / "sys"), fail="apparmor_parser refused the profile")
    status = ensure(parser, tmp_path)
    assert (status.enabled, status.default_loaded, status.action) == (True, False, "failed")
    assert "refused" in status.error and status.as_dict()["default_profile_loaded"] is False
    assert not (tmp_path / "state" / f"{DEFAULT_PROFILE}.sha256").exists()


def test_missing_parser_is_named(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not installed"):
        asyncio.run(AppArmorParser(str(tmp_path / "apparmor_parser")).replace(default_profile_text()))


@pytest.mark.timeout(60)
def test_the_real_parser_compiles_the_profile() -> None:
    parser = shutil.which("apparmor_parser") or "/usr/sbin/apparmor_parser"
    # -Q: compile only (no kernel needed), -K: no cache, -S: the binary policy to stdout
    res = subprocess.run([parser, "-QK", "-S"], input=default_profile_text().encode(), capture_output=True,
                         timeout=50)
    assert res.returncode == 0, res.stderr.decode()
    assert len(res.stdout) > 1000


@pytest.mark.timeout(60)
def test_the_real_parser_reports_a_bad_profile() -> None:
    parser = shutil.which("apparmor_parser") or "/usr/sbin/apparmor_parser"
    bad = default_profile_text().replace("deny mount,", "deny mount sideways,")
    with pytest.raises(FailedPrecondition, match="refused the profile"):
        asyncio.run(AppArmorParser(parser).replace(bad))
