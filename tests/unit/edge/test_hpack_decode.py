"""The native server's HPACK decoder against the ``hpack`` package's reference decoder: the
same header lists for any sequence of blocks an encoder writes (Huffman or not, indexed or
not, table size changes), and the same refusals of broken blocks."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cri_shim.h2grpc.hpack_decode import HeaderDecoder

pytestmark = pytest.mark.timeout(120)

_names = st.sampled_from([b":path", b":method", b"content-type", b"grpc-timeout", b"user-agent", b"te",
                          b"x-custom", b"authorization"]) | st.binary(min_size=1, max_size=20).map(bytes.lower)
_values = st.sampled_from([b"POST", b"/runtime.v1.RuntimeService/Version", b"application/grpc", b"9999m",
                           b"trailers", b"grpc-go/1.83.2"]) | st.binary(max_size=300)
_field = st.tuples(_names, _values, st.booleans())  # (name, value, sensitive)
Block = tuple[list[tuple[bytes, bytes, bool]], bool, int | None]
_block = st.tuples(st.lists(_field, max_size=12), st.booleans(), st.one_of(st.none(), st.integers(0, 4096)))


@settings(max_examples=300, deadline=None)
@given(st.lists(_block, min_size=1, max_size=12))
def test_same_header_lists_as_the_reference(blocks: list[Block]) -> None:
    enc = hpack.Encoder()
    ref = hpack.Decoder(max_header_list_size=1 << 20)
    ours = HeaderDecoder(max_list=1 << 20)
    for fields, huffman, table_size in blocks:
        if table_size is not None:
            enc.header_table_size = table_size  # the next block starts with a size update
        headers = [hpack.NeverIndexedHeaderTuple(n, v) if sensitive else (n, v) for n, v, sensitive in fields]
        block = enc.encode(headers, huffman=huffman)
        assert ours.decode(block) == [(bytes(n), bytes(v)) for n, v in ref.decode(block, raw=True)]


@pytest.mark.parametrize("block", [
    b"\x80",  # index 0
    b"\xff\x80\x80\x80\x80\x80\x01",  # an integer over 2^28
    b"\xbf",  # dynamic index 62 of an empty table
    b"\x40\x05ab",  # truncated name
    b"\x3f\xe2\x1f",  # table size update to 4097
    b"\x82\x20",  # size update after a field
    b"\x00\x81\xff\x00",  # bad Huffman padding (EOS bits in a name)
])
def test_broken_blocks_are_refused(block: bytes) -> None:
    with pytest.raises(hpack.HPACKDecodingError):
        HeaderDecoder(max_list=65536).decode(block)


def test_header_list_over_the_limit() -> None:
    block = hpack.Encoder().encode([(b"x-big", b"v" * 2000)] * 3)
    with pytest.raises(hpack.OversizedHeaderListError):
        HeaderDecoder(max_list=4000).decode(block)
