"""Registry-supplied text in our errors: a short, printable summary, never the raw bytes.

Pull errors travel to kubelet, which copies them into pod events and `kubectl describe`
output; a registry (or anything a redirect reaches) chooses its error bodies, header values
and URLs. So what we quote of them is printable ASCII only (no control characters, no
terminal escapes, no newlines that would forge log lines), whitespace-collapsed and capped
at :data:`MAX_SUMMARY` characters. For a distribution-spec error body (``{"errors": [{"code":
..., "message": ...}]}``) the summary is its codes and messages, as docker and containerd
show them.
"""

from __future__ import annotations

import json
from typing import Any

#: Characters of registry text quoted in one error.
MAX_SUMMARY = 200
#: Bytes of an error body read to summarise it (the rest is never read).
MAX_BODY = 4096


def printable(text: object, limit: int = MAX_SUMMARY) -> str:
    """``text`` (any object, via str) as printable ASCII, whitespace collapsed, at most
    ``limit`` characters (an ellipsis "..." marks a cut)."""
    raw = str(text)[: limit * 4]
    cleaned = " ".join("".join(c if " " <= c <= "~" else " " for c in raw).split())
    if len(cleaned) > limit or len(raw) < len(str(text)):
        return cleaned[: max(0, limit - 3)] + "..."
    return cleaned


def error_summary(body: bytes) -> str:
    """A summary of a registry's error response body (at most MAX_BODY bytes of it)."""
    data = body[:MAX_BODY]
    try:
        doc: Any = json.loads(data)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("errors"), list):
        parts = []
        for err in doc["errors"][:5]:
            if isinstance(err, dict):
                code, message = err.get("code", ""), err.get("message", "")
                parts.append(f"{code}: {message}" if code and message else str(code or message))
        return printable("; ".join(p for p in parts if p))
    return printable(data.decode("utf-8", "replace"))
