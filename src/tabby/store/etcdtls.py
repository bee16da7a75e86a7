"""TLS for the etcd store: its files, checked once, and what a TLS failure means.

    etcds://HOST:PORT[,HOST:PORT...]?ca=/ca.crt&cert=/client.crt&key=/client.key

``EtcdTLS.from_files`` takes the CA bundle that signed etcd's serving
certificates (without one, the system's trust store) and the client
certificate and key etcd's ``--client-cert-auth`` asks for (both or neither),
as the URL's query or ``$TABBY_ETCD_CA``, ``$TABBY_ETCD_CERT``,
``$TABBY_ETCD_KEY`` (Calico's ``ETCD_CA_CERT_FILE``, ``ETCD_CERT_FILE``,
``ETCD_KEY_FILE``). Every file is read and parsed when the store is opened, so
a wrong path, a key that does not match its certificate or a file that is not
PEM is one ``ConfigError`` naming it, not a failure on the first request.
``configure`` gives a ``requests`` session the same files (``verify``,
``cert``): the store's clients and every watch's own session use it. Those
sessions ignore the environment (``trust_env`` off), which matters here:
requests lets ``$REQUESTS_CA_BUNDLE`` override a session's own CA.

``tls_failure`` reads a failed connection's error text: a certificate that
does not verify (our CA did not sign etcd's, or the name does not match), an
alert from etcd refusing ours, or etcd closing the connection as the
handshake ends (what etcd 3.4 does to a client without an acceptable
certificate under TLS 1.3, most of the time without the alert) is
``refused``: the store raises ``Forbidden`` once every endpoint refused in a
row, as retrying cannot help. A member killed mid-handshake closes the same
way, but never all of them in one round while the cluster is up.

Plain ``etcd://`` to anything but loopback sends every value (BGP passwords
among them) in clear: ``plain_warning`` says so in one line.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from tabby.errors import ConfigError

if TYPE_CHECKING:
    import requests

__all__ = ["ENV_FILES", "FILES", "EtcdTLS", "TLSFailure", "plain_warning", "tls_failure"]

FILES = ("ca", "cert", "key")
# Each file's environment variable (the URL's query wins over it).
ENV_FILES = {"ca": "TABBY_ETCD_CA", "cert": "TABBY_ETCD_CERT", "key": "TABBY_ETCD_KEY"}


@dataclass(frozen=True, slots=True)
class EtcdTLS:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @classmethod
    def from_files(cls, files: Mapping[str, str],
                   labels: Mapping[str, str] | None = None) -> EtcdTLS:
        """Check ``files`` (``ca``, ``cert``, ``key`` -> path) and return them.
        ``labels`` says how the user named each (``ca=``, ``$TABBY_ETCD_CA=``)."""
        names = {f: (labels or {}).get(f, f"{f}=") for f in FILES}
        unknown = sorted(set(files) - set(FILES))
        if unknown:
            raise ConfigError(f"etcd TLS: unknown file {unknown[0]!r} (ca, cert or key)")
        paths = {f: _readable(names[f], files[f]) for f in FILES if f in files}
        if ("cert" in paths) != ("key" in paths):
            given, missing = ("cert", "key") if "cert" in paths else ("key", "cert")
            raise ConfigError(f"etcd TLS: {names[given]}{paths[given]} is given without a"
                              f" {missing} ({missing}= or ${ENV_FILES[missing]}): a client"
                              " certificate and its private key go together")
        tls = cls(paths.get("ca"), paths.get("cert"), paths.get("key"))
        tls._check(names)
        return tls

    def _check(self, names: Mapping[str, str]) -> None:
        """Parse the files as the TLS handshake will, so that it cannot fail on them later."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if self.ca is not None:
            try:
                context.load_verify_locations(cafile=str(self.ca))
            except (ssl.SSLError, ValueError) as e:
                raise ConfigError(f"etcd TLS: {names['ca']}{self.ca} is not a PEM CA"
                                  f" certificate bundle ({_reason(str(e))})") from e
        if self.cert is not None and self.key is not None:
            try:  # a password callback, so that OpenSSL never prompts on the terminal
                context.load_cert_chain(str(self.cert), str(self.key), password=lambda: b"")
            except ssl.SSLError as e:
                pair = f"{names['cert']}{self.cert} and {names['key']}{self.key}"
                if "KEY_VALUES_MISMATCH" in str(e):
                    raise ConfigError(f"etcd TLS: {pair} do not belong together (the key is"
                                      " not the certificate's)") from e
                raise ConfigError(f"etcd TLS: {pair} are not a PEM certificate and its"
                                  f" unencrypted private key ({_reason(str(e))})") from e

    def query(self) -> str:
        """The URL query naming these files (``ca=...&cert=...&key=...``)."""
        parts = [f"{f}={quote(str(p), safe='/')}" for f, p in
                 (("ca", self.ca), ("cert", self.cert), ("key", self.key)) if p is not None]
        return "&".join(parts)

    def configure(self, session: requests.Session) -> None:
        """Make ``session`` verify etcd with our CA and present our certificate."""
        session.verify = str(self.ca) if self.ca is not None else True
        if self.cert is not None and self.key is not None:
            session.cert = (str(self.cert), str(self.key))


