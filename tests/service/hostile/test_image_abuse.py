"""Hostile images pulled through the real daemon: crafted tar headers in a layer.

Each image is pushed to the module's local registry and pulled with PullImage over gRPC.
The daemon must answer a clean InvalidArgument naming the refusal (no hang, no INTERNAL),
stay up, keep nothing of the image (no blob, no half-written download, no layer directory)
and pull a good image afterwards; its unpack workers must not carry the daemon's OOM
protection.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import grpc
import pytest

from cri_shim.api.gen import api_pb2 as pb
from runtime.image.unpack_worker import OOM_SCORE_ADJ
from tests.support import imagebuilder as ib
from tests.support import rawtar
from tests.support.daemon import DaemonProcess
from tests.support.names import unique
from tests.support.registry import Registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(120)]

_ENTRY = rawtar.member("etc/hostile", b"x")

HOSTILE_LAYERS: dict[str, tuple[bytes, str]] = {
    # Python 3.11.7's pax regexes backtrack quadratically on this (CVE-2024-6232) and then
    # accept it; at 1 MiB the worker would spin for minutes.
    "cve-2024-6232": (rawtar.pax(b"1 hdrcharset=" * 8000) + _ENTRY, "not framed by its length"),
    # An 8 GiB pax header: tarfile would read it whole into memory.
    "huge-pax-size": (rawtar.header("PaxHeaders/x", tarfile.XHDTYPE, 8 << 30) + b"\0" * (2 << 20),
                      "pax header of 8589934592 bytes"),
    # A 64 MiB GNU long name claim.
    "huge-gnu-longname": (rawtar.header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 64 << 20) + b"a" * (2 << 20),
                          "longer than PATH_MAX"),
    # tarfile recurses once per extension header: thousands of them.
    "header-bomb": (rawtar.pax(rawtar.record("comment", "x")) * 5000 + _ENTRY, "extension headers before one entry"),
    "many-pax-records": (rawtar.pax(rawtar.record("comment", "") * 20_000) + _ENTRY, "more than 1024 records"),
    "mtime-inf": (rawtar.pax(rawtar.record("mtime", "inf")) + _ENTRY, "is not a time"),
}


def _pids_of_children(parent: int, marker: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent and marker in cmdline:
            found.append(int(entry))
    return found


def _leftovers(d: DaemonProcess, layers_before: set[str], digests: list[str]) -> list[str]:
    images = d.root / "images"
    left = [f"ingest/{n}" for n in os.listdir(images / "content/ingest")]
    left += [f"layers/{n}" for n in set(os.listdir(images / "layers")) - layers_before]
    blobs = images / "content/blobs/sha256"
    left += [f"blob {dg}" for dg in digests if (blobs / dg.removeprefix("sha256:")).exists()]
    return left


def _pull(d: DaemonProcess, ref: str) -> None:
    d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=90)


@pytest.mark.parametrize("case", sorted(HOSTILE_LAYERS))
def test_crafted_tar_headers_refused_cleanly(d: DaemonProcess, hostile_reg: Registry, busybox: str,
                                             case: str) -> None:
    _pull(d, busybox)  # its layer is also the hostile image's first: present before and after
    layer, message = HOSTILE_LAYERS[case]
    name = f"test/{unique('evil')}"
    image = ib.build_image([ib.busybox_layer(), layer + rawtar.END])
    hostile_reg.push(name, "v1", image)
    layers_before = set(os.listdir(d.root / "images/layers"))
    with pytest.raises(grpc.RpcError) as err:
        _pull(d, hostile_reg.ref(name, "v1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    details = err.value.details() or ""
    assert "unsafe tar header" in details and message in details, details
    assert len(details) < 1024
    assert d.proc is not None and d.proc.poll() is None
    assert _leftovers(d, layers_before, [image.config.digest, image.layers[-1].digest]) == []
    listed = d.images.ListImages(pb.ListImagesRequest(), timeout=10).images
    assert all(hostile_reg.ref(name, "v1") not in i.repo_tags for i in listed)
    # The daemon still pulls, and its unpack workers are likelier OOM victims than itself.
    other = f"test/{unique('good')}"
    hostile_reg.push(other, "v1", ib.build_image([ib.busybox_layer(), ib.Layer().file("etc/good", "y")]))
    _pull(d, hostile_reg.ref(other, "v1"))
    workers = _pids_of_children(d.proc.pid, b"runtime.image.unpack_worker")
    assert workers, "the daemon unpacked in no worker process"
    daemon_adj = int(Path(f"/proc/{d.proc.pid}/oom_score_adj").read_text())
    for pid in workers:
        assert int(Path(f"/proc/{pid}/oom_score_adj").read_text()) == max(OOM_SCORE_ADJ, daemon_adj)
