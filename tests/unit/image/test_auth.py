"""Credentials and WWW-Authenticate parsing."""

from __future__ import annotations

import base64

import pytest

from runtime.errors import InvalidArgument
from runtime.image.auth import RegistryAuth, parse_challenges


def test_parse_bearer_challenge_with_commas_in_scope() -> None:
    (ch,) = parse_challenges(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.example/token", "service": "registry.example",
                         "scope": "repository:a/b:pull,push"}


def test_parse_basic_and_multiple() -> None:
    chs = parse_challenges('Basic realm="reg", Bearer realm="https://t/x"')
    assert [c.scheme for c in chs] == ["basic", "bearer"]


def test_basic_from_auth_field() -> None:
    a = RegistryAuth(auth=base64.b64encode(b"user:pa:ss").decode())
    assert a.basic() == ("user", "pa:ss")
    assert RegistryAuth(username="u", password="p").basic() == ("u", "p")
    assert RegistryAuth(registry_token="t").basic() is None
    with pytest.raises(InvalidArgument):
        RegistryAuth(auth="!!!").basic()
    with pytest.raises(InvalidArgument):
        RegistryAuth(auth=base64.b64encode(b"nocolon").decode()).basic()


def test_secrets_not_in_repr_and_server_address_scope() -> None:
    a = RegistryAuth(username="u", password="hunter2", server_address="https://registry.example:5000/v2/")
    assert "hunter2" not in repr(a)
    assert a.applies_to("registry.example:5000")
    assert not a.applies_to("other.example")
    assert RegistryAuth(username="u", server_address="https://index.docker.io/v1/").applies_to("docker.io")
    assert RegistryAuth(username="u").applies_to("anything.example")
