"""containers-policy.json(5): scopes (longest match), requirement parsing, signedIdentity
matching, and the pull-time gate for reject and unsupported rules."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from runtime.errors import FailedPrecondition, SignatureValidationFailed
from runtime.image.admission import Decision, ImagePolicy
from runtime.image.policy import (
    ACCEPT,
    REJECT,
    SIGSTORE,
    UNSUPPORTED,
    Identity,
    PolicyCache,
    parse_policy,
    scopes,
)
from runtime.image.reference import parse

DIGEST = "sha256:" + "ab" * 32
KEY = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
P = Path("/etc/containers/policy.json")


def policy(doc: dict[str, Any]) -> Any:
    return parse_policy(P, json.dumps(doc).encode())


def test_scopes_most_specific_first() -> None:
    assert scopes(parse("reg.example.com:5000/ns/team/app:v1")) == [
        "reg.example.com:5000/ns/team/app:v1", "reg.example.com:5000/ns/team/app", "reg.example.com:5000/ns/team",
        "reg.example.com:5000/ns", "reg.example.com:5000", "*.example.com", "*.com"]
    assert scopes(parse(f"busybox@{DIGEST}"))[:3] == [
        f"docker.io/library/busybox@{DIGEST}", "docker.io/library/busybox", "docker.io/library"]
    assert scopes(parse("localhost:5000/app")) == ["localhost:5000/app:latest", "localhost:5000/app", "localhost:5000"]


def test_the_most_specific_scope_decides_alone() -> None:
    p = policy({
        "default": [{"type": "reject"}],
        "transports": {"docker": {
            "": [{"type": "insecureAcceptAnything"}, {"type": "insecureAcceptAnything"}],
            "*.example.com": [{"type": "reject"}],
            "reg.example.com": [{"type": "insecureAcceptAnything"}],
            "reg.example.com/ns": [{"type": "reject"}],
            "reg.example.com/ns/app": [{"type": "sigstoreSigned", "keyData": base64.b64encode(KEY).decode(),
                                        "signedIdentity": {"type": "matchRepository"}}],
            "reg.example.com/ns/app:trusted": [{"type": "insecureAcceptAnything"}],
        }, "atomic": {"whatever": "ignored"}},
    })

    def decided(ref: str) -> tuple[str, list[str]]:
        scope, reqs = p.requirements_for(parse(ref))
        return scope, [r.type for r in reqs]

    assert decided("reg.example.com/ns/app:trusted") == ("reg.example.com/ns/app:trusted", [ACCEPT])
    assert decided("reg.example.com/ns/app:v1") == ("reg.example.com/ns/app", [SIGSTORE])
    assert decided("reg.example.com/ns/other:v1") == ("reg.example.com/ns", [REJECT])
    assert decided("reg.example.com/other:v1") == ("reg.example.com", [ACCEPT])
    assert decided("mirror.example.com/x:1") == ("*.example.com", [REJECT])
    assert decided("quay.io/x:1") == ("docker", [ACCEPT, ACCEPT])
    assert policy({"default": [{"type": "reject"}]}).requirements_for(parse("quay.io/x"))[0] == "default"
    _, (req,) = p.requirements_for(parse("reg.example.com/ns/app:v1"))
    assert req.public_keys("w") == (KEY,) and req.identity == Identity("matchRepository")


def test_key_sources(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_bytes(KEY)
    (tmp_path / "b.pub").write_bytes(KEY + b"#2")
    b64 = base64.b64encode(KEY).decode()
    for req, keys in (({"keyPath": str(tmp_path / "a.pub")}, (KEY,)),
                      ({"keyPaths": [str(tmp_path / "a.pub"), str(tmp_path / "b.pub")]}, (KEY, KEY + b"#2")),
                      ({"keyData": b64}, (KEY,)), ({"keyDatas": [b64, b64]}, (KEY, KEY))):
        (got,) = policy({"default": [{"type": "sigstoreSigned", **req}]}).default
        assert got.type == SIGSTORE and got.public_keys("w") == keys
    (rotating,) = policy({"default": [{"type": "sigstoreSigned", "keyPath": str(tmp_path / "a.pub")}]}).default
    (tmp_path / "a.pub").write_bytes(b"rotated")
    assert rotating.public_keys("w") == (b"rotated",)  # key files are read at each check
    (tmp_path / "a.pub").unlink()
    with pytest.raises(FailedPrecondition, match=r"w: key file .*a\.pub"):
        rotating.public_keys("w")


@pytest.mark.parametrize(("doc", "message"), [
    ({}, '"default" is required'),
    ({"default": []}, "non-empty list"),
    ({"default": [{"type": "insecureAcceptAnything", "extra": 1}]}, "unknown field 'extra'"),
    ({"default": [{"type": "acceptIfSunny"}]}, "unknown requirement type 'acceptIfSunny'"),
    ({"default": [{"type": "reject"}], "other": {}}, "unknown field 'other'"),
    ({"default": [{"type": "reject"}], "transports": {"docker": {"quay.io": []}}}, "quay.io"),
    ({"default": [{"type": "sigstoreSigned"}]}, "exactly one of keyPath"),
    ({"default": [{"type": "sigstoreSigned", "keyData": "eA==", "keyPath": "/x"}]}, "exactly one of keyPath"),
    ({"default": [{"type": "sigstoreSigned", "keyData": "not base64!"}]}, "keyData is not base64"),
    ({"default": [{"type": "sigstoreSigned", "keyPath": "relative/key.pub"}]}, "keyPath must be absolute paths"),
    ({"default": [{"type": "sigstoreSigned", "keyData": "eA==", "signedIdentity": {"type": "matchFuzzy"}}]},
     "signedIdentity type must be one of"),
    ({"default": [{"type": "sigstoreSigned", "keyData": "eA==", "signedIdentity": {"type": "remapIdentity"}}]},
     "remapIdentity needs prefix and signedPrefix"),
])
def test_invalid_policies_are_refused(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(FailedPrecondition, match=r"signature policy /etc/containers/policy\.json") as err:
        policy(doc)
    assert message in str(err.value)


def test_not_json_is_refused() -> None:
    with pytest.raises(FailedPrecondition, match="is not valid JSON"):
        parse_policy(P, b"{")


@pytest.mark.parametrize(("req", "why"), [
    ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k.gpg"}, "signedBy (GPG simple signing) is not supported"),
    ({"type": "signedBaseLayer", "baseLayerIdentity": {}}, "signedBaseLayer is not supported"),
    ({"type": "sigstoreSigned", "fulcio": {"caPath": "/ca"}, "rekorPublicKeyPath": "/r"}, "with fulcio is not"),
    ({"type": "sigstoreSigned", "keyData": "eA==", "rekorPublicKeyData": "eA=="}, "with rekorPublicKeyData"),
    ({"type": "sigstoreSigned", "pki": {"caRootsPath": "/ca"}}, "with pki is not supported"),
])
def test_unsupported_requirements_are_kept_as_refusals(req: dict[str, Any], why: str) -> None:
    (got,) = policy({"default": [req]}).default
    assert got.type == UNSUPPORTED and why in got.why


@pytest.mark.parametrize(("identity", "image", "signed", "ok"), [
    (Identity("matchRepoDigestOrExact"), "quay.io/a/b:v1", "quay.io/a/b:v1", True),
    (Identity("matchRepoDigestOrExact"), "quay.io/a/b:v1", "quay.io/a/b:v2", False),
    (Identity("matchRepoDigestOrExact"), "quay.io/a/b:v1", "quay.io/a/b", False),  # cosign's repository-only claim
    (Identity("matchRepoDigestOrExact"), f"quay.io/a/b@{DIGEST}", "quay.io/a/b:any", True),
    (Identity("matchRepoDigestOrExact"), f"quay.io/a/b@{DIGEST}", "quay.io/a/c:any", False),
    (Identity("matchRepoDigestOrExact"), "busybox:1", "docker.io/library/busybox:1", True),  # normalised
    (Identity("matchExact"), "quay.io/a/b:v1", "quay.io/a/b:v1", True),
    (Identity("matchExact"), f"quay.io/a/b@{DIGEST}", "quay.io/a/b:v1", False),
    (Identity("matchRepository"), "quay.io/a/b:v1", "quay.io/a/b", True),
    (Identity("matchRepository"), "quay.io/a/b:v1", "quay.io/a/bc", False),
    (Identity("exactReference", reference="quay.io/a/b:v1"), "mirror.io/x:y", "quay.io/a/b:v1", True),
    (Identity("exactReference", reference="quay.io/a/b:v1"), "mirror.io/x:y", "quay.io/a/b:v2", False),
    (Identity("exactRepository", reference="quay.io/a/b"), "mirror.io/x:y", "quay.io/a/b", True),
    (Identity("exactRepository", reference="quay.io/a/b"), "mirror.io/x:y", "quay.io/a/c", False),
    (Identity("remapIdentity", prefix="mirror.io/ns", signed_prefix="quay.io/team"), "mirror.io/ns/app:v1",
     "quay.io/team/app:v1", True),
    (Identity("remapIdentity", prefix="mirror.io/ns", signed_prefix="quay.io/team"), "mirror.io/nsx/app:v1",
     "quay.io/team/app:v1", False),
    (Identity("matchRepository"), "quay.io/a/b:v1", "NOT A REFERENCE", False),
])
def test_signed_identity(identity: Identity, image: str, signed: str, ok: bool) -> None:
    assert identity.matches(parse(image), signed) is ok


def test_cache_reads_reloads_and_forgets(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    cache = PolicyCache(path)
    assert cache.get() is None
    path.write_text(json.dumps({"default": [{"type": "reject"}]}))
    first = cache.get()
    assert first is not None and first.default[0].type == REJECT
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    second = cache.get()
    assert second is not None and second.default[0].type == ACCEPT
    path.write_text("{broken")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    with pytest.raises(FailedPrecondition):  # never falls back to the last good one
        cache.get()
    path.unlink()
    assert cache.get() is None


async def test_gate_refuses_reject_and_unsupported_before_the_network(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    gate = ImagePolicy(PolicyCache(path))
    assert await gate.before_pull(parse("quay.io/a:1")) == Decision()
    assert await ImagePolicy(None).before_pull(parse("quay.io/a:1")) == Decision()
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}], "transports": {"docker": {
        "quay.io/blocked": [{"type": "insecureAcceptAnything"}, {"type": "reject"}],
        "quay.io/gpg": [{"type": "signedBy", "keyType": "GPGKeys", "keyPath": "/k"}]}}}))
    decision = await gate.before_pull(parse("quay.io/a:1"))
    assert decision.scope == "default" and [r.type for r in decision.requirements] == [ACCEPT]
    with pytest.raises(SignatureValidationFailed) as err:
        await gate.before_pull(parse("quay.io/blocked/app:1"))
    assert str(err.value).startswith("SignatureValidationFailed: image quay.io/blocked/app:1 is rejected by")
    assert f"{path} (scope 'quay.io/blocked')" in str(err.value)
    with pytest.raises(FailedPrecondition, match=r"scope 'quay.io/gpg'\): signedBy \(GPG simple signing\)"):
        await gate.before_pull(parse("quay.io/gpg/app:1"))


def test_kubelet_sees_the_reason_it_matches() -> None:
    """kubelet's CRI client keeps only the message of an UNKNOWN status, and evalCRIPullErr
    matches its "SignatureValidationFailed" prefix (k8s.io/cri-api/pkg/errors)."""
    import grpc

    from cri_shim.api.errors import status_of

    exc = SignatureValidationFailed("image x is rejected")
    assert status_of(exc) == grpc.StatusCode.UNKNOWN
    assert str(exc) == "SignatureValidationFailed: image x is rejected"
