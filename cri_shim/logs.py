"""Logging set-up: one line per record, ``key=value`` fields, UTC timestamps.

Handlers log ids and latencies (``cri_shim.api.dispatch``); nothing logs request bodies,
so PullImage credentials never reach the log.
"""

from __future__ import annotations

import logging
import sys
import time

from cri_shim.config import log_level_number


class _Formatter(logging.Formatter):
    converter = staticmethod(time.gmtime)

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ level=%(levelname)s logger=%(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"
        )


def setup(level: str) -> None:
    """Route every logger to stderr at ``level`` (from config or --log-level)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(log_level_number(level))
    # grpc and httpx are chatty at debug; keep our own debug lines readable.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, log_level_number(level)))
    # httpx logs every registry request at INFO; our pull logs say what matters (and URLs of
    # token endpoints are not worth a line each).
    # hpack (the native CRI server's header decoder) logs every header field it decodes.
    for chatty in ("httpx", "httpcore", "hpack"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, log_level_number(level)))
