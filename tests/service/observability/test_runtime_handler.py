"""The runtime handler the RuntimeClass in k8s-manifests/ names: listed by Status, accepted by
RunPodSandbox (kubelet sends it as RunPodSandboxRequest.runtime_handler); others refused."""

from __future__ import annotations

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from tests.support.daemon import DaemonProcess
from tests.support.k8s_schemas import load_documents
from tests.support.pods import pod_config, remove_pod
from tests.support.scrape import MANIFESTS

pytestmark = [pytest.mark.service, pytest.mark.root, pytest.mark.timeout(120)]


def test_runtime_class_handler_runs_pods(d: DaemonProcess) -> None:
    (rc,) = load_documents(MANIFESTS / "runtimeclass.yaml")
    handler = rc["handler"]
    status = d.runtime.Status(pb.StatusRequest(), timeout=10)
    assert handler in [h.name for h in status.runtime_handlers]
    pod = d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(), runtime_handler=handler),
                                  timeout=60).pod_sandbox_id
    st = d.runtime.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod), timeout=10).status
    assert st.state == pb.SANDBOX_READY and st.runtime_handler == handler
    remove_pod(d, pod)
    with pytest.raises(grpc.RpcError) as info:
        d.runtime.RunPodSandbox(pb.RunPodSandboxRequest(config=pod_config(), runtime_handler="kata"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
