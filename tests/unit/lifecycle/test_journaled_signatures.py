"""The recording wrappers of the undo tests keep the signatures of the ports they wrap.

tests/ is not type-checked, so a port method that gained a parameter (PodShims.shutdown's
``holder``) went unnoticed in JournaledShims until the root tests called it with three."""

from __future__ import annotations

import inspect

import pytest

from runtime.shim.port import PodShims
from tests.support.journaled import JournaledShims


def methods(cls: type) -> dict[str, inspect.Signature]:
    return {name: inspect.signature(fn) for name, fn in vars(cls).items()
            if callable(fn) and not name.startswith("_")}


@pytest.mark.parametrize("name", sorted(methods(PodShims)))
def test_journaled_shims_has_the_ports_signature(name: str) -> None:
    wrapper = methods(JournaledShims)
    assert name in wrapper, f"JournaledShims lacks {name}"
    assert list(wrapper[name].parameters) == list(methods(PodShims)[name].parameters)
