"""Bounded answers: the gRPC message limit, and the chunks the ``Stream*`` list RPCs send.

CRI v0.37 (KEP-5825, kubelet feature gate ``CRIListStreaming``) adds a streaming twin of
each list RPC (StreamPodSandboxes, StreamContainers, StreamContainerStats,
StreamPodSandboxStats, StreamPodSandboxMetrics, StreamImages). The proto's contract: each
response carries a list of **at least one** item, every item appears in exactly one response,
the number per response is the runtime's choice, and the stream ends with EOF after the last
item (so an empty result is a stream of no responses). The kubelet collects them all.

Here a response holds at most :data:`CHUNK_ITEMS` items and at most :data:`CHUNK_BYTES` of
encoded items, a quarter of the message limit, so no answer comes near the limit however
many records the node has; only an item that alone exceeds :data:`CHUNK_BYTES` goes in a
response of its own, and one that alone exceeds :data:`MAX_MESSAGE_BYTES` is refused with
ResourceExhausted instead of a send that gRPC would fail. The unary ``List*`` answers are
checked against the same limit by :func:`within_limit`, which names the streaming RPC to use.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from google.protobuf.message import Message

from runtime.errors import ResourceExhausted

#: kubelet's CRI client limit (k/k PR #64672), both directions; the server is built with it.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: The encoded items one streamed response carries at most (unless one item alone is larger).
CHUNK_BYTES = 4 * 1024 * 1024
#: The items one streamed response carries at most: bounds the work between two sends.
CHUNK_ITEMS = 500

M = TypeVar("M", bound=Message)


def _varint_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def encoded_entry_bytes(item: Message) -> int:
    """The bytes ``item`` adds to a repeated message field numbered 1-15: one tag byte, its
    length as a varint, then the item (protobuf encoding, length-delimited)."""
    size = item.ByteSize()
    return 1 + _varint_len(size) + size


def chunks(
    items: Iterable[M], *, max_bytes: int = CHUNK_BYTES, max_items: int = CHUNK_ITEMS,
    limit: int = MAX_MESSAGE_BYTES,
) -> Iterator[list[M]]:
    """Consecutive, non-empty lists of ``items`` in their order, each item in exactly one.

    A list holds at most ``max_items`` items whose encoded size (as repeated-field entries)
    is at most ``max_bytes``; an item larger than ``max_bytes`` on its own forms a list of
    one. Raises ResourceExhausted for an item larger than ``limit`` (it can never be sent);
    the lists before it have been yielded. No items, no lists.
    """
    if max_items < 1 or max_bytes < 1:
        raise ValueError("a chunk must allow at least one item and one byte")
    batch: list[M] = []
    size = 0
    for item in items:
        entry = encoded_entry_bytes(item)
        if entry > limit:
            if batch:
                yield batch  # what precedes it is still delivered
            raise ResourceExhausted(
                f"one {item.DESCRIPTOR.name} is {entry} bytes, over the {limit}-byte gRPC message limit"
            )
        if batch and (len(batch) >= max_items or size + entry > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += entry
    if batch:
        yield batch


def within_limit(response: M, method: str, stream_method: str, limit: int = MAX_MESSAGE_BYTES) -> M:
    """``response`` if it fits the message limit; otherwise ResourceExhausted naming its size
    and the streaming RPC that delivers the same answer in chunks. Without this check gRPC
    fails the send itself ("Sent message larger than max") after the handler returned, so
    the call would be logged and counted as a success."""
    size = response.ByteSize()
    if size > limit:
        raise ResourceExhausted(
            f"the {method} answer is {size} bytes, over the {limit}-byte gRPC message limit: "
            f"call {stream_method} (kubelet feature gate CRIListStreaming) or narrow the filter"
        )
    return response
