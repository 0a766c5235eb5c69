from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.network.cniconf import CniConfigError, find_plugin, parse_config, scan_conf_dir


def test_scan_picks_first_valid_by_name(tmp_path: Path) -> None:
    (tmp_path / "05-broken.conflist").write_text("{not json")
    for file, name in (("10-b.conflist", "b"), ("20-a.conflist", "a")):
        (tmp_path / file).write_text(json.dumps({"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "x"}]}))
    (tmp_path / "README").write_text("ignored")
    scan = scan_conf_dir(tmp_path)
    assert scan.config is not None and scan.config.name == "b"
    assert len(scan.errors) == 1 and "05-broken" in scan.errors[0]


def test_missing_dir_is_empty(tmp_path: Path) -> None:
    scan = scan_conf_dir(tmp_path / "nope")
    assert scan.config is None and scan.errors == ()


def test_single_conf_becomes_a_list() -> None:
    data = json.dumps({"cniVersion": "0.4.0", "name": "n", "type": "bridge", "bridge": "cni0"}).encode()
    cfg = parse_config(data, "x.conf")
    assert cfg.plugin_types == ("bridge",)
    assert cfg.plugins[0] == {"type": "bridge", "bridge": "cni0"}
    assert json.loads(cfg.raw)["plugins"][0]["bridge"] == "cni0"


def test_cni_versions_picks_highest_known() -> None:
    data = json.dumps({"cniVersions": ["0.4.0", "1.1.0", "9.9.9"], "name": "n", "plugins": [{"type": "t"}]}).encode()
    assert parse_config(data).cni_version == "1.1.0"


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "n", "plugins": [{"type": "t"}]},
        {"cniVersion": "0.2.0", "name": "n", "plugins": [{"type": "t"}]},
        {"cniVersion": "1.0.0", "plugins": [{"type": "t"}]},
        {"cniVersion": "1.0.0", "name": "n", "plugins": []},
        {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "../evil"}]},
        {"cniVersion": "1.0.0", "name": "n", "plugins": [{}]},
    ],
)
def test_invalid_configs(doc: dict[str, object]) -> None:
    with pytest.raises(CniConfigError):
        parse_config(json.dumps(doc).encode())


def test_find_plugin_needs_exec_bit(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "p").write_text("")
    (b / "p").write_text("#!/bin/sh\n")
    (b / "p").chmod(0o755)
    assert find_plugin("p", (a, b)) == b / "p"
    assert find_plugin("q", (a, b)) is None
