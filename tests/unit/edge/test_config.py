"""Config loading: defaults, flags over file, strict validation naming the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from cri_shim.config import Config, ConfigError, documented_keys, load
from cri_shim.config_doc import example_toml

REPO = Path(__file__).resolve().parents[3]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_missing_default_file_means_defaults(tmp_path: Path) -> None:
    cfg = load(None, default_path=tmp_path / "absent.toml")
    assert cfg == Config()
    assert cfg.address == Path("/run/cri-shim/cri-shim.sock")


def test_an_existing_default_file_is_read(tmp_path: Path) -> None:
    default = write(tmp_path, 'log_level = "debug"\n')
    assert load(None, default_path=default).log_level == "debug"
    with pytest.raises(ConfigError, match="bogus"):
        load(None, default_path=write(tmp_path, "bogus = 1\n"))


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")


def test_file_values_and_flag_overrides(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        'address = "/tmp/a.sock"\nroot = "/tmp/r"\n[streaming]\naddress = "127.0.0.1:1234"\n'
        '[network]\npod_cidr = "10.244.0.0/16"\ncni_bin_dirs = ["/x/bin"]\n'
        '[image]\npull_progress_timeout = 30\n',
    )
    cfg = load(p, {"root": "/tmp/flag-root", "log_level": None})
    assert cfg.address == Path("/tmp/a.sock")
    assert cfg.root == Path("/tmp/flag-root")  # the flag wins over the file
    assert cfg.streaming.address == "127.0.0.1:1234"
    assert cfg.network.pod_cidr == "10.244.0.0/16"
    assert cfg.network.cni_bin_dirs == (Path("/x/bin"),)
    assert cfg.image.pull_progress_timeout == 30.0


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[streaming]\nport = 1\n", "streaming.port"),
        ("[nonsense]\na = 1\n", "nonsense"),
        ('log_level = "loud"\n', "log_level"),
        ('root = "relative/dir"\n', "root"),
        ("root = 5\n", "root"),
        ('[network]\npod_cidr = "10.0.0.0/33"\n', "network.pod_cidr"),
        # IPv6 and dual stack are accepted (test_pod_cidr_families); these are not
        ('[network]\npod_cidr = "fd00::/127"\n', "network.pod_cidr"),
        ('[network]\npod_cidr = "10.88.0.0/16,10.89.0.0/16"\n', "network.pod_cidr"),
        ('[network]\npod_cidr = "10.88.0.0/16,fd00::1/64"\n', "network.pod_cidr"),
        ('[network]\ncni_bin_dirs = "/opt/cni/bin"\n', "network.cni_bin_dirs"),
        ('[network]\nno_masquerade_cidrs = ["10.244.0.1/16"]\n', "network.no_masquerade_cidrs[0]"),
        ('[network]\nno_masquerade_cidrs = "10.244.0.0/16"\n', "network.no_masquerade_cidrs"),
        ('[metrics]\naddress = "localhost"\n', "metrics.address"),
        ('[streaming]\naddress = "127.0.0.1:99999"\n', "streaming.address"),
        ('[streaming]\ntls_cert = "/c.pem"\n', "streaming.tls_cert"),
        ("[image]\nmax_concurrent_downloads = 0\n", "image.max_concurrent_downloads"),
        ('[image]\npull_progress_timeout = "5m"\n', "image.pull_progress_timeout"),
        ("[image]\ngc_grace_period = -1.0\n", "image.gc_grace_period"),
        ("[image]\ngc_grace_disk_limit = 0.0\n", "image.gc_grace_disk_limit"),
        ("[image]\ngc_grace_disk_limit = 101.0\n", "image.gc_grace_disk_limit"),
        ("streaming = 3\n", "streaming"),
        ('[cgroups]\ndriver = "systemd-ish"\n', "cgroups.driver"),
        ('[cgroups]\nsystemd_slice = "a--b.slice"\n', "cgroups.systemd_slice"),
        ('[cgroups]\nsystemd_slice = "/cri-shim"\n', "cgroups.systemd_slice"),
        ('[pods]\nksm = "on"\n', "pods.ksm"),
        ("[pods]\nksm = true\n", "pods.ksm"),
        ('[pods]\npause_binary = "pause"\n', "pods.pause_binary"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert key in str(info.value)


@pytest.mark.parametrize(
    "cidr", ["10.88.0.0/16", "fd00:10:88::/64", "10.88.0.0/16,fd00:10:88::/64", "fd00:10:88::/64,10.88.0.0/16", ""]
)
def test_pod_cidr_families(tmp_path: Path, cidr: str) -> None:
    # the built-in network takes IPv4, IPv6 or dual stack (before: IPv4 only)
    assert load(write(tmp_path, f'[network]\npod_cidr = "{cidr}"\n')).network.pod_cidr == cidr


def test_ksm_is_auto_by_default_and_replaces_merge_shim_memory(tmp_path: Path) -> None:
    # starting ksmd (a host-wide switch) is the operator's choice: by default only a running
    # ksmd is used; the boolean that started it is refused with its replacement named
    assert load(write(tmp_path, "")).pods.ksm == "auto"
    for value in ("auto", "start", "off"):
        assert load(write(tmp_path, f'[pods]\nksm = "{value}"\n')).pods.ksm == value
    with pytest.raises(ConfigError, match=r'pods\.merge_shim_memory: replaced by pods\.ksm \("start" for true'):
        load(write(tmp_path, "[pods]\nmerge_shim_memory = true\n"))


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c\.toml"):
        load(write(tmp_path, "address = \n"))


def test_empty_metrics_address_disables(tmp_path: Path) -> None:
    assert load(write(tmp_path, '[metrics]\naddress = ""\n')).metrics.address == ""


def test_example_config_is_current_and_documents_every_key() -> None:
    committed = (REPO / "config.example.toml").read_text()
    assert committed == example_toml(), "config.example.toml is stale: run `cri-shim config example`"
    # Uncommenting every key gives a valid config equal to the defaults.
    key_line = re.compile(r"^# [a-z_]+ = ")
    uncommented = "\n".join(line[2:] if key_line.match(line) else line for line in committed.splitlines())
    table = tomllib.loads(uncommented)
    flat = {f"{k}.{kk}" if isinstance(v, dict) else k: None
            for k, v in table.items() for kk in (v if isinstance(v, dict) else [None])}
    assert set(documented_keys()) == {k.removesuffix(".None") for k in flat}
    p = Path("/tmp") / f"cri-shim-example-{id(table)}.toml"
    p.write_text(uncommented)
    try:
        assert load(p) == Config()
    finally:
        p.unlink()
