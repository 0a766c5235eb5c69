"""Manifest, index and config parsing; platform choice; chain ids."""

from __future__ import annotations

import hashlib
import json

import pytest

from runtime.errors import InvalidArgument, NotFound, Unimplemented
from runtime.image import manifest as mf
from tests.support import imagebuilder as ib

AMD64 = mf.Platform("linux", "amd64")


def desc(arch: str, variant: str = "", os_: str = "linux", media: str = mf.OCI_MANIFEST) -> dict[str, object]:
    d = "sha256:" + hashlib.sha256(f"{os_}{arch}{variant}".encode()).hexdigest()
    plat = {"os": os_, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": media, "digest": d, "size": 10, "platform": plat}


def index(*descs: dict[str, object]) -> mf.Index:
    parsed = mf.parse_manifest(json.dumps({"schemaVersion": 2, "manifests": list(descs)}).encode(), mf.OCI_INDEX)
    assert isinstance(parsed, mf.Index)
    return parsed


def test_parse_built_manifests_both_formats() -> None:
    for fmt in ("oci", "docker"):
        img = ib.busybox_image(fmt=fmt)  # type: ignore[arg-type]
        parsed = mf.parse_manifest(img.manifest.data, "application/octet-stream")
        assert isinstance(parsed, mf.Manifest)
        assert parsed.config.digest == img.config.digest
        assert [layer.digest for layer in parsed.layers] == [b.digest for b in img.layers]


def test_schema1_and_unknown_types_refused() -> None:
    with pytest.raises(Unimplemented):
        mf.parse_manifest(b'{"schemaVersion":1,"fsLayers":[]}', mf.DOCKER_SCHEMA1[1])
    with pytest.raises(InvalidArgument):
        mf.parse_manifest(b'{"mediaType":"application/x-foo"}', "")
    with pytest.raises(InvalidArgument):
        mf.parse_manifest(b"not json", mf.OCI_MANIFEST)
    bad_layer = {"schemaVersion": 2, "mediaType": mf.OCI_MANIFEST,
                 "config": {"mediaType": mf.OCI_CONFIG, "digest": "sha256:" + "1" * 64, "size": 1},
                 "layers": [{"mediaType": "application/x-evil", "digest": "sha256:" + "2" * 64, "size": 1}]}
    with pytest.raises(InvalidArgument, match="unsupported media type"):
        mf.parse_manifest(json.dumps(bad_layer).encode())
    bad_digest = dict(bad_layer, layers=[{"mediaType": mf.OCI_LAYER, "digest": "sha256:../../x", "size": 1}])
    with pytest.raises(InvalidArgument):
        mf.parse_manifest(json.dumps(bad_digest).encode())


def test_choose_platform() -> None:
    idx = index(desc("arm64", "v8"), desc("amd64"), desc("unknown", os_="unknown"))
    assert idx.manifests[1].digest == mf.choose_platform(idx, AMD64).digest
    arm = mf.choose_platform(idx, mf.Platform("linux", "arm64", "v8"))
    assert arm.platform == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    v7 = index(desc("arm", "v6"), desc("arm", "v7"))
    assert mf.choose_platform(v7, mf.Platform("linux", "arm", "v7")).platform["variant"] == "v7"  # type: ignore[index]
    with pytest.raises(NotFound, match="linux/s390x"):
        mf.choose_platform(idx, mf.Platform("linux", "s390x"))


def test_parse_config_and_chain_ids() -> None:
    img = ib.httpd_image()
    cfg = mf.parse_config(img.config.data)
    assert cfg.diff_ids == img.diff_ids
    assert cfg.config.cmd == ("httpd", "-f", "-v", "-p", "80", "-h", "/www")
    assert cfg.config.exposed_ports == ("80/tcp",)
    assert cfg.config.working_dir == "/www"
    assert cfg.config.stop_signal == "SIGTERM"
    assert mf.chain_ids(img.diff_ids) == img.chain_ids
    assert mf.chain_ids(img.diff_ids)[0] == img.diff_ids[0]
    with pytest.raises(InvalidArgument):
        mf.parse_config(b'{"config":{}}')


def test_host_platform_is_linux() -> None:
    assert mf.host_platform().os == "linux"
    assert mf.host_platform().architecture == ib.host_arch()
