"""The image policy (image.signature_policy, containers-policy.json(5)) on real pulls from a
loopback registry: reject, insecureAcceptAnything, and sigstoreSigned with a key made here
and cosign-style signatures pushed here (a tampered one refused). kubelet sees
"SignatureValidationFailed: ..." with code UNKNOWN, as from CRI-O."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cri_shim.api.gen import api_pb2 as pb
from tests.support import cosign
from tests.support import imagebuilder as ib
from tests.support.daemon import DaemonProcess, running_daemon
from tests.support.names import unique
from tests.support.registry import Registry, running_registry

pytestmark = [pytest.mark.service, pytest.mark.peers, pytest.mark.root, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("reg")) as r:
        yield r


def tiny(text: str) -> ib.BuiltImage:
    return ib.build_image([ib.Layer().file("t", text)])


def pull(d: DaemonProcess, ref: str) -> str:
    return str(d.images.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=ref)), timeout=90).image_ref)


def refused(d: DaemonProcess, ref: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        pull(d, ref)
    assert err.value.code() == grpc.StatusCode.UNKNOWN, err.value
    details = err.value.details() or ""
    assert details.startswith("SignatureValidationFailed: "), details
    return details


def blob_present(d: DaemonProcess, digest: str) -> bool:
    return (d.root / "images/content/blobs/sha256" / digest.split(":", 1)[1]).exists()


def test_reject_accept_and_sigstore_signed(tmp_path: Path, reg: Registry) -> None:
    ns = unique("pol")
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "cosign.pub").write_bytes(cosign.public_pem(key))
    policy_path = tmp_path / "policy.json"
    signed_scope = f"{reg.host}/{ns}/signed"
    policy = {
        "default": [{"type": "insecureAcceptAnything"}],
        "transports": {"docker": {
            f"{reg.host}/{ns}/rejected": [{"type": "reject"}],
            signed_scope: [{"type": "sigstoreSigned", "keyPath": str(tmp_path / "cosign.pub"),
                            "signedIdentity": {"type": "matchRepository"}}],
        }},
    }
    policy_path.write_text(json.dumps(policy))
    images = {name: tiny(name) for name in ("rejected", "free", "signed", "tampered")}
    repo = {name: f"{ns}/{'signed' if name == 'tampered' else name}" for name in images}
    tag = {name: "v2" if name == "tampered" else "v1" for name in images}
    digests = {name: reg.push(repo[name], tag[name], img) for name, img in images.items()}
    ref = {name: reg.ref(repo[name], tag[name]) for name in images}

    with running_daemon(tmp_path / "d", extra_config=f'[image]\nsignature_policy = "{policy_path}"\n') as d:
        details = refused(d, ref["rejected"])
        assert f"is rejected by signature policy {policy_path} (scope '{reg.host}/{ns}/rejected'): reject" in details
        assert pull(d, ref["free"]) == images["free"].id  # the default: insecureAcceptAnything

        details = refused(d, ref["signed"])
        assert "sigstoreSigned: a signature was required, but no signature exists" in details, details
        assert not blob_present(d, images["signed"].layers[0].digest)  # refused before any layer

        data = cosign.payload(f"{reg.host}/{repo['signed']}", digests["signed"])
        cosign.push_signatures(reg, repo["signed"], digests["signed"],
                               [(data, {cosign.ANNOTATION: cosign.sign(key, data)})])
        assert pull(d, ref["signed"]) == images["signed"].id

        # Tampered: a valid signature of another payload, the payload then pointed at this image.
        other = cosign.payload(f"{reg.host}/{repo['tampered']}", digests["signed"])
        forged = other.replace(digests["signed"].encode(), digests["tampered"].encode())
        cosign.push_signatures(reg, repo["tampered"], digests["tampered"],
                               [(forged, {cosign.ANNOTATION: cosign.sign(key, other)})])
        details = refused(d, ref["tampered"])
        assert "cryptographic signature verification failed" in details, details
        assert not blob_present(d, images["tampered"].layers[0].digest)
        listed = {i.id for i in d.images.ListImages(pb.ListImagesRequest(), timeout=10).images}
        assert listed == {images["free"].id, images["signed"].id}

        # The key file is read at each pull: after a key rotation the old signature is refused.
        (tmp_path / "cosign.pub").write_bytes(cosign.public_pem(ec.generate_private_key(ec.SECP256R1())))
        assert "cryptographic signature verification failed" in refused(d, ref["signed"])

        # signedBy (GPG) is refused as unsupported, by name, never accepted (the file is re-read).
        policy["transports"]["docker"][signed_scope] = [  # type: ignore[index]
            {"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/nonexistent.gpg"}]
        policy_path.write_text(json.dumps(policy))
        with pytest.raises(grpc.RpcError) as err:
            pull(d, ref["signed"])
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "signedBy (GPG simple signing) is not supported" in (err.value.details() or "")