def _readable(name: str, value: str) -> Path:
    if not value:
        raise ConfigError(f"etcd TLS: {name} is empty: give the file's path")
    path = Path(value)
    if not path.is_absolute():
        raise ConfigError(f"etcd TLS: {name}{value} is not an absolute path")
    try:
        with path.open("rb") as f:
            f.read(1)
    except OSError as e:
        raise ConfigError(f"etcd TLS: cannot read {name}{value} ({e.strerror or e})") from e
    return path


@dataclass(frozen=True, slots=True)
class TLSFailure:
    refused: bool  # a certificate was rejected: retrying cannot help
    reason: str  # one line, with the fix


# urllib3 wraps what the ssl module raised while connecting as "SSLError(SSL...Error(n, '...'))".
_SSL_REASON = re.compile(r"SSL\w*Error\(\d+, ['\"](?P<reason>.*?)['\"]\)")
_TAG = re.compile(r"^\[[^\]]*\] |\s*\(_ssl\.c:\d+\)$")
_EOF = ("EOF occurred in violation of protocol", "connection has been closed (EOF)")


def tls_failure(text: str, client_cert: bool) -> TLSFailure | None:
    """What a failed connection's error text says about TLS (None: it is no TLS failure).
    ``client_cert``: whether this client presented a certificate."""
    if "SSLError(" not in text:
        return None
    reason = _reason(text)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        fix = ("name each endpoint by an address or name its certificate carries"
               if "mismatch" in reason else
               "ca= (or $TABBY_ETCD_CA) must name the CA that signed etcd's --cert-file")
        return TLSFailure(True, f"TLS: etcd's certificate is not trusted ({reason}); {fix}")
    if "ALERT" in text.upper() or any(eof in text for eof in _EOF):
        # With TLS 1.3 etcd judges our certificate after the client's side of the
        # handshake is done: its alert, or only the close, reaches us on the first read.
        if not client_cert:
            return TLSFailure(True, f"TLS: etcd closed the connection ({reason}): it wants a"
                                    " client certificate; give cert= and key= (or"
                                    " $TABBY_ETCD_CERT, $TABBY_ETCD_KEY)")
        return TLSFailure(True, f"TLS: etcd refused this client's certificate ({reason}):"
                                " cert= must be signed by a CA in etcd's --trusted-ca-file"
                                " (or etcd does not speak TLS: then etcd://)")
    return TLSFailure(False, f"TLS: {reason}")


def _reason(text: str) -> str:
    """OpenSSL's words from an error text, without its library tag and source line."""
    match = _SSL_REASON.search(text)
    line = match.group("reason") if match else (text.strip().splitlines() or [""])[0]
    line = _TAG.sub("", line).strip()
    return line[:200] or "no detail"


def plain_warning(endpoints: Sequence[str]) -> str | None:
    """The warning for plain HTTP to ``endpoints``, or None when all are loopback."""
    remote = [e for e in endpoints if not _loopback(e.rpartition(":")[0].strip("[]"))]
    if not remote:
        return None
    return (f"etcd store: plain HTTP to {', '.join(remote)} sends every value, BGP passwords"
            " among them, in clear and lets anyone on the path write; use"
            " etcds://HOST:PORT?ca=...&cert=...&key=... (TLS with a client certificate)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
