"""Pod networking: the built-in bridge network and real CNI plugins (``service.NetworkService``).

Deliberately imports nothing: the pod shim factory pre-imports ``runtime.network.podside``,
which must stay light (no pyroute2, no service modules).
"""
