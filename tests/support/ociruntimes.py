"""The external OCI runtimes the runtime-handler service tests run against (Debian 12's runc
and crun; scripts/install.sh installs both): every such test runs once on each, one daemon
per runtime (the ``oci`` fixture of tests/service/features/conftest.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OciRuntime:
    """One OCI runtime binary the tests run against, and the handler naming it."""

    name: str
    path: str

    @property
    def handler(self) -> str:
        return f"test-{self.name}"


RUNTIMES = (OciRuntime("runc", "/usr/sbin/runc"), OciRuntime("crun", "/usr/bin/crun"))
