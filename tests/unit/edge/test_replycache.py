"""cri_shim.api.replycache: a message is built once per record object and rebuilt for a new
one; removed records' entries go."""

from __future__ import annotations

from dataclasses import dataclass, replace

from cri_shim.api.gen import api_pb2 as pb
from cri_shim.api.replycache import ReplyCache


@dataclass(frozen=True, slots=True)
class Rec:
    id: str
    state: int


def test_reused_while_the_record_is_the_same_object_rebuilt_for_a_new_one() -> None:
    built: list[Rec] = []

    def build(r: Rec) -> pb.Container:
        built.append(r)
        return pb.Container(id=r.id, state=r.state)  # type: ignore[arg-type]

    cache: ReplyCache[Rec, pb.Container] = ReplyCache(build)
    a = Rec("a", pb.CONTAINER_CREATED)
    first = cache.get("a", a)
    assert cache.get("a", a) is first
    assert built == [a]
    # an equal but new record (what every engine change puts into the mirror) is rebuilt
    b = replace(a, state=pb.CONTAINER_RUNNING)
    assert cache.get("a", b).state == pb.CONTAINER_RUNNING
    assert built == [a, b]
    assert cache.get("a", Rec("a", pb.CONTAINER_RUNNING)).state == pb.CONTAINER_RUNNING
    assert len(built) == 3


def container(r: Rec) -> pb.Container:
    return pb.Container(id=r.id, state=r.state)  # type: ignore[arg-type]


def test_a_response_gets_a_copy_so_the_cached_message_stays_as_built() -> None:
    cache: ReplyCache[Rec, pb.Container] = ReplyCache(container)
    rec = Rec("a", pb.CONTAINER_RUNNING)
    response = pb.ListContainersResponse(containers=[cache.get("a", rec)])
    response.containers[0].state = pb.CONTAINER_EXITED
    assert cache.get("a", rec).state == pb.CONTAINER_RUNNING


def test_retain_forgets_removed_records_once_there_are_more_entries_than_live_ones() -> None:
    cache: ReplyCache[Rec, pb.Container] = ReplyCache(container)
    recs = {k: Rec(k, 0) for k in "abc"}
    for k, r in recs.items():
        cache.get(k, r)
    cache.retain({"a", "b", "c"})
    assert len(cache) == 3
    cache.retain({"a", "c"})
    assert len(cache) == 2
    built: list[str] = []

    def build(r: Rec) -> pb.Container:
        built.append(r.id)
        return container(r)

    cache2: ReplyCache[Rec, pb.Container] = ReplyCache(build)
    cache2.get("b", recs["b"])
    cache2.retain(set())
    cache2.get("b", recs["b"])
    assert built == ["b", "b"]
