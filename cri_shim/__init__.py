"""cri-shim: the CRI edge (gRPC servicers, streaming server, metrics, config, CLI)."""

__version__ = "0.1.0"
