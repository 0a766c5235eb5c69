"""A throw-away certificate authority for TLS tests: server certificates for names and IPs,
client certificates, all ECDSA P-256, written as PEM files.

``ca = TestCA(workdir)``; ``ca.server(["vm", "127.0.0.1"])`` → (cert, key) paths;
``ca.client("node")`` → (cert, key) paths; ``ca.cert_path`` is the CA certificate.
Also :func:`loopback_alias`: a host name /etc/hosts maps to a loopback address, for tests
that need a registry reached by a name (no DNS involved).
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


class TestCA:
    """A CA whose certificate and key live in ``workdir``."""

    __test__ = False  # not a pytest test class

    def __init__(self, workdir: Path, name: str = "cri-shim test CA") -> None:
        self.workdir = workdir
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {secrets.token_hex(4)}")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(self._name).issuer_name(self._name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = workdir / f"ca-{secrets.token_hex(4)}.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, stem: str, cn: str, sans: Sequence[x509.GeneralName],
               usage: x509.ObjectIdentifier) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self._name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        tag = secrets.token_hex(4)
        cert_path, key_path = self.workdir / f"{stem}-{tag}.pem", self.workdir / f"{stem}-{tag}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path

    def server(self, names: Sequence[str]) -> tuple[Path, Path]:
        """A server certificate valid for ``names`` (DNS names or IP addresses)."""
        sans: list[x509.GeneralName] = []
        for n in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                sans.append(x509.DNSName(n))
        return self._issue("server", names[0], sans, ExtendedKeyUsageOID.SERVER_AUTH)

    def client(self, cn: str = "cri-shim test client") -> tuple[Path, Path]:
        """A client certificate (for registries that require one)."""
        return self._issue("client", cn, [], ExtendedKeyUsageOID.CLIENT_AUTH)


def loopback_alias(hosts_file: Path = Path("/etc/hosts")) -> tuple[str, str]:
    """(name, address): a host name other than localhost that ``hosts_file`` maps to an IPv4
    loopback address (Debian writes ``127.0.1.1 <hostname>``). Raises RuntimeError if none."""
    for line in hosts_file.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        try:
            ip = ipaddress.ip_address(words[0])
        except ValueError:
            continue
        if ip.version != 4 or not ip.is_loopback:
            continue
        for name in words[1:]:
            if name != "localhost" and not name.endswith(".localhost"):
                return name, words[0]
    raise RuntimeError(f"{hosts_file} maps no name besides localhost to a loopback address")
