"""SPDY/3.1 framing: encodings, header compression, incremental parsing, malformed input."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri_shim.streaming.spdy import frames as f

pytestmark = pytest.mark.timeout(30)


def test_dictionary_is_the_spdy3_dictionary() -> None:
    # SHA-256 of the 1423-byte dictionary of the SPDY/3 draft (as moby/spdystream ships it)
    assert len(f.DICTIONARY) == 1423
    digest = "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    assert hashlib.sha256(f.DICTIONARY).hexdigest() == digest


def test_data_frame_layout() -> None:
    raw = f.encode_data(5, b"abc", fin=True)
    assert raw == struct.pack(">II", 5, (1 << 24) | 3) + b"abc"


def test_control_frame_layout() -> None:
    raw = f.encode_frame(f.RstStream(3, f.RstStatus.CANCEL))
    assert raw == bytes.fromhex("8003 0003 00000008 00000003 00000005")


ALL_FRAMES: list[f.Frame] = [
    f.SynStream(1, {"streamtype": ["error"], "port": ["8080"]}, priority=3, fin=False),
    f.SynStream(3, {"multi": ["a", "b"]}, fin=True, unidirectional=True),
    f.SynReply(1, {}),
    f.SynReply(3, {"x": ["y"]}, fin=True),
    f.HeadersFrame(1, {"k": ["v"]}, fin=True),
    f.RstStream(7, f.RstStatus.REFUSED_STREAM),
    f.Settings(((0, f.SettingId.INITIAL_WINDOW_SIZE, 1 << 20), (1, 4, 100))),
    f.Ping(2),
    f.GoAway(9, f.GoAwayStatus.PROTOCOL_ERROR),
    f.WindowUpdate(0, 32768),
    f.WindowUpdate(5, 1),
    f.DataFrame(1, b"hello", fin=False),
    f.DataFrame(1, b"", fin=True),
]


def test_round_trip_of_every_frame_type_with_one_compression_context() -> None:
    compressor = f.HeaderCompressor()
    wire = b"".join(f.encode_frame(fr, compressor) for fr in ALL_FRAMES)
    parsed = f.FrameParser().feed(wire)
    assert parsed == ALL_FRAMES


def test_parse_byte_by_byte_splits_data_but_keeps_control_frames_whole() -> None:
    compressor = f.HeaderCompressor()
    wire = b"".join(f.encode_frame(fr, compressor) for fr in ALL_FRAMES)
    parser = f.FrameParser()
    out: list[f.Frame] = []
    for i in range(len(wire)):
        out += parser.feed(wire[i : i + 1])
    control = [fr for fr in out if not isinstance(fr, f.DataFrame)]
    assert control == [fr for fr in ALL_FRAMES if not isinstance(fr, f.DataFrame)]
    data = [fr for fr in out if isinstance(fr, f.DataFrame)]
    assert b"".join(d.data for d in data) == b"hello"
    assert [d.fin for d in data].count(True) == 1 and data[-1].fin


@settings(max_examples=60, deadline=None)
@given(
    headers=st.dictionaries(
        st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20),
        st.lists(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=50),
            min_size=1,
            max_size=3,
        ),
        max_size=10,
    ),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=10),
)
def test_header_compression_round_trip_any_split(headers: dict[str, list[str]], cuts: list[int]) -> None:
    compressor = f.HeaderCompressor()
    wire = f.encode_frame(f.SynStream(1, headers), compressor) + f.encode_frame(f.SynReply(1, headers), compressor)
    parser = f.FrameParser()
    out: list[f.Frame] = []
    pos = 0
    for cut in cuts:
        out += parser.feed(wire[pos : pos + cut])
        pos += cut
    out += parser.feed(wire[pos:])
    assert out == [f.SynStream(1, headers), f.SynReply(1, headers)]


def test_compressed_header_interoperates_with_a_plain_zlib_peer() -> None:
    # what another implementation sends: zlib with the dictionary, sync-flushed per block
    z = zlib.compressobj(level=9, zdict=f.DICTIONARY)
    block = f.encode_header_block({"streamtype": ["stdout"]})
    payload = struct.pack(">IIBB", 1, 0, 0, 0) + z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)
    raw = struct.pack(">HHI", 0x8003, 1, len(payload)) + payload
    assert f.FrameParser().feed(raw) == [f.SynStream(1, {"streamtype": ["stdout"]})]


def _control(kind: int, payload: bytes, flags: int = 0, version: int = 3) -> bytes:
    return struct.pack(">HHI", 0x8000 | version, kind, (flags << 24) | len(payload)) + payload


@pytest.mark.parametrize(
    "raw",
    [
        _control(1, b"\0" * 10 + b"not zlib at all", version=2),  # wrong version
        _control(1, struct.pack(">IIBB", 1, 0, 0, 0) + b"garbage!"),  # bad zlib
        _control(3, struct.pack(">II", 0, 5)),  # RST on stream 0
        _control(3, struct.pack(">I", 1)),  # RST too short
        _control(9, struct.pack(">II", 1, 0)),  # zero window delta
        _control(4, struct.pack(">I", 2) + b"\0" * 8),  # SETTINGS count mismatch
        struct.pack(">II", 0, 3) + b"abc",  # DATA on stream 0
        _control(1, b"\0" * 4),  # SYN_STREAM too short
    ],
)
def test_malformed_input_is_a_frame_error(raw: bytes) -> None:
    parser = f.FrameParser()
    with pytest.raises(f.FrameError):
        parser.feed(raw)
    with pytest.raises(f.FrameError):
        parser.feed(b"")  # unusable afterwards


def test_header_block_limits() -> None:
    with pytest.raises(f.FrameError, match="duplicate"):
        f.decode_header_block(struct.pack(">I", 2) + (struct.pack(">I", 1) + b"a" + struct.pack(">I", 0)) * 2)
    with pytest.raises(f.FrameError, match="lower case"):
        f.decode_header_block(struct.pack(">I", 1) + struct.pack(">I", 1) + b"A" + struct.pack(">I", 0))
    with pytest.raises(f.FrameError, match="truncated"):
        f.decode_header_block(struct.pack(">I", 1) + struct.pack(">I", 10) + b"abc")
    with pytest.raises(f.FrameError, match="headers"):
        f.decode_header_block(struct.pack(">I", 5000))


def test_zip_bomb_header_block_is_refused() -> None:
    z = zlib.compressobj(zdict=f.DICTIONARY)
    block = f.encode_header_block({"big": ["x" * 2_000_000]})
    payload = struct.pack(">IIBB", 1, 0, 0, 0) + z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)
    assert len(payload) < 10_000
    with pytest.raises(f.FrameError, match="inflates"):
        f.FrameParser().feed(_control(1, payload))


def test_oversized_control_frame_is_refused_before_buffering() -> None:
    parser = f.FrameParser(max_control_length=1000)
    with pytest.raises(f.FrameError, match="limit"):
        parser.feed(struct.pack(">HHI", 0x8003, 1, 5000))


def test_unknown_control_frame_is_passed_through_for_ignoring() -> None:
    assert f.FrameParser().feed(_control(0x55, b"xyz", flags=1)) == [f.UnknownControl(0x55, 1, b"xyz")]


def test_large_data_frame_arrives_in_pieces() -> None:
    parser = f.FrameParser()
    raw = f.encode_data(1, b"z" * 100_000, fin=True)
    pieces = parser.feed(raw[:50_000]) + parser.feed(raw[50_000:])
    assert b"".join(p.data for p in pieces if isinstance(p, f.DataFrame)) == b"z" * 100_000
    assert isinstance(pieces[-1], f.DataFrame) and pieces[-1].fin
