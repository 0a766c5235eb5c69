"""Exec, attach and port-forward as the engine offers them to the streaming edge.

- ``backend``: the :class:`~runtime.streaming.backend.StreamingBackend` protocol the edge's
  streaming server (cri_shim.streaming) calls, the validated requests and the client's
  streams it passes; engine types only, so the edge needs nothing else of the engine.
- ``service``: :class:`~runtime.streaming.service.StreamingService`, the backend over the
  pod shims (sessions and port-forward sockets through runtime.shim), and the Exec/Attach/
  PortForward target checks. ``Engine.streaming()`` builds it.
"""
