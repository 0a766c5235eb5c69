"""CDI spec files: what the specification (1.1.0) accepts, and what it refuses, naming why."""

from __future__ import annotations

from typing import Any

import pytest

from runtime.cdi.spec import (
    CURRENT_VERSION,
    ContainerEdits,
    DeviceNode,
    Hook,
    Mount,
    SpecError,
    minimum_version,
    parse_qualified_name,
    parse_spec,
)

pytestmark = pytest.mark.timeout(10)


def doc(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cdiVersion": "0.3.0",
        "kind": "vendor.example.com/gpu",
        "devices": [{"name": "gpu0", "containerEdits": {"deviceNodes": [{"path": "/dev/gpu0"}]}}],
    }
    base.update(over)
    return base


def test_a_full_spec_parses() -> None:
    spec = parse_spec(doc(
        cdiVersion=CURRENT_VERSION,
        annotations={"a": "b"},
        devices=[
            {"name": "0", "annotations": {"x": "y"}, "containerEdits": {
                "env": ["GPU=0"],
                "deviceNodes": [{"path": "/dev/gpu0", "hostPath": "/dev/nvidia0", "type": "c", "major": 195,
                                 "minor": 0, "fileMode": 0o660, "permissions": "rw", "uid": 1, "gid": 2}],
                "mounts": [{"hostPath": "/usr/lib/libgpu.so", "containerPath": "/usr/lib/libgpu.so",
                            "options": ["ro", "nosuid", "bind"], "type": "bind"}],
                "hooks": [{"hookName": "createRuntime", "path": "/usr/bin/gpu-hook", "args": ["gpu-hook", "x"],
                           "env": ["A=1"], "timeout": 5}],
                "additionalGids": [44],
            }},
        ],
        containerEdits={"env": ["VENDOR=1"], "netDevices": [{"hostInterfaceName": "eth9", "name": "net0"}]},
    ), "/etc/cdi/gpu.json", priority=1)
    assert (spec.kind, spec.vendor, spec.version, spec.priority) == ("vendor.example.com/gpu", "vendor.example.com",
                                                                     "1.1.0", 1)
    edits = spec.devices["0"]
    assert edits.env == ("GPU=0",)
    assert edits.device_nodes == (DeviceNode("/dev/gpu0", "/dev/nvidia0", "c", 195, 0, 0o660, "rw", 1, 2),)
    assert edits.mounts == (Mount("/usr/lib/libgpu.so", "/usr/lib/libgpu.so", ("ro", "nosuid", "bind"), "bind"),)
    assert edits.hooks == (Hook("createRuntime", "/usr/bin/gpu-hook", ("gpu-hook", "x"), ("A=1",), 5),)
    assert edits.additional_gids == (44,)
    assert spec.edits.env == ("VENDOR=1",) and spec.edits.net_devices[0].host_interface_name == "eth9"
    assert spec.qualified("0") == "vendor.example.com/gpu=0"


def test_a_leading_v_is_accepted() -> None:
    assert parse_spec(doc(cdiVersion="v0.5.0"), "f.json").version == "0.5.0"


