"""containers-certs.d(5) directories: which one, which files, what an error says."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from runtime.errors import FailedPrecondition
from runtime.image.certs import HostTLS, find, ssl_context, tls_failure
from runtime.image.registry import RegistryClient
from tests.support.pki import TestCA


def test_first_directory_with_the_host_wins(tmp_path: Path) -> None:
    first, second = tmp_path / "containers", tmp_path / "docker"
    (second / "quay.io").mkdir(parents=True)
    (second / "quay.io" / "ca.crt").write_text("x")
    assert find([first, second], "quay.io").directory == second / "quay.io"
    (first / "quay.io").mkdir(parents=True)
    got = find([first, second], "quay.io")
    assert got.directory == first / "quay.io" and got.ca_files == ()  # the empty first one wins
    assert find([first, second], "other.io:5000") == HostTLS("other.io:5000")
    (tmp_path / "etc").mkdir()
    for bad in ("", ".", "..", "a/b", "../etc"):  # never a path outside the directories
        assert find([first], bad).directory is None


def test_files_by_extension(tmp_path: Path) -> None:
    d = tmp_path / "reg.example:5000"
    d.mkdir()
    for name in ("b.crt", "a.crt", "client.cert", "client.key", "README", "other.pem"):
        (d / name).write_text(name)
    got = find([tmp_path], "reg.example:5000")
    assert got.ca_files == (d / "a.crt", d / "b.crt")
    assert (got.client_cert, got.client_key) == (d / "client.cert", d / "client.key")
    assert [s[0] for s in got.stamp] == ["a.crt", "b.crt", "client.cert", "client.key"]
    before = got.stamp
    (d / "a.crt").write_text("changed content")
    assert find([tmp_path], "reg.example:5000").stamp != before


@pytest.mark.parametrize(("present", "message"), [
    ("client.cert", "missing key client.key for client certificate client.cert"),
    ("client.key", "missing client certificate client.cert for key client.key"),
])
def test_half_a_pair_is_an_error(tmp_path: Path, present: str, message: str) -> None:
    d = tmp_path / "reg.example"
    d.mkdir()
    (d / present).write_text("x")
    with pytest.raises(FailedPrecondition, match=message):
        find([tmp_path], "reg.example")


def test_ssl_context_loads_cas_and_client_pair(tmp_path: Path) -> None:
    ca = TestCA(tmp_path)
    cert, key = ca.client()
    d = tmp_path / "certs" / "reg.example"
    d.mkdir(parents=True)
    (d / "ca.crt").write_bytes(ca.cert_path.read_bytes())
    (d / "me.cert").write_bytes(cert.read_bytes())
    (d / "me.key").write_bytes(key.read_bytes())
    tls = find([tmp_path / "certs"], "reg.example")
    ctx = ssl_context(tls, verify=True)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    assert ctx.cert_store_stats()["x509_ca"] == system + 1  # the system store plus ca.crt
    relaxed = ssl_context(tls, verify=False)
    assert relaxed.verify_mode == ssl.CERT_NONE
    (d / "ca.crt").write_text("not a certificate")
    with pytest.raises(FailedPrecondition, match=r"CA file .*ca\.crt is not usable"):
        ssl_context(find([tmp_path / "certs"], "reg.example"), verify=True)
    (d / "ca.crt").unlink()
    (d / "me.key").write_bytes(TestCA(tmp_path).client()[1].read_bytes())  # a key of another cert
    with pytest.raises(FailedPrecondition, match=r"client certificate .*me\.cert with key me\.key is not usable"):
        ssl_context(find([tmp_path / "certs"], "reg.example"), verify=True)


def test_tls_failure_messages(tmp_path: Path) -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    exc = httpx.ConnectError("boom")
    exc.__cause__ = verify
    none = HostTLS("reg.example:5000")
    msg = tls_failure(exc, none, [tmp_path / "a", tmp_path / "b"])
    assert msg is not None and "not trusted (unable to get local issuer certificate)" in msg
    assert str(tmp_path / "a" / "reg.example:5000") in msg and "only the system CA store" in msg
    with_dir = HostTLS("r", tmp_path / "r", (tmp_path / "r" / "ca.crt",))
    assert "ca.crt" in (tls_failure(exc, with_dir, []) or "")
    alert = ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    msg = tls_failure(alert, none, [])
    assert msg is not None and "refused the TLS handshake" in msg and "no client certificate was offered" in msg
    assert tls_failure(httpx.ConnectError("refused"), none, []) is None


async def test_a_certs_dir_makes_a_loopback_registry_verified(tmp_path: Path) -> None:
    (tmp_path / "127.0.0.1:5000").mkdir()
    client = RegistryClient(progress_timeout=10, certs_dirs=(tmp_path,))
    try:
        with_dir = client.session("127.0.0.1:5000", "x", False, None)
        await with_dir._ready()
        assert not with_dir.relaxed and with_dir.tls is not None and with_dir.tls.directory is not None
        without = client.session("127.0.0.1:5001", "x", False, None)
        await without._ready()
        assert without.relaxed
        insecure = client.session("127.0.0.1:5000", "x", True, None)
        await insecure._ready()
        assert insecure.relaxed  # registries.conf insecure = true still skips verification
    finally:
        await client.close()
