"""The cri-shim engine: sandboxes, containers, images, networking, on Linux.

Knows nothing of gRPC, protobuf or Prometheus (see docs/ARCHITECTURE.md §3): the CRI edge in
``cri_shim`` translates to and from this package's model and maps its typed errors.
"""
