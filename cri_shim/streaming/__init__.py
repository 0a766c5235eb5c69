"""The streaming server for exec, attach and port-forward (docs/ARCHITECTURE.md §7).

Layers, bottom up:

- ``spdy.frames`` / ``spdy.session``: SPDY/3.1 as a sans-I/O state machine (bytes in, events
  and bytes out); ``spdy.connection`` runs it over an asyncio byte transport.
- ``websocket``: RFC 6455 through wsproto, plus the Kubernetes channel framing
  (``channel.k8s.io`` and its v4/v5/base64 variants) and SPDY tunnelled in WebSocket.
- ``remotecommand`` and ``portforward``: the Kubernetes stream protocols on either transport.
- ``server``: the HTTP/1.1 front (request head, token, upgrade), limits, idle timeouts.

The server knows nothing about containers: it calls the engine's
:class:`runtime.streaming.backend.StreamingBackend` (``Engine.streaming()``), and nothing of
the pod shims (tests/unit/test_layers.py).
"""
