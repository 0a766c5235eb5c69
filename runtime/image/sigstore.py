"""Sigstore (cosign) signatures with public keys: fetch them from the registry, verify them.

Storage (cosign's tag convention, which containers/image reads as "sigstore attachments"):
the signatures of the manifest with digest ``sha256:<hex>`` are the layers of an OCI image
manifest tagged ``sha256-<hex>.sig`` in the same repository of the same registry the image
came from. Each layer of media type ``application/vnd.dev.cosign.simplesigning.v1+json``
is a signature: its blob is the payload (at most 4 MiB, digest-checked), its annotation
``dev.cosignproject.cosign/signature`` the base64 signature over the payload bytes. Other
layers (attestations, ...) are skipped. No such tag means no signatures.

Verification (containers/image ``signature/internal/sigstore_payload.go`` and
``policy_eval_sigstore.go``, public keys only):

1. the signature verifies with one of the requirement's keys: ECDSA (any curve) and RSA
   PKCS#1 v1.5 over SHA-256, or Ed25519 (sigstore's ``LoadVerifier(key, SHA256)``);
2. the payload is strict JSON ``{"critical": {"type": "cosign container image signature",
   "image": {"docker-manifest-digest": D}, "identity": {"docker-reference": R}},
   "optional": {...}}`` with exactly those critical fields;
3. D is the digest of the manifest the image reference resolved to (the top-level one,
   an index for multi-platform images);
4. R is accepted by the requirement's ``signedIdentity`` (:class:`Identity`). cosign
   writes a repository without tag, which only ``matchRepository``/``exactRepository``
   accept (containers-policy.json(5) says so).

One accepted signature is enough. The signature's bytes are parsed only after the key
verified them. Uses the ``cryptography`` package.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from runtime.image.manifest import OCI_MANIFEST
from runtime.image.policy import Requirement
from runtime.image.reference import Reference, check_digest
from runtime.image.registry import RegistrySession

SIGNATURE_MEDIA_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
PAYLOAD_TYPE = "cosign container image signature"
#: containers/image iolimits.MaxSignatureBodySize
MAX_SIGNATURE_BYTES = 4 << 20
#: What one image's attachments may add up to: a registry cannot make a pull hold more.
MAX_ATTACHMENTS = 64
MAX_TOTAL_SIGNATURE_BYTES = 16 << 20

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


@dataclass(frozen=True, slots=True)
class Signature:
    """One attachment as found: its media type, payload bytes and annotations (untrusted)."""

    media_type: str
    payload: bytes
    annotations: dict[str, str]


class Rejected(Exception):
    """Why one signature was not accepted (collected into the pull's error)."""


def attachment_tag(digest: str) -> str:
    """``sha256:<hex>`` → ``sha256-<hex>.sig`` (cosign's signature tag)."""
    check_digest(digest, "manifest digest")
    return digest.replace(":", "-", 1) + ".sig"


def load_keys(pems: Sequence[bytes], where: str) -> list[PublicKey]:
    """PEM public keys (SubjectPublicKeyInfo); FailedPrecondition naming ``where``."""
    keys: list[PublicKey] = []
    for i, pem in enumerate(pems):
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise FailedPrecondition(f"{where}: key {i + 1} is not a PEM public key ({exc})") from None
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
            raise FailedPrecondition(f"{where}: key {i + 1} is a {type(key).__name__}, not ECDSA, RSA or Ed25519")
        keys.append(key)
    return keys


def _verifies(key: PublicKey, payload: bytes, signature: bytes) -> bool:
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, payload)
    except InvalidSignature:
        return False
    return True


