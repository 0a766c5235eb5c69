"""A gRPC server written for cri-shim: HTTP/2 on the event loop, no gRPC C-core.

Why: a CRI call through grpcio's asyncio server costs about 0.33 ms on the 2-core test machine
even when its handler returns at once (C-core's completion queues, its poller thread and the
hand-over to the event loop), three times containerd's 0.11 ms; kubelet's relist, status and
image calls are all that floor. Parsing the frames in an ``asyncio.Protocol`` and answering
from the same loop iteration costs about 0.13 ms (measured with a Go grpc client, the one
kubelet and crictl use; README, Performance). grpcio stays available (``grpc_server =
"grpcio"``) and the test clients still use it.

Scope: what a gRPC client of a CRI runtime sends. Unary and server-streaming methods, one
uncompressed message per request, deadlines (``grpc-timeout``), cancellation (RST_STREAM),
flow control both ways, and graceful shutdown (GOAWAY, then the grace period).
"""

from cri_shim.h2grpc.connection import Limits, Route
from cri_shim.h2grpc.context import Context, RpcAbort
from cri_shim.h2grpc.server import Server

__all__ = ["Context", "Limits", "Route", "RpcAbort", "Server"]
