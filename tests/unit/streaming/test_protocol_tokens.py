"""Protocol helpers (negotiation, status objects, the resize decoder) and the token cache."""

from __future__ import annotations

import json

import pytest

from cri_shim.streaming import protocol as p
from cri_shim.streaming.tokens import TokenCache
from runtime.errors import ResourceExhausted
from runtime.streaming.backend import TerminalSize

pytestmark = pytest.mark.timeout(30)


def test_negotiation_follows_the_clients_order() -> None:
    offered = p.split_protocols(["v5.channel.k8s.io, v4.channel.k8s.io", "v3.channel.k8s.io"])
    assert offered == [p.V5, p.V4, p.V3]
    assert p.negotiate(offered, p.SPDY_REMOTECOMMAND_PROTOCOLS) == p.V4
    assert p.negotiate([p.V2, p.V4], p.SPDY_REMOTECOMMAND_PROTOCOLS) == p.V2
    assert p.negotiate(["nope"], p.SPDY_REMOTECOMMAND_PROTOCOLS) is None


def test_status_objects_decode_like_client_go() -> None:
    failure = json.loads(p.encode_status(p.V4, p.exit_code_status(42)))
    assert failure["status"] == "Failure" and failure["reason"] == "NonZeroExitCode"
    assert failure["details"]["causes"] == [{"reason": "ExitCode", "message": "42"}]
    assert json.loads(p.encode_status(p.V5, p.success_status()))["status"] == "Success"
    # v1-v3: nothing on success, the message on failure
    assert p.encode_status(p.V3, p.success_status()) == b""
    assert b"exit status 3" in p.encode_status(p.V2, p.exit_code_status(3))


def test_resize_decoder_handles_any_split() -> None:
    wire = b'{"Width":80,"Height":24}\n{"Width":132,"Height":43}\n{"Width":1,"Height":2}'
    for cut in range(1, len(wire)):
        d = p.ResizeDecoder()
        got = d.feed(wire[:cut]) + d.feed(wire[cut:])
        assert got == [TerminalSize(80, 24), TerminalSize(132, 43), TerminalSize(1, 2)]


@pytest.mark.parametrize("bad", [b"[1,2]", b'{"Width":"x"}', b'{"Width":70000,"Height":1}', b"\xff\xfe\xfd\xfc\xfb"])
def test_resize_decoder_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(ValueError):
        p.ResizeDecoder().feed(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_tokens_are_single_use_bound_to_kind_and_expire() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(60, clock=clock)
    token = cache.insert("exec", "req")
    assert len(token) >= 32
    entry = cache.consume(token)
    assert entry is not None and entry.kind == "exec" and entry.request == "req"
    assert cache.consume(token) is None  # reused
    late = cache.insert("attach", "r2")
    clock.now += 61
    assert cache.consume(late) is None  # expired
    assert cache.consume("unknown") is None


def test_tokens_limit_and_gc() -> None:
    clock = Clock()
    cache: TokenCache[int] = TokenCache(10, clock=clock, max_in_flight=3)
    for i in range(3):
        cache.insert("exec", i)
    with pytest.raises(ResourceExhausted):
        cache.insert("exec", 4)
    clock.now += 11
    cache.insert("exec", 5)  # the expired ones were dropped
    assert len(cache) == 1
