"""Chunks of the Stream* list RPCs: each item once, in order, no empty response, every response
within its byte and item bounds; the List* answers checked against the message limit."""

from __future__ import annotations

import itertools

import pytest

from cri_shim.api.chunks import (
    CHUNK_BYTES,
    CHUNK_ITEMS,
    MAX_MESSAGE_BYTES,
    chunks,
    encoded_entry_bytes,
    within_limit,
)
from cri_shim.api.gen import api_pb2 as pb
from runtime.errors import ResourceExhausted

pytestmark = pytest.mark.timeout(30)


def _container(i: int, annotation_bytes: int = 0) -> pb.Container:
    return pb.Container(id=f"{i:064x}", pod_sandbox_id="p" * 64,
                        annotations={"blob": "x" * annotation_bytes} if annotation_bytes else {})


def test_encoded_entry_bytes_is_what_the_repeated_field_costs() -> None:
    for size in (0, 1, 100, 200, 20_000, 3_000_000):
        item = _container(size, size)
        alone = pb.StreamContainersResponse(containers=[item]).ByteSize()
        assert encoded_entry_bytes(item) == alone
    items = [_container(i, i * 7) for i in range(50)]
    assert sum(map(encoded_entry_bytes, items)) == pb.ListContainersResponse(containers=items).ByteSize()


def test_no_items_no_responses() -> None:
    assert list(chunks([])) == []


def test_every_item_once_in_order_within_the_item_bound() -> None:
    items = [_container(i) for i in range(2 * CHUNK_ITEMS + 7)]
    batches = list(chunks(items))
    assert [len(b) for b in batches] == [CHUNK_ITEMS, CHUNK_ITEMS, 7]
    assert [c.id for b in batches for c in b] == [c.id for c in items]


def test_responses_stay_within_the_byte_bound() -> None:
    items = [_container(i, 100_000 + i) for i in range(120)]  # ~12 MB in all
    batches = list(chunks(items))
    assert len(batches) > 2 and all(batches)
    for b in batches:
        assert pb.StreamContainersResponse(containers=b).ByteSize() <= CHUNK_BYTES
    assert [c.id for b in batches for c in b] == [c.id for c in items]
    # each response is as full as the bound allows: the next item would not have fitted
    for b, nxt in itertools.pairwise(batches):
        assert pb.StreamContainersResponse(containers=[*b, nxt[0]]).ByteSize() > CHUNK_BYTES


def test_an_item_larger_than_a_chunk_goes_alone() -> None:
    small, big = _container(1), _container(2, CHUNK_BYTES + 10)
    batches = list(chunks([small, big, small]))
    assert [[c.id for c in b] for b in batches] == [[small.id], [big.id], [small.id]]


def test_an_item_over_the_message_limit_is_refused_after_what_precedes_it() -> None:
    small = _container(1)
    huge = _container(2, 4096)
    gen = chunks([small, huge], max_bytes=1024, limit=2048)
    assert [c.id for c in next(gen)] == [small.id]
    with pytest.raises(ResourceExhausted, match=r"Container is .* bytes, over the 2048-byte"):
        next(gen)


def test_bounds_must_admit_an_item() -> None:
    with pytest.raises(ValueError):
        list(chunks([_container(1)], max_items=0))


def test_a_list_answer_over_the_limit_names_the_stream_rpc() -> None:
    ok = pb.ListImagesResponse(images=[pb.Image(id="a")])
    assert within_limit(ok, "ListImages", "StreamImages") is ok
    big = pb.ListImagesResponse(images=[pb.Image(id="a" * 300)])
    with pytest.raises(ResourceExhausted, match=r"ListImages answer is 30[0-9] bytes.*StreamImages.*CRIListStreaming"):
        within_limit(big, "ListImages", "StreamImages", limit=256)
    assert MAX_MESSAGE_BYTES == 16 * 1024 * 1024  # kubelet's client limit
