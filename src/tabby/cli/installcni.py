"""``tabby install-cni``: drop tabby's CNI plugins and their config onto this host.

What Calico's install-cni does, run by the DaemonSet's init container (or by hand):

    tabby install-cni [--bin-dir /opt/cni/bin] [--conf-dir /etc/cni/net.d]
                      [--conflist-name 10-tabby.conflist] [--network k8s-pod-network]
                      [--mtu N] [--cni-socket PATH] [--datastore URL] [--node NAME]
                      [--token-file PATH] [--ca-file PATH] [--server URL]
                      [--python /usr/bin/python3] [--uninstall]

This module gathers the inputs: the flags, the service account (token, CA, API
server: ``read_credentials``) and the files of this installation the plugins need
(``collect_payload``: tabby, and the distributions tabby-ipam imports with what
they require). :mod:`tabby.cni.install` checks and writes. Paths written into the
files (the socket, the kubeconfig in the datastore URL) are the paths given here,
so a container mounts the host's directories at the same paths. The kubeconfig is
written when the datastore is the default, ``kubernetes://CONF/tabby-kubeconfig``.
One line per file says what happened (written, unchanged, removed); bad input is
one ``error:`` line, exit 1, and nothing changed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

import tabby
from tabby.cni import install, wire
from tabby.cni.install import Credentials, Payload, read
from tabby.errors import ConfigError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# What tabby-ipam imports outside the standard library (tests/unit/test_package.py
# holds this to the import graph of tabby.ipam.plugin); their requirements come along.
IPAM_DISTRIBUTIONS = ("etcd3gw", "kubernetes", "requests", "urllib3")
# What no import of tabby's reaches: the kubernetes client's asyncio twin (68 MB of
# 126; nothing outside kubernetes/aio imports it).
LEFT_OUT = ("kubernetes/aio/",)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    defaults = install.Options()
    p = sub.add_parser("install-cni", help="install tabby-cni, tabby-ipam, the conflist and a"
                       " kubeconfig for them on this host (Calico's install-cni)")
    p.add_argument("--bin-dir", type=Path, default=defaults.bin_dir, metavar="DIR",
                   help="the CNI plugin directory (default: %(default)s)")
    p.add_argument("--conf-dir", type=Path, default=defaults.conf_dir, metavar="DIR",
                   help="the CNI config directory (default: %(default)s)")
    p.add_argument("--conflist-name", default=install.CONFLIST_NAME, metavar="NAME",
                   help="the conflist's file name (default: %(default)s)")
    p.add_argument("--network", default=install.NETWORK, metavar="NAME",
                   help="the network's name in the conflist (default: %(default)s)")
    p.add_argument("--mtu", type=int, metavar="N", help="the pods' MTU (default: the agent's)")
    p.add_argument("--cni-socket", type=Path, default=Path(wire.DEFAULT_SOCKET), metavar="PATH",
                   help="the agent's CNI socket (default: %(default)s)")
    p.add_argument("--datastore", dest="cni_datastore", metavar="URL",
                   help="the datastore tabby-ipam uses (default: kubernetes://CONF-DIR/"
                        f"{install.KUBECONFIG_NAME}, a kubeconfig written here)")
    p.add_argument("--node", metavar="NAME",
                   help="the node name tabby-ipam uses (default: its own, the hostname)")
    p.add_argument("--token-file", type=Path, metavar="PATH",
                   help=f"the service-account token (default: {SERVICE_ACCOUNT}/token)")
    p.add_argument("--ca-file", type=Path, metavar="PATH",
                   help=f"the API server's CA (default: {SERVICE_ACCOUNT}/ca.crt)")
    p.add_argument("--server", metavar="URL", help="the API server (default: https://"
                   "$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
    p.add_argument("--python", type=Path, default=install.HOST_PYTHON, metavar="PATH",
                   help="the host's interpreter the plugins exec (default: %(default)s)")
    p.add_argument("--uninstall", action="store_true",
                   help="remove what install-cni installed, and nothing else")
    p.set_defaults(func=cmd_install_cni)


def options(args: argparse.Namespace) -> install.Options:
    if args.mtu is not None and not 68 <= args.mtu <= 65535:
        raise ConfigError(f"--mtu {args.mtu}: must be in 68..65535")
    if "/" in args.conflist_name or not args.conflist_name.endswith((".conflist", ".conf")):
        raise ConfigError(f"--conflist-name {args.conflist_name!r}: a file name ending in"
                          " .conflist")
    for flag in ("bin_dir", "conf_dir", "cni_socket", "python"):
        if not getattr(args, flag).is_absolute():
            raise ConfigError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be an"
                              " absolute path")
    return install.Options(
        bin_dir=args.bin_dir, conf_dir=args.conf_dir, conflist_name=args.conflist_name,
        network=args.network, mtu=args.mtu, socket=args.cni_socket,
        datastore=args.cni_datastore or args.datastore, node=args.node, python=args.python)


def cmd_install_cni(args: argparse.Namespace) -> int:
    opts = options(args)
    if args.uninstall:
        done = install.uninstall(opts)
    else:
        install.check(opts)
        creds = None
        if opts.writes_kubeconfig:
            creds = read_credentials(args.token_file, args.ca_file, args.server, os.environ)
        elif args.token_file or args.ca_file or args.server:
            raise ConfigError("--token-file, --ca-file and --server make the kubeconfig of the"
                              f" default datastore; --datastore {opts.datastore_url} has its own")
        done = install.install(opts, creds, collect_payload())
    for what, path in done:
        print(f"{what} {path}")
    return 0


# -- the service account -----------------------------------------------------------------


def read_credentials(token_file: Path | None, ca_file: Path | None, server: str | None,
                     env: Mapping[str, str]) -> Credentials:
    """The service account's token and CA (in a pod: its mounted secret) and the API
    server (``KUBERNETES_SERVICE_HOST``/``PORT`` in a pod); ConfigError naming what is
    missing or cannot be read."""
    if token_file is None and not (SERVICE_ACCOUNT / "token").exists():
        raise ConfigError(f"no service-account token at {SERVICE_ACCOUNT}/token (not in a pod?):"
                          " pass --token-file, --ca-file and --server, or --datastore URL")
    token_file = token_file or SERVICE_ACCOUNT / "token"
    ca_file = ca_file or SERVICE_ACCOUNT / "ca.crt"
    token = read(token_file, "service-account token").decode(errors="replace").strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"the service-account token {token_file} is empty or not one token")
    ca = read(ca_file, "API server CA certificate")
    if b"-----BEGIN CERTIFICATE-----" not in ca:
        raise ConfigError(f"the API server CA certificate {ca_file} holds no PEM certificate")
    if server is None:
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ConfigError("which API server? KUBERNETES_SERVICE_HOST/PORT are not set"
                              " (outside a pod, pass --server URL)")
        server = f"https://{f'[{host}]' if ':' in host else host}:{port}"
    if not re.fullmatch(r"https://\S+", server):
        raise ConfigError(f"--server {server!r}: expected https://HOST[:PORT]")
    return Credentials(server, ca, token)


# -- what the plugins need of this installation ----------------------------------------------


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def distributions(names: Iterable[str]) -> list[metadata.Distribution]:
    """``names`` and everything they require (extras asked for included, markers taken
    as satisfied when the distribution is installed), in name order."""
    found: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str], bool]] = [(n, frozenset(), True) for n in names]
    while todo:
        name, extras, required = todo.pop()
        if _normal(name) in found:
            continue
        try:
            dist = found[_normal(name)] = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if required:
                raise ConfigError(f"{name} is not installed; tabby-ipam needs it") from None
            continue
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            wanted = {_normal(e) for e in re.findall(r"extra\s*==\s*['\"]([^'\"]+)", marker)}
            if wanted and not wanted & extras:
                continue
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", spec)
            if m:
                sub = frozenset(_normal(e) for e in (m.group(2) or "").split(",") if e.strip())
                todo.append((m.group(1), sub, not marker.strip()))
    return [found[k] for k in sorted(found)]


def _distribution_files(dist: metadata.Distribution) -> Iterator[tuple[str, Path]]:
    if dist.files is None:
        raise ConfigError(f"cannot copy {dist.metadata['Name']}: its installation lists no"
                          " files (no RECORD); install it with pip")
    for f in dist.files:
        rel = f.as_posix()
        if f.parts[0] != ".." and "__pycache__" not in f.parts and f.suffix != ".pyc" \
                and not rel.startswith(LEFT_OUT):
            yield rel, Path(str(dist.locate_file(f)))


def collect_payload(names: Iterable[str] = IPAM_DISTRIBUTIONS) -> Payload:
    """tabby's package (its .py files and py.typed) and the distributions ``names``
    need, as installed for this interpreter; named by version and content digest."""
    package = Path(tabby.__file__).resolve().parent
    files = {f"tabby/{p.relative_to(package).as_posix()}": p for p in sorted(package.rglob("*"))
             if p.is_file() and (p.suffix == ".py" or p.name == "py.typed")
             and "__pycache__" not in p.parts}
    for dist in distributions(names):
        files.update(_distribution_files(dist))
    digest = hashlib.sha256()
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(read(files[rel], "file")).digest())
    return Payload(tuple(sorted(files.items())), f"{tabby.__version__}-{digest.hexdigest()[:12]}")
