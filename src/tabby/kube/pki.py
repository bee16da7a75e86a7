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

The certificate authority itself is ``tabby.store.pki.CertificateAuthority``
(in a lower layer, so that ``tabby.testing``'s etcd can use it too); ``PKI``
adds the service-account key, and ``CertPair`` and ``write_private`` are
re-exported from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Self

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tabby.store.pki import VALIDITY as VALIDITY  # re-exported: it was defined here
from tabby.store.pki import CertificateAuthority, CertPair, key_pem, write_private

__all__ = ["PKI", "CertPair", "kubeconfig", "write_kubeconfig", "write_private"]

SERVICE_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
                 "kubernetes.default.svc.cluster.local", "localhost")


class PKI(CertificateAuthority):
    @property
    def sa_key_path(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub_path(self) -> Path:
        return self.dir / "sa.pub"

    @classmethod
    def create(cls, directory: Path, common_name: str = "tabby-lab-ca") -> Self:
        """A new CA and service-account key pair in ``directory`` (made 0700)."""
        pki = super().create(directory, common_name)
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        write_private(pki.sa_key_path, key_pem(sa))
        pki.sa_pub_path.write_bytes(sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        return pki


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
