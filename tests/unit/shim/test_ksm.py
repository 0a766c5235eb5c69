"""pods.ksm against a fake KSM sysfs directory: only "start" ever writes ksmd's switch, "auto"
follows what runs, "off" leaves it alone, a kernel without KSM merges nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.shim.ksm import apply_ksm_setting


def sysfs(tmp_path: Path, run: str | None) -> Path:
    root = tmp_path / "ksm"
    if run is not None:
        root.mkdir()
        (root / "run").write_text(run + "\n")
    return root


def run_file(root: Path) -> str:
    return (root / "run").read_text().strip()


@pytest.mark.parametrize(
    ("setting", "found", "merge", "started", "after"),
    [
        ("auto", "1", True, False, "1"),
        ("auto", "0", False, False, "0"),
        ("auto", "2", False, False, "2"),  # 2: stopped with every page unmerged (ksm.rst)
        ("start", "0", True, True, "1"),
        ("start", "1", True, False, "1"),
        ("off", "1", False, False, "1"),
        ("off", "0", False, False, "0"),
    ],
)
def test_choice_and_what_it_does_to_ksmd(
    tmp_path: Path, setting: str, found: str, merge: bool, started: bool, after: str
) -> None:
    root = sysfs(tmp_path, found)
    choice = apply_ksm_setting(setting, root)
    assert (choice.setting, choice.merge, choice.started) == (setting, merge, started)
    assert choice.ksmd == ("running" if found == "1" else "stopped")
    assert run_file(root) == after
    assert f"pods.ksm = {setting}" in choice.summary


@pytest.mark.parametrize("setting", ["auto", "start", "off"])
def test_a_kernel_without_ksm_merges_nothing(tmp_path: Path, setting: str) -> None:
    root = sysfs(tmp_path, None)
    choice = apply_ksm_setting(setting, root)
    assert (choice.ksmd, choice.merge, choice.started) == ("unavailable", False, False)
    assert not root.exists()


def test_a_ksmd_that_cannot_be_started_is_reported_not_raised(tmp_path: Path) -> None:
    root = tmp_path / "ksm"
    root.mkdir()
    # reads as "not 1" (stopped), refuses every write (EIO, root too)
    (root / "run").symlink_to("/proc/version")
    choice = apply_ksm_setting("start", root)
    assert (choice.ksmd, choice.merge, choice.started) == ("stopped", False, False)
    assert "cannot start ksmd" in choice.summary


def test_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pods\.ksm"):
        apply_ksm_setting("on", sysfs(tmp_path, "0"))
