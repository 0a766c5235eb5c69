"""A layer-unpack worker: a fresh, single-threaded interpreter that applies layers on request.

Started by :class:`runtime.image.unpack_pool.UnpackPool` as ``python -m
runtime.image.unpack_worker`` (never forked from the daemon). Protocol: one JSON object per
line on stdin::

    {"blob": PATH, "target": DIR, "max_bytes": N, "max_entries": N, "label": STR}

and one JSON line on stdout per request: ``{"ok": true, "result": {...ApplyResult}}`` or
``{"ok": false, "error": PAYLOAD}`` (runtime.errorcodec: the exception's class and MRO names,
an OSError's errno), which the pool raises again as the same class.
The worker exits on end of input and dies with its parent (PR_SET_PDEATHSIG), so a killed
daemon never leaves it writing into a snapshot that recovery is about to remove.

It parses attacker data and holds no state, so it is the cheapest process on the node for the
OOM killer to take (a pull fails, kubelet retries it): it starts with the daemon's
oom_score_adj (the systemd unit sets -999) and raises its own to :data:`OOM_SCORE_ADJ`,
between a system service's 0 and a BestEffort pod's 1000 (kubelet's policy). Raising needs
no privilege (fs/proc/base.c); a value already above it is kept. The pool bounds its time
per layer.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from runtime.cgroups.oomscore import set_oom_score_adj
from runtime.errorcodec import encode_error
from runtime.image.applier import ApplyLimits, apply_layer, describe

#: Our own oom_score_adj: a likelier OOM victim than the daemon, system services and most pods.
OOM_SCORE_ADJ = 500


def handle(request: dict[str, Any]) -> dict[str, Any]:
    limits = ApplyLimits(max_bytes=int(request["max_bytes"]), max_entries=int(request["max_entries"]))
    try:
        with open(request["blob"], "rb", buffering=1 << 20) as f:
            result = apply_layer(f, request["target"], limits=limits, label=str(request.get("label", "")))
    except Exception as exc:
        return {"ok": False, "error": encode_error(exc)}
    return {"ok": True, "result": describe(result)}


def main() -> int:
    from runtime.linux import libc

    libc.set_pdeathsig(signal.SIGKILL)
    if os.getppid() == 1:
        return 1  # the parent died before the death signal was armed
    set_oom_score_adj(OOM_SCORE_ADJ)  # never below: max(OOM_SCORE_ADJ, inherited)
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        reply = handle(json.loads(line))
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
