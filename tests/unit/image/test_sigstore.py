"""Sigstore signature verification with public keys (containers/image's rules), and the
attachment fetch from a registry (an httpx.MockTransport registry)."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from runtime.errors import FailedPrecondition, InvalidArgument
from runtime.image import sigstore
from runtime.image.policy import Identity, Requirement
from runtime.image.reference import parse
from runtime.image.registry import RegistryClient
from tests.support.cosign import ANNOTATION, SIMPLESIGNING, PrivateKey, payload, public_pem, sign

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
REPO = "reg.example/team/app"
IMAGE = parse(f"{REPO}:v1")
WHERE = "signature policy /p (scope 'x')"


def requirement(*keys: PrivateKey, identity: Identity | None = None) -> Requirement:
    return Requirement("sigstoreSigned", tuple(public_pem(k) for k in keys), identity or Identity("matchRepository"))


def signature(key: PrivateKey, data: bytes) -> sigstore.Signature:
    return sigstore.Signature(SIMPLESIGNING, data, {ANNOTATION: sign(key, data)})


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1()),
                                 ed25519.Ed25519PrivateKey.generate(),
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048)],
                         ids=["p256", "p384", "ed25519", "rsa"])
def test_a_valid_signature_is_accepted(key: PrivateKey) -> None:
    sig = signature(key, payload(REPO, DIGEST))
    assert sigstore.check(requirement(key), IMAGE, MANIFEST, [sig], WHERE) == ""


def test_rejections_say_why() -> None:
    key, other = ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate()
    good = payload(REPO, DIGEST)
    req = requirement(key)

    def reason(*sigs: sigstore.Signature, r: Requirement = req) -> str:
        return sigstore.check(r, IMAGE, MANIFEST, list(sigs), WHERE)

    assert reason() == "a signature was required, but no signature exists"
    assert "1 attachments that are not signatures" in reason(sigstore.Signature("application/x-attestation", b"", {}))
    tampered = signature(key, good)
    tampered = sigstore.Signature(SIMPLESIGNING, good.replace(b"team/app", b"team/evil"), tampered.annotations)
    assert "cryptographic signature verification failed" in reason(tampered)
    assert "cryptographic signature verification failed" in reason(signature(other, good))  # not the policy's key
    assert reason(sigstore.Signature(SIMPLESIGNING, good, {})) == f"missing {ANNOTATION} annotation"
    assert "not base64" in reason(sigstore.Signature(SIMPLESIGNING, good, {ANNOTATION: "%%%"}))
    other_digest = "sha256:" + "0" * 64
    assert f"signature for digest {other_digest} does not match" in reason(signature(key, payload(REPO, other_digest)))
    assert "identity 'reg.example/team/other' is not accepted" in reason(
        signature(key, payload("reg.example/team/other", DIGEST)))
    # cosign signs the repository only: the default rule wants the exact tag.
    assert "(matchRepoDigestOrExact)" in reason(signature(key, good), r=requirement(key, identity=Identity()))
    extra = json.loads(good)
    extra["critical"]["extra"] = 1
    assert "exactly the fields" in reason(signature(key, json.dumps(extra).encode()))
    wrong_type = good.replace(b"cosign container image signature", b"something else")
    assert "unrecognized signature type" in reason(signature(key, wrong_type))
    both = reason(signature(other, good), signature(key, payload(REPO, other_digest)))
    assert both.startswith("none of the signatures were accepted, reasons: cryptographic")
    # One good signature among bad ones is enough; either of two keys may have made it.
    assert reason(signature(other, good), signature(key, good)) == ""
    assert sigstore.check(requirement(other, key), IMAGE, MANIFEST, [signature(key, good)], WHERE) == ""


def test_by_digest_the_repository_is_matched() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    by_digest = parse(f"{REPO}@{DIGEST}")
    sig = signature(key, payload(f"{REPO}:v1", DIGEST))
    assert sigstore.check(requirement(key, identity=Identity()), by_digest, MANIFEST, [sig], WHERE) == ""


def test_a_bad_key_in_the_policy_is_a_precondition() -> None:
    with pytest.raises(FailedPrecondition, match=r"scope 'x'.*key 1 is not a PEM public key"):
        sigstore.check(Requirement("sigstoreSigned", (b"garbage",)), IMAGE, MANIFEST, [], WHERE)


async def test_fetch_reads_the_sig_tag() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    data = payload(REPO, DIGEST)
    blob_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    layers = [{"mediaType": SIMPLESIGNING, "digest": blob_digest, "size": len(data),
               "annotations": {ANNOTATION: sign(key, data)}},
              {"mediaType": "application/vnd.in-toto+json", "digest": "sha256:" + "1" * 64, "size": 3}]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {}, "layers": layers}).encode()
    tag = "sha256-" + DIGEST[7:] + ".sig"
    blobs = {blob_digest: data}
    served: dict[str, tuple[bytes, str]] = {tag: (manifest, "application/vnd.oci.image.manifest.v1+json")}

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/v2/team/app/manifests/"):
            ref = path.rsplit("/", 1)[1]
            if ref in served:
                body, ctype = served[ref]
                return httpx.Response(200, content=body, headers={"Content-Type": ctype})
        if path.startswith("/v2/team/app/blobs/") and path.rsplit("/", 1)[1] in blobs:
            return httpx.Response(200, content=blobs[path.rsplit("/", 1)[1]])
        return httpx.Response(404)

    client = RegistryClient(10, transport=httpx.MockTransport(handle))
    try:
        session = client.session("reg.example", "team/app", False, None)
        sigs = await sigstore.fetch(session, DIGEST)
        assert [s.media_type for s in sigs] == [SIMPLESIGNING, "application/vnd.in-toto+json"]
        assert sigstore.check(requirement(key), IMAGE, MANIFEST, sigs, WHERE) == ""
        assert await sigstore.fetch(session, "sha256:" + "2" * 64) == []  # no .sig tag: no signatures
        blobs[blob_digest] = data + b" "  # a payload that is not what its digest says
        with pytest.raises(InvalidArgument, match=r"larger than its descriptor|does not match its digest"):
            await sigstore.fetch(session, DIGEST)
        big = [{**layers[0], "digest": "sha256:" + f"{i:064x}", "size": sigstore.MAX_SIGNATURE_BYTES}
               for i in range(5)]
        served[tag] = (json.dumps({"schemaVersion": 2, "layers": big}).encode(),
                       "application/vnd.oci.image.manifest.v1+json")
        with pytest.raises(InvalidArgument, match="add up to more than"):
            await sigstore.fetch(session, DIGEST)
        served[tag] = (manifest, "application/vnd.docker.distribution.manifest.v2+json")
        with pytest.raises(InvalidArgument, match=r"not application/vnd\.oci\.image\.manifest\.v1"):
            await sigstore.fetch(session, DIGEST)
    finally:
        await client.close()


def test_attachment_tag() -> None:
    assert sigstore.attachment_tag(DIGEST) == f"sha256-{DIGEST[7:]}.sig"
    with pytest.raises(InvalidArgument):
        sigstore.attachment_tag("sha256:../../x")
