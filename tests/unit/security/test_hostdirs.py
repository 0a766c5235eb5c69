"""make_private: the runtime's top directories end 0700, shared ones are left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtime.security.hostdirs import make_private

pytestmark = pytest.mark.timeout(10)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_created_private_and_earlier_installs_tightened(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "root"
    assert make_private(fresh)
    assert mode(fresh) == 0o700
    old = tmp_path / "state"
    old.mkdir(mode=0o711)
    os.chmod(old, 0o711)  # what earlier versions made
    assert make_private(old)
    assert mode(old) == 0o700
    os.chmod(old, 0o2755)
    assert make_private(old)
    assert mode(old) == 0o2700


def test_shared_directories_are_reported_not_changed(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    assert not make_private(shared)
    assert mode(shared) == 0o1777