@pytest.mark.parametrize(("over", "match"), [
    ({"cdiVersion": "0.9.0"}, "not a released CDI spec version"),
    ({"cdiVersion": "2.0.0"}, "not a released"),
    ({"kind": "gpu"}, "invalid kind"),
    ({"kind": "vendor.com/gpu/x"}, "invalid kind"),
    ({"kind": "-vendor.com/gpu"}, "invalid kind"),
    ({"devices": []}, "at least one device"),
    ({"extra": 1}, "unknown field"),
    ({"devices": [{"name": "a", "containerEdits": {}}]}, "has no container edits"),
    ({"devices": [{"name": "-a", "containerEdits": {"env": ["A=1"]}}]}, "invalid device name"),
    ({"devices": [{"name": "a", "containerEdits": {"env": ["A=1"]}},
                  {"name": "a", "containerEdits": {"env": ["A=1"]}}]}, "defined twice"),
    ({"devices": [{"name": "a", "containerEdits": {"env": ["=1"]}}]}, "not NAME=value"),
    ({"devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "dev/x"}]}}]}, "absolute"),
    ({"devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rx"}]}}]},
     "permissions"),
    ({"devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "bogus": 1}]}}]},
     "unknown field"),
    ({"devices": [{"name": "a", "containerEdits": {"hooks": [{"hookName": "prestop", "path": "/x"}]}}]},
     "not one of"),
    ({"devices": [{"name": "a", "containerEdits": {"hooks": [{"hookName": "poststop", "path": "/x",
                                                              "timeout": 0}]}}]}, "timeout"),
    ({"devices": [{"name": "a", "containerEdits": {"mounts": [{"hostPath": "/x"}]}}]}, "containerPath is required"),
    ({"cdiVersion": "0.7.0", "devices": [{"name": "a", "containerEdits": {"additionalGids": [-1]}}]},
     "additionalGids"),
    ({"devices": "a"}, "at least one device"),
])
def test_invalid_specs_are_refused_naming_the_problem(over: dict[str, Any], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        parse_spec(doc(**over), "/etc/cdi/x.json")


@pytest.mark.parametrize(("over", "needed"), [
    ({}, "0.3.0"),
    ({"devices": [{"name": "a", "containerEdits": {"mounts": [{"hostPath": "/a", "containerPath": "/a",
                                                               "type": "bind"}]}}]}, "0.4.0"),
    ({"devices": [{"name": "0a", "containerEdits": {"env": ["A=1"]}}]}, "0.5.0"),
    ({"devices": [{"name": "a", "containerEdits": {"deviceNodes": [{"path": "/a", "hostPath": "/b"}]}}]},
     "0.5.0"),
    ({"annotations": {"k": "v"}}, "0.6.0"),
    ({"kind": "vendor.com/gpu.v2"}, "0.6.0"),
    ({"containerEdits": {"additionalGids": [5]}}, "0.7.0"),
    ({"containerEdits": {"intelRdt": {"closID": "x"}}}, "0.7.0"),
    ({"containerEdits": {"intelRdt": {"schemata": ["L3:0=f"]}}}, "1.1.0"),
    ({"devices": [{"name": "a", "containerEdits": {"netDevices": [{"hostInterfaceName": "e", "name": "n"}]}}]},
     "1.1.0"),
])
def test_fields_need_their_spec_version(over: dict[str, Any], needed: str) -> None:
    d = doc(**over)
    assert minimum_version(d) == needed
    assert parse_spec({**d, "cdiVersion": needed}, "f.json").version == needed
    if needed != "0.3.0":
        with pytest.raises(SpecError, match=f"need cdiVersion {needed} or later"):
            parse_spec({**d, "cdiVersion": "0.3.0"}, "f.json")


def test_qualified_names() -> None:
    assert parse_qualified_name("vendor.com/gpu=0") == ("vendor.com", "gpu", "0")
    assert parse_qualified_name("nvidia.com/gpu=GPU-1:mig.2") == ("nvidia.com", "gpu", "GPU-1:mig.2")
    for bad in ("gpu0", "vendor.com/gpu", "vendor.com=gpu0", "/gpu=0", "vendor.com/=0", "vendor.com/gpu=-0",
                "vendor.com/gp/u=0"):
        with pytest.raises(SpecError):
            parse_qualified_name(bad)


def test_merging_appends_and_the_last_rdt_wins() -> None:
    a = ContainerEdits(env=("A=1",), additional_gids=(1,), intel_rdt={"closID": "a"})
    b = ContainerEdits(env=("B=2",), additional_gids=(2,))
    merged = a.merged(b)
    assert merged.env == ("A=1", "B=2") and merged.additional_gids == (1, 2) and merged.intel_rdt == {"closID": "a"}
    assert not merged.empty() and ContainerEdits().empty()
