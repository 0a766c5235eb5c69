"""cosign-style signatures for tests: simple-signing payloads signed with a key made in the
test, pushed as the ``sha256-<hex>.sig`` OCI manifest cosign would push (one layer per
signature, the signature in the ``dev.cosignproject.cosign/signature`` annotation)."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from tests.support import imagebuilder as ib
from tests.support.registry import Registry

SIMPLESIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
ANNOTATION = "dev.cosignproject.cosign/signature"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


def public_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def payload(docker_reference: str, manifest_digest: str, **optional: Any) -> bytes:
    """The payload cosign signs (``critical`` + ``optional``), compact JSON."""
    doc = {"critical": {"identity": {"docker-reference": docker_reference},
                        "image": {"docker-manifest-digest": manifest_digest},
                        "type": "cosign container image signature"},
           "optional": optional or None}
    return json.dumps(doc, separators=(",", ":")).encode()


def sign(key: PrivateKey, data: bytes) -> str:
    """Base64 signature over ``data`` as sigstore makes it (ECDSA/RSA over SHA-256, Ed25519)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPrivateKey):
        raw = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raw = key.sign(data)
    return base64.b64encode(raw).decode()


def push_signatures(reg: Registry, repository: str, manifest_digest: str,
                    signatures: Sequence[tuple[bytes, dict[str, str]]], media_type: str = SIMPLESIGNING) -> str:
    """Push ``signatures`` ((payload, annotations) pairs) as the .sig manifest of
    ``manifest_digest`` in ``repository``; returns the tag."""
    config = ib.Blob("application/vnd.oci.image.config.v1+json", b"{}")
    layers = [ib.Blob(media_type, data) for data, _ in signatures]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [b.descriptor(annotations=ann) for b, (_, ann) in zip(layers, signatures, strict=True)],
    }
    tag = manifest_digest.replace(":", "-", 1) + ".sig"
    with httpx.Client(base_url=reg.url, timeout=60.0, verify=reg.ssl_context()) as client:
        for blob in (config, *layers):
            ib.push_blob(client, repository, blob)
        ib.push_manifest(client, repository, tag,
                         ib.Blob(manifest["mediaType"], json.dumps(manifest).encode()))
    return tag
