"""Capability sets: defaults, add/drop with ALL, ambient, privileged, root versus non-root."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.errors import InvalidArgument
from runtime.linux.caps import CAP_NUMBER
from runtime.model.container import CapabilityChange
from runtime.security.capabilities import (
    DEFAULT_CAPABILITIES,
    compute_capabilities,
    read_current_capabilities,
)

pytestmark = pytest.mark.timeout(10)

ALL = frozenset(range(41))
NO_SYS_RESOURCE = ALL - {CAP_NUMBER["CAP_SYS_RESOURCE"]}


def names(numbers: tuple[int, ...]) -> set[str]:
    inverse = {v: k for k, v in CAP_NUMBER.items()}
    return {inverse[n] for n in numbers}


def test_defaults_are_containerds_fourteen() -> None:
    r = compute_capabilities(CapabilityChange(), privileged=False, uid=0, available=ALL)
    assert len(DEFAULT_CAPABILITIES) == 14
    assert names(r.capabilities.bounding) == set(DEFAULT_CAPABILITIES)
    assert r.capabilities.effective == r.capabilities.permitted == r.capabilities.bounding
    assert r.capabilities.inheritable == () and r.capabilities.ambient == ()
    assert r.bounding_names == frozenset(DEFAULT_CAPABILITIES)


@pytest.mark.parametrize(("add", "drop", "expect"), [
    (("NET_ADMIN",), ("chown", "CAP_KILL"), set(DEFAULT_CAPABILITIES) - {"CAP_CHOWN", "CAP_KILL"} | {"CAP_NET_ADMIN"}),
    (("ALL",), ("CHOWN",), {n for n, i in CAP_NUMBER.items() if i in ALL} - {"CAP_CHOWN"}),
    (("NET_BIND_SERVICE",), ("ALL",), {"CAP_NET_BIND_SERVICE"}),
    ((), ("all",), set()),
    (("SYS_TIME",), ("SYS_TIME",), set(DEFAULT_CAPABILITIES)),  # drop comes after add
])
def test_add_and_drop(add: tuple[str, ...], drop: tuple[str, ...], expect: set[str]) -> None:
    r = compute_capabilities(CapabilityChange(add=add, drop=drop), privileged=False, uid=0, available=ALL)
    assert names(r.capabilities.bounding) == expect


def test_add_all_gives_only_what_the_runtime_holds() -> None:
    r = compute_capabilities(CapabilityChange(add=("ALL",)), privileged=False, uid=0, available=NO_SYS_RESOURCE)
    assert "CAP_SYS_RESOURCE" not in names(r.capabilities.bounding)
    with pytest.raises(InvalidArgument, match=r"CAP_SYS_RESOURCE.*does not hold"):
        compute_capabilities(CapabilityChange(add=("SYS_RESOURCE",)), privileged=False, uid=0,
                             available=NO_SYS_RESOURCE)


def test_privileged_gets_everything_held() -> None:
    r = compute_capabilities(CapabilityChange(drop=("ALL",)), privileged=True, uid=0, available=NO_SYS_RESOURCE)
    assert set(r.capabilities.bounding) == NO_SYS_RESOURCE
    assert set(r.capabilities.effective) == NO_SYS_RESOURCE


def test_non_root_keeps_only_ambient() -> None:
    plain = compute_capabilities(CapabilityChange(add=("NET_ADMIN",)), privileged=False, uid=1000, available=ALL)
    assert names(plain.capabilities.bounding) == set(DEFAULT_CAPABILITIES) | {"CAP_NET_ADMIN"}
    assert plain.capabilities.effective == plain.capabilities.permitted == ()
    amb = compute_capabilities(CapabilityChange(drop=("ALL",), add_ambient=("NET_BIND_SERVICE",)),
                               privileged=False, uid=1000, available=ALL)
    nbs = (CAP_NUMBER["CAP_NET_BIND_SERVICE"],)
    c = amb.capabilities
    assert c.bounding == c.effective == c.permitted == c.inheritable == c.ambient == nbs


def test_unknown_names_are_ignored_and_reported() -> None:
    r = compute_capabilities(CapabilityChange(add=("CAP_FLY",), drop=("TELEPORT",)), privileged=False, uid=0,
                             available=ALL)
    assert r.ignored == ("CAP_FLY", "TELEPORT")
    assert names(r.capabilities.bounding) == set(DEFAULT_CAPABILITIES)


def test_read_current_capabilities(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\n"
                      "CapEff:\t000001fffeffffff\nCapBnd:\t000000fffeffffff\n")
    caps = read_current_capabilities(str(status))
    assert CAP_NUMBER["CAP_SYS_RESOURCE"] not in caps
    assert CAP_NUMBER["CAP_CHOWN"] in caps and 40 not in caps and 39 in caps
