"""The cluster's PKI: one CA, the certificates each component presents, kubeconfigs.

Client identities follow kubeadm's: the apiserver's kubelet client and the admin are in
``system:masters``; the controller-manager, scheduler and kube-proxy use the users RBAC's
default bindings name; each kubelet is ``system:node:NAME`` in ``system:nodes`` (the Node
authorizer and NodeRestriction admission then limit it to its own node). Keys are ECDSA P-256;
the service-account signing key is RSA (kube-apiserver's default algorithm, RS256).
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=30)


def _pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


@dataclass(frozen=True, slots=True)
class Pair:
    """A certificate and its key, as files."""

    cert: Path
    key: Path


class CA:
    """A self-signed CA under ``directory`` (ca.crt, ca.key); :meth:`issue` signs leaves."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cri-shim-cluster-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pair = Pair(directory / "ca.crt", directory / "ca.key")
        _write(self.pair.cert, self.cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(self.pair.key, _pem_key(self.key))

    def issue(self, stem: str, common_name: str, *, groups: tuple[str, ...] = (), server: bool = False,
              client: bool = False, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> Pair:
        """Sign a leaf certificate for ``common_name`` (organisations ``groups``) into
        ``<stem>.crt`` / ``<stem>.key``."""
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
        subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        pair = Pair(self.dir / f"{stem}.crt", self.dir / f"{stem}.key")
        _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(pair.key, _pem_key(key))
        return pair


def service_account_keys(directory: Path) -> Pair:
    """The service-account token signing key (sa.key) and its public key (sa.pub, in ``cert``)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = Pair(directory / "sa.pub", directory / "sa.key")
    _write(pair.key, _pem_key(key))
    _write(pair.cert, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return pair


def kubeconfig(path: Path, server: str, ca: Path, client: Pair, user: str) -> Path:
    """A kubeconfig for ``server`` trusting ``ca`` and presenting ``client`` (paths, not inlined:
    the files stay where ``down`` removes them)."""
    text = f"""apiVersion: v1
kind: Config
clusters:
- name: cri-shim-cluster
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: {user}
  user:
    client-certificate: {client.cert}
    client-key: {client.key}
contexts:
- name: {user}@cri-shim-cluster
  context:
    cluster: cri-shim-cluster
    user: {user}
current-context: {user}@cri-shim-cluster
"""
    _write(path, text.encode())
    return path