def _exact_fields(obj: Any, names: set[str], where: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != names:
        raise Rejected(f"invalid signature payload: {where} must have exactly the fields {', '.join(sorted(names))}")
    return obj


def parse_payload(payload: bytes) -> tuple[str, str]:
    """(docker-reference, docker-manifest-digest) of a verified payload; Rejected if malformed."""
    try:
        doc = json.loads(payload)
    except ValueError:
        raise Rejected("invalid signature payload: not JSON") from None
    top = _exact_fields(doc, {"critical", "optional"}, "the payload")
    critical = _exact_fields(top["critical"], {"type", "image", "identity"}, "critical")
    if critical["type"] != PAYLOAD_TYPE:
        raise Rejected(f"unrecognized signature type {str(critical['type'])[:80]!r}")
    image = _exact_fields(critical["image"], {"docker-manifest-digest"}, "critical.image")
    identity = _exact_fields(critical["identity"], {"docker-reference"}, "critical.identity")
    digest, reference = image["docker-manifest-digest"], identity["docker-reference"]
    if not isinstance(digest, str) or not isinstance(reference, str):
        raise Rejected("invalid signature payload: digest and reference must be strings")
    return reference, digest


def _accepts(keys: Sequence[PublicKey], req: Requirement, image: Reference, manifest: bytes, sig: Signature) -> None:
    encoded = sig.annotations.get(SIGNATURE_ANNOTATION)
    if encoded is None:
        raise Rejected(f"missing {SIGNATURE_ANNOTATION} annotation")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise Rejected("the signature annotation is not base64") from None
    if not any(_verifies(k, sig.payload, raw) for k in keys):
        raise Rejected("cryptographic signature verification failed: made by none of the policy's keys, "
                       "or the payload was altered")
    reference, digest = parse_payload(sig.payload)
    algorithm = digest.split(":", 1)[0]
    try:
        check_digest(digest, "docker-manifest-digest")
    except InvalidArgument:
        raise Rejected(f"invalid docker-manifest-digest {digest[:100]!r}") from None
    if f"{algorithm}:{hashlib.new(algorithm, manifest).hexdigest()}" != digest:
        raise Rejected(f"signature for digest {digest} does not match the image's manifest")
    if not req.identity.matches(image, reference):
        raise Rejected(f"signature for identity {reference[:200]!r} is not accepted ({req.identity.type})")


def check(req: Requirement, image: Reference, manifest: bytes, signatures: Sequence[Signature], where: str) -> str:
    """Accept ``image`` (whose top-level manifest is ``manifest``) under a sigstoreSigned
    ``req``: returns "" when one signature is accepted, else the reason (containers/image's
    wording). Blocking (reads key files). Raises FailedPrecondition for an unusable key
    (``where`` names it)."""
    keys = load_keys(req.public_keys(where), where)
    reasons: list[str] = []
    others = 0
    for sig in signatures:
        if sig.media_type != SIGNATURE_MEDIA_TYPE:
            others += 1
            continue
        try:
            _accepts(keys, req, image, manifest, sig)
            return ""
        except Rejected as exc:
            reasons.append(str(exc))
    if not reasons:
        extra = f" ({others} attachments that are not signatures)" if others else ""
        return "a signature was required, but no signature exists" + extra
    if len(reasons) == 1:
        return reasons[0]
    return "none of the signatures were accepted, reasons: " + "; ".join(reasons)


async def fetch(session: RegistrySession, digest: str) -> list[Signature]:
    """The sigstore attachments of manifest ``digest`` in the session's repository
    (empty when there is no ``.sig`` tag): at most :data:`MAX_ATTACHMENTS`, each of at most
    :data:`MAX_SIGNATURE_BYTES`, together at most :data:`MAX_TOTAL_SIGNATURE_BYTES`. Raises
    like the registry client does, and InvalidArgument for a malformed attachment manifest
    or one over those limits."""
    tag = attachment_tag(digest)
    try:
        fetched = await session.manifest(tag)
    except NotFound:
        return []
    if fetched.media_type.split(";", 1)[0].strip() != OCI_MANIFEST:
        raise InvalidArgument(f"signature manifest {session.describe()}:{tag} has media type "
                              f"{fetched.media_type[:100]!r}, not {OCI_MANIFEST}")
    try:
        doc: Any = json.loads(fetched.data)
        layers = doc["layers"]
        if not isinstance(layers, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument(f"signature manifest {session.describe()}:{tag} is not an OCI image manifest") from None
    wanted: list[tuple[str, str, int, dict[str, str]]] = []
    for layer in layers[:MAX_ATTACHMENTS]:
        if not isinstance(layer, dict):
            continue
        media_type, blob_digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
        annotations = layer.get("annotations") or {}
        if not isinstance(media_type, str) or not isinstance(blob_digest, str) or not isinstance(size, int):
            continue
        if media_type == SIGNATURE_MEDIA_TYPE and not 0 <= size <= MAX_SIGNATURE_BYTES:
            raise InvalidArgument(f"signature {blob_digest[:80]} of {session.describe()} is {size} bytes, "
                                  f"more than {MAX_SIGNATURE_BYTES}")
        clean = {str(k): str(v) for k, v in annotations.items()} if isinstance(annotations, dict) else {}
        wanted.append((media_type, blob_digest, size, clean))
    # Limits first, downloads after: a registry cannot make a pull fetch more than the total.
    if sum(size for media_type, _, size, _ in wanted if media_type == SIGNATURE_MEDIA_TYPE) > MAX_TOTAL_SIGNATURE_BYTES:
        raise InvalidArgument(f"signatures of {session.describe()} add up to more than "
                              f"{MAX_TOTAL_SIGNATURE_BYTES} bytes")
    out: list[Signature] = []
    for media_type, blob_digest, size, annotations in wanted:
        if media_type != SIGNATURE_MEDIA_TYPE:
            out.append(Signature(media_type, b"", {}))  # counted, never fetched
            continue
        payload = await _small_blob(session, check_digest(blob_digest, "signature digest"), size)
        out.append(Signature(media_type, payload, annotations))
    return out


async def _small_blob(session: RegistrySession, digest: str, size: int) -> bytes:
    data = bytearray()

    async def sink(chunk: bytes) -> None:
        data.extend(chunk)
        if len(data) > size:
            raise InvalidArgument(f"signature {digest} of {session.describe()} is larger than its descriptor says")

    await session.blob(digest, sink)
    algorithm = digest.split(":", 1)[0]
    if len(data) != size or f"{algorithm}:{hashlib.new(algorithm, bytes(data)).hexdigest()}" != digest:
        raise InvalidArgument(f"signature {digest} of {session.describe()} does not match its digest")
    return bytes(data)
