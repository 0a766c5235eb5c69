"""The public image builder used by every image, container and conformance test."""

from __future__ import annotations

import io
import json
import tarfile

from tests.support import imagebuilder as ib


def members(blob: ib.Blob) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(blob.data), mode="r:*") as tf:
        return {m.name: m for m in tf.getmembers()}


def test_busybox_image_layout() -> None:
    img = ib.busybox_image()
    (layer,) = img.layers
    m = members(layer)
    assert m["bin/busybox"].mode == 0o755 and m["bin/busybox"].size == ib.BUSYBOX.stat().st_size
    assert m["bin/sh"].issym() and m["bin/sh"].linkname == "busybox"
    assert m["tmp"].mode == 0o1777
    config = json.loads(img.config.data)
    assert config["rootfs"]["diff_ids"] == list(img.diff_ids)
    assert config["architecture"] == ib.host_arch()
    manifest = json.loads(img.manifest.data)
    assert manifest["config"]["digest"] == img.id
    assert manifest["layers"][0]["digest"] == layer.digest


def test_whiteouts_and_compressions() -> None:
    img = ib.multi_layer_image()
    assert [b.media_type.rsplit(".", 1)[-1] for b in img.layers] == ["tar+gzip", "tar+zstd", "tar", "tar+gzip"]
    m = members(img.layers[2])
    assert "opt/.wh.removed.txt" in m and "opt/cache/.wh..wh..opq" in m
    assert ib.build_image([ib.Layer()], fmt="docker").manifest.media_type == ib.DOCKER_MANIFEST
