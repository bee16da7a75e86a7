"""Certificates and kubeconfigs for a control plane tabby runs (the lab, tests).

    pki = PKI.create(directory, api_hosts=["127.0.0.1", "198.18.128.1"])
    pki.client("admin", "kubernetes-admin", groups=["system:masters"])   # -> CertPair
    write_kubeconfig(path, server, pki.ca_path, pair)

One self-signed CA signs everything: the API server's serving certificate (its
SANs are the loopback addresses, the ``kubernetes`` service names and the first
ClusterIP of each service range), and client certificates whose subject is the
Kubernetes identity (CN = user, O = groups), exactly as kubeadm makes them.
The service-account signing key is a separate RSA pair. Private keys are
written owner-only (0600).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["PKI", "CertPair", "kubeconfig", "write_kubeconfig", "write_private"]

VALIDITY = datetime.timedelta(days=365)
SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost")


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` owner-only, atomically (a reader never sees half a key)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


class PKI:
    def __init__(self, directory: Path, ca_key: ec.EllipticCurvePrivateKey,
                 ca_cert: x509.Certificate) -> None:
        self.dir = directory
        self._ca_key = ca_key
        self._ca_cert = ca_cert

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def sa_key_path(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub_path(self) -> Path:
        return self.dir / "sa.pub"

    @classmethod
    def create(cls, directory: Path) -> PKI:
        """A new CA and service-account key pair in ``directory`` (made 0700)."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = _name("tabby-lab-ca")
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + VALIDITY * 10)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        pki = cls(directory, key, cert)
        pki.ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private(directory / "ca.key", _key_pem(key))
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(pki.sa_key_path, _key_pem(sa))
        pki.sa_pub_path.write_bytes(sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return pki

    @classmethod
    def load(cls, directory: Path) -> PKI:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        return cls(directory, key, cert)

    def server(self, name: str, hosts: Sequence[str]) -> CertPair:
        """A serving certificate for ``hosts`` (IP addresses or DNS names)."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        return self._issue(name, _name(name), [ExtendedKeyUsageOID.SERVER_AUTH], sans)

    def client(self, name: str, user: str, groups: Sequence[str] = ()) -> CertPair:
        """A client certificate for Kubernetes user ``user`` in ``groups``."""
        return self._issue(name, _name(user, groups), [ExtendedKeyUsageOID.CLIENT_AUTH], [])

    def _issue(self, name: str, subject: x509.Name, usages: list[x509.ObjectIdentifier],
               sans: list[x509.GeneralName]) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(self._ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        pair = CertPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private(pair.key, _key_pem(key))
        return pair


def kubeconfig(server: str, ca: Path, pair: CertPair | None = None, *, token: str = "",
               user: str = "tabby", cluster: str = "tabby") -> dict[str, Any]:
    """A kubeconfig document: one cluster, one user (a client cert or a bearer token)."""
    credentials: dict[str, str] = {}
    if pair is not None:
        credentials = {"client-certificate": str(pair.cert), "client-key": str(pair.key)}
    if token:
        credentials["token"] = token
    return {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": cluster, "cluster": {"server": server,
                                                   "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": cluster, "context": {"cluster": cluster, "user": user}}],
        "current-context": cluster,
    }


def write_kubeconfig(path: Path, server: str, ca: Path, pair: CertPair | None = None, *,
                     token: str = "", user: str = "tabby") -> Path:
    text = yaml.safe_dump(kubeconfig(server, ca, pair, token=token, user=user), sort_keys=False)
    write_private(path, text.encode())
    return path
