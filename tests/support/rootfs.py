"""A minimal busybox root filesystem in a directory, for tests below the image layer."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

BUSYBOX = Path("/bin/busybox")

APPLETS = (
    "sh", "echo", "cat", "sleep", "id", "ls", "mount", "hostname", "true", "false", "ps", "kill",
    "env", "pwd", "touch", "mkdir", "rm", "wc", "head", "tail", "yes", "dd", "grep", "nc", "httpd",
    "wget", "printf", "stat", "test", "tr", "cut", "uname", "whoami", "seq",
)


def busybox_rootfs(path: Path) -> Path:
    """Populate ``path`` with /bin/busybox, applet symlinks, /etc/passwd and /etc/group."""
    (path / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, path / "bin" / "busybox")
    for applet in APPLETS:
        link = path / "bin" / applet
        if not link.exists():
            os.symlink("busybox", link)
    for d in ("etc", "proc", "sys", "dev", "tmp", "root", "var"):
        (path / d).mkdir(exist_ok=True)
    (path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (path / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n")
    os.chmod(path / "tmp", 0o1777)
    return path
