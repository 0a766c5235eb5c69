"""The CDI spec directories: priority, conflicts, bad files, and the merged edits of a request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runtime.cdi.registry import CdiRegistry, requested_devices, scan
from runtime.errors import InvalidArgument

pytestmark = pytest.mark.timeout(10)


def write(directory: Path, name: str, kind: str, devices: dict[str, list[str]], spec_env: list[str] | None = None,
          version: str = "0.6.0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"cdiVersion": version, "kind": kind,
                           "devices": [{"name": n, "containerEdits": {"env": env}} for n, env in devices.items()]}
    if spec_env:
        doc["containerEdits"] = {"env": spec_env}
    path = directory / name
    path.write_text(json.dumps(doc))
    return path


def test_resolution_merges_spec_edits_once_then_device_edits_in_request_order(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    write(etc, "gpu.json", "vendor.com/gpu", {"0": ["GPU0=1"], "1": ["GPU1=1"]}, spec_env=["DRIVER=1"])
    write(etc, "nic.json", "other.org/nic", {"a": ["NIC=a"]})
    reg = CdiRegistry((etc,))
    edits = reg.resolve(("vendor.com/gpu=1", "other.org/nic=a", "vendor.com/gpu=0"))
    assert edits.env == ("DRIVER=1", "GPU1=1", "NIC=a", "GPU0=1")
    assert reg.resolve(()).empty()


def test_a_later_directory_overrides_and_same_priority_conflicts(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    write(etc, "gpu.json", "vendor.com/gpu", {"0": ["FROM=etc"], "1": ["FROM=etc"]})
    write(run, "gpu.json", "vendor.com/gpu", {"0": ["FROM=run"]})
    reg = CdiRegistry((etc, run))
    assert reg.resolve(("vendor.com/gpu=0",)).env == ("FROM=run",)
    assert reg.resolve(("vendor.com/gpu=1",)).env == ("FROM=etc",)
    write(run, "gpu2.json", "vendor.com/gpu", {"0": ["FROM=run2"]})
    with pytest.raises(InvalidArgument, match=r"vendor.com/gpu=0 \(defined by both .*run/gpu.json and .*gpu2.json"):
        reg.resolve(("vendor.com/gpu=0",))
    assert reg.resolve(("vendor.com/gpu=1",)).env == ("FROM=etc",)  # the rest still resolves


def test_an_unknown_device_is_invalid_argument_naming_it_and_why(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    write(etc, "gpu.json", "vendor.com/gpu", {"0": ["A=1"]})
    (etc / "broken.json").write_text('{"cdiVersion": "0.3.0", "kind": "broken.io/x", "devices": [{"name": "y"')
    (etc / "notes.txt").write_text("ignored")
    reg = CdiRegistry((etc, tmp_path / "missing"))
    with pytest.raises(InvalidArgument) as info:
        reg.resolve(("vendor.com/gpu=0", "broken.io/x=y"))
    text = str(info.value)
    assert "unresolvable CDI device(s) broken.io/x=y" in text and "vendor.com/gpu=0," not in text
    assert "broken.json: not valid JSON" in text
    with pytest.raises(InvalidArgument, match="not a qualified name"):
        reg.resolve(("gpu0",))
    index = scan((etc,))
    assert set(index.devices) == {"vendor.com/gpu=0"} and list(index.errors) == [str(etc / "broken.json")]


def test_an_invalid_spec_does_not_hide_other_vendors(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    write(etc, "a.json", "vendor.com/gpu", {"0": ["A=1"]}, version="9.9.9")
    write(etc, "b.json", "other.org/nic", {"a": ["B=1"]})
    reg = CdiRegistry((etc,))
    assert reg.resolve(("other.org/nic=a",)).env == ("B=1",)
    with pytest.raises(InvalidArgument, match=r"9\.9\.9"):
        reg.resolve(("vendor.com/gpu=0",))


def test_requested_devices_from_the_field_and_annotations() -> None:
    names = requested_devices(("a.com/x=1",), {
        "cdi.k8s.io/plugin": "b.com/y=2, a.com/x=1", "cdi.k8s.io/a": "c.com/z=3", "other": "d.com/w=4",
    })
    assert names == ("a.com/x=1", "c.com/z=3", "b.com/y=2")


def test_yaml_specs_are_read_and_aliases_refused(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "nic.yaml").write_text(
        'cdiVersion: "0.5.0"\nkind: vendor.com/nic\n'
        "devices:\n  - name: eth1\n    containerEdits:\n      env: [NIC=eth1]\n"
    )
    assert CdiRegistry((etc,)).resolve(("vendor.com/nic=eth1",)).env == ("NIC=eth1",)
    # an alias bomb is refused before PyYAML builds it; the other specs still resolve
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b]\n'
    (etc / "bomb.yaml").write_text(bomb)
    index = scan((etc,))
    assert "vendor.com/nic=eth1" in index.devices
    assert "anchors and aliases are not accepted" in index.errors[str(etc / "bomb.yaml")]
