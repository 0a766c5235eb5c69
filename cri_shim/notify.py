"""sd_notify(3) without libsystemd: tell systemd (``Type=notify``) that the daemon is ready.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace) to a
notify service; one datagram with ``READY=1`` marks it started, ``STOPPING=1`` stopping.
The contrib unit uses it so that ``systemctl start cri-shim`` (and kubelet, ordered after
it) returns only once recovery is done and the CRI answers with RuntimeReady.
Outside systemd there is no socket and nothing is sent.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str, environ: dict[str, str] | None = None) -> bool:
    """Send ``state`` ("READY=1", "STOPPING=1", "STATUS=...") to systemd; True if sent.

    Never raises: a notification that cannot be sent is logged (systemd would then time the
    start out, which says more than a crash here would).
    """
    address = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract name; not notifying", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("sd_notify %s to %s failed: %s", state, address.lstrip("\0"), exc)
        return False
    return True
