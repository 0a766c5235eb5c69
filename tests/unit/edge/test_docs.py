"""The README and CI agree with the code: the two set-up commands exist and CI runs the
README's test command; the pinned proto matches its VERSION record."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from cri_shim.api.version import CRI_API_VERSION

REPO = Path(__file__).resolve().parents[3]


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Set up", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [ln.split("#", 1)[0].strip() for ln in block.strip().splitlines() if ln.strip()]
    assert commands == ["sudo scripts/install.sh", "sudo scripts/test.sh"]
    for cmd in commands:
        assert (REPO / cmd.split()[1]).exists()
    ci = (REPO / ".ci" / "run").read_text()
    assert "scripts/test.sh" in ci


def test_proto_is_the_recorded_upstream_file() -> None:
    record = dict(line.split("=", 1) for line in (REPO / "proto" / "VERSION").read_text().splitlines())
    data = (REPO / "proto" / "api.proto").read_bytes()
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    assert record["version"] == CRI_API_VERSION
    assert data.startswith(b"/*\nCopyright") and b"Apache License" in data[:1000]


def test_readme_config_table_keys_exist() -> None:
    from cri_shim.config import documented_keys

    readme = (REPO / "README.md").read_text()
    config_section = readme.split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    keys = set(documented_keys())
    rows = list(re.finditer(r"^\| `(?:\[(\w+)\] )?(\w+)` \|", config_section, re.M))
    assert len(rows) >= 5, "the Configuration section lost its key table"
    for m in rows:
        section, key = m.group(1), m.group(2)
        assert (f"{section}.{key}" if section else key) in keys, m.group(0)
