"""The Stream* list RPCs (CRI v0.37, kubelet feature gate CRIListStreaming) through the real
daemon: the same answers as the List* RPCs, and all of a node's records when the List* answer
exceeds the 16 MiB gRPC message limit (kubelet's, and the test client's).

Scale: 4 pods with 90 CREATED containers each, every container carrying a 48 KiB annotation
(Kubernetes allows 256 KiB of annotations per object), about 17.3 MiB of Container messages.
CREATED containers are the honest cheap record: a real CreateContainer (rootfs snapshot, log
path, record) without a process; measured here at about 34 ms each, so thousands of small ones
(a realistic kubelet container is about 1 KiB: 16 MiB is ~16,000 of them) would take minutes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
import pytest

from cri_shim.api.chunks import CHUNK_BYTES
from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.pods import container_config, create_container, pod_config, pull, run_pod

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(420)]

PODS, PER_POD, ANNOTATION = 4, 90, 48 * 1024
LIMIT = 16 * 1024 * 1024


def _collect(responses: Iterable[Any], field: str) -> tuple[list[Any], list[int]]:
    """The items of a streamed answer and the encoded size of each response; every
    response must carry at least one item (CRI)."""
    items, sizes = [], []
    for r in responses:
        batch = list(getattr(r, field))
        assert batch, "a streamed response without items"
        items += batch
        sizes.append(r.ByteSize())
    return items, sizes


def _too_big(call: Any, request: Any, stream_name: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=120)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stream_name in (info.value.details() or "")


def test_stream_rpcs_deliver_what_list_cannot(d: DaemonProcess, busybox: str) -> None:
    pull(d, busybox)
    pods, created = [], []
    for p in range(PODS):
        cfg = pod_config(labels={"stream-test": str(p)})
        pod = run_pod(d, cfg)
        pods.append(pod)
        for i in range(PER_POD):
            cc = container_config(f"c{i}", busybox, ["true"], labels={"n": str(i)})
            cc.annotations["blob"] = "x" * ANNOTATION
            created.append(create_container(d, pod, cfg, cc))

    rt = d.runtime
    # ListContainers: over the limit, refused with a pointer to the stream (before: gRPC's own
    # "Sent message larger than max", logged by the daemon as a success)
    _too_big(rt.ListContainers, pb.ListContainersRequest(), "StreamContainers")
    items, sizes = _collect(rt.StreamContainers(pb.StreamContainersRequest(), timeout=120), "containers")
    assert sorted(c.id for c in items) == sorted(created) and len(items) == len(set(c.id for c in items))
    assert sum(sizes) > LIMIT and max(sizes) <= CHUNK_BYTES + 16 and len(sizes) >= 5
    assert all(c.state == pb.CONTAINER_CREATED and len(c.annotations["blob"]) == ANNOTATION for c in items)

    # filters: the same as ListContainers', whose filtered answer fits again
    flt = pb.ContainerFilter(pod_sandbox_id=pods[1], label_selector={"n": "7"})
    listed = rt.ListContainers(pb.ListContainersRequest(filter=flt), timeout=60).containers
    streamed, _ = _collect(rt.StreamContainers(pb.StreamContainersRequest(filter=flt), timeout=60), "containers")
    assert [c.id for c in streamed] == [c.id for c in listed] and len(listed) == 1
    one_pod = pb.ContainerFilter(pod_sandbox_id=pods[2])
    listed = rt.ListContainers(pb.ListContainersRequest(filter=one_pod), timeout=60).containers
    streamed, _ = _collect(rt.StreamContainers(pb.StreamContainersRequest(filter=one_pod), timeout=60), "containers")
    assert [c.id for c in streamed] == [c.id for c in listed] and len(listed) == PER_POD
    none = pb.ContainerFilter(label_selector={"n": "absent"})
    assert list(rt.StreamContainers(pb.StreamContainersRequest(filter=none), timeout=60)) == []

    # container stats carry the annotations too
    _too_big(rt.ListContainerStats, pb.ListContainerStatsRequest(), "StreamContainerStats")
    stats, sizes = _collect(rt.StreamContainerStats(pb.StreamContainerStatsRequest(), timeout=120),
                            "container_stats")
    assert sorted(s.attributes.id for s in stats) == sorted(created) and max(sizes) <= CHUNK_BYTES + 16

    # pod stats embed their containers' stats: each pod (~4.3 MiB) goes in a response of its own
    _too_big(rt.ListPodSandboxStats, pb.ListPodSandboxStatsRequest(), "StreamPodSandboxStats")
    pod_stats, sizes = _collect(rt.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(), timeout=120),
                                "pod_sandbox_stats")
    assert sorted(s.attributes.id for s in pod_stats) == sorted(pods) and len(sizes) == PODS
    assert all(len(s.linux.containers) == PER_POD for s in pod_stats)
    flt_stats = pb.PodSandboxStatsFilter(label_selector={"stream-test": "3"})
    pod_stats, _ = _collect(rt.StreamPodSandboxStats(pb.StreamPodSandboxStatsRequest(filter=flt_stats),
                                                     timeout=60), "pod_sandbox_stats")
    assert [s.attributes.id for s in pod_stats] == [pods[3]]

    # the small answers: the same items as their List* twins
    metrics, _ = _collect(rt.StreamPodSandboxMetrics(pb.StreamPodSandboxMetricsRequest(), timeout=120),
                          "pod_sandbox_metrics")
    listed_metrics = rt.ListPodSandboxMetrics(pb.ListPodSandboxMetricsRequest(), timeout=120).pod_metrics
    assert sorted(m.pod_sandbox_id for m in metrics) == sorted(m.pod_sandbox_id for m in listed_metrics) \
        == sorted(pods)
    sandboxes, _ = _collect(rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(), timeout=60), "pod_sandboxes")
    assert [s.id for s in sandboxes] == [s.id for s in rt.ListPodSandbox(pb.ListPodSandboxRequest(),
                                                                         timeout=60).items]
    by_label = pb.PodSandboxFilter(label_selector={"stream-test": "0"})
    sandboxes, _ = _collect(rt.StreamPodSandboxes(pb.StreamPodSandboxesRequest(filter=by_label), timeout=60),
                            "pod_sandboxes")
    assert [s.id for s in sandboxes] == [pods[0]]
    images, _ = _collect(d.images.StreamImages(pb.StreamImagesRequest(), timeout=60), "images")
    listed_images = d.images.ListImages(pb.ListImagesRequest(), timeout=60).images
    assert [i.id for i in images] == [i.id for i in listed_images] and len(images) >= 1
    by_ref = pb.ImageFilter(image=pb.ImageSpec(image=busybox))
    images, _ = _collect(d.images.StreamImages(pb.StreamImagesRequest(filter=by_ref), timeout=60), "images")
    assert [i.id for i in images] == [listed_images[0].id]
