"""Certificates for the TLS tabby runs itself: a CA that signs servers and clients.

    ca = CertificateAuthority.create(directory, "tabby-etcd-ca")
    ca.server("etcd-0", ["127.0.0.1", "localhost"])          # -> CertPair
    ca.server("etcd-0-peer", hosts, client_auth=True)        # also a TLS client
    ca.client("tabby", "tabby", groups=[])                   # CN = user, O = groups

One self-signed EC (P-256) CA in ``directory`` (``ca.crt``, ``ca.key``; the
directory is made 0700) signs every pair it issues into the same directory as
``NAME.crt`` / ``NAME.key``. Private keys are written owner-only (0600) and
atomically. ``client_auth=True`` gives a serving certificate the client usage
too: etcd's peers dial each other with their peer certificate, and its HTTP
gateway dials its own gRPC port with the serving certificate.

It lives in the store layer, below ``tabby.testing`` (``EtcdCluster(tls=True)``)
and ``tabby.kube`` (``tabby.kube.pki`` builds the control plane's PKI on it and
re-exports these names). It needs ``cryptography``; the stores never import it.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["VALIDITY", "CertPair", "CertificateAuthority", "key_pem", "subject",
           "write_private"]

VALIDITY = datetime.timedelta(days=365)


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


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def subject(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    """A subject name: O = each of ``orgs``, then CN = ``cn``."""
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


class CertificateAuthority:
    def __init__(self, directory: Path, ca_key: ec.EllipticCurvePrivateKey,
                 ca_cert: x509.Certificate) -> None:
        self.dir = directory
        self._ca_key = ca_key
        self._ca_cert = ca_cert

    @property
    def ca_path(self) -> Path:
        return self.dir / "ca.crt"

    @classmethod
    def create(cls, directory: Path, common_name: str = "tabby-lab-ca") -> Self:
        """A new self-signed CA in ``directory`` (made 0700)."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = subject(common_name)
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
        ca = cls(directory, key, cert)
        ca.ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private(directory / "ca.key", key_pem(key))
        return ca

    @classmethod
    def load(cls, directory: Path) -> Self:
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        return cls(directory, key, cert)

    def server(self, name: str, hosts: Sequence[str], *, client_auth: bool = False) -> CertPair:
        """A serving certificate for ``hosts`` (IP addresses or DNS names); with
        ``client_auth`` it may also authenticate as a TLS client."""
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        return self._issue(name, subject(name), usages, sans)

    def client(self, name: str, user: str, groups: Sequence[str] = ()) -> CertPair:
        """A client certificate with CN = ``user`` and O = each of ``groups``."""
        return self._issue(name, subject(user, groups), [ExtendedKeyUsageOID.CLIENT_AUTH], [])

    def _issue(self, name: str, who: x509.Name, usages: list[x509.ObjectIdentifier],
               sans: list[x509.GeneralName]) -> CertPair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (x509.CertificateBuilder().subject_name(who)
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
        write_private(pair.key, key_pem(key))
        return pair
