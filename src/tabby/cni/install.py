"""Put tabby's CNI plugins where a container runtime looks for them.

The lab (``write_plugin``, ``link_reference_plugins``) writes a launcher pointing
into this installation. ``tabby install-cni`` (``install``/``uninstall``, as
Calico's install-cni) leaves a host with plugins that need no checkout and no
virtualenv::

    BIN/tabby-cni, BIN/tabby-ipam   launchers (0755): the host's ``python3 -IS``, then
                                    the package directory beside them on sys.path
    BIN/tabby.d/<version>-<digest>  tabby, and for tabby-ipam the distributions it
                                    imports and what they require, copied from this
                                    interpreter's site-packages and byte-compiled
    CONF/10-tabby.conflist          the lab's conflist (tabby-cni, portmap if BIN has
                                    one) with tabby-ipam's datastore as ``ipam``
    CONF/tabby-kubeconfig (0600)    the service account's token, CA and API server

Launchers exec a real interpreter (never a shim: ~43 ms against ~8 ms) with
``-IS``, one argv word (no site, no environment steering Python). tabby-cni is
stdlib-only: any python3 >= 3.11 runs it. tabby-ipam's dependencies have
compiled extensions: the host's python3 must be the installer's version (its
launcher answers a CNI error otherwise). The directory name carries a content
digest, so a rebuilt image of the same version still replaces it.

Everything is checked before anything is written, so bad input changes
nothing. Each file is written atomically (temporary file, fsync, rename, fsync
of the directory; the package directory is complete before its rename), only
when content or mode differ, the conflist last (kubelets read its presence as
"network ready"). ``uninstall`` removes what carries install-cni's marks only.
tabby-cni hands ``ipam`` to the agent, which allocates with tabby-ipam's engine
(Calico's calico-ipam split); its ``datastore`` serves tabby-ipam under other
main plugins.
"""

from __future__ import annotations

import base64
import compileall
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib.util import cache_from_source
from pathlib import Path
from typing import Any

import tabby
from tabby.cni import wire
from tabby.cni.runtime import Invocation, exec_plugin
from tabby.errors import ConfigError, TabbyError

PLUGIN_NAME = "tabby-cni"
IPAM_NAME = "tabby-ipam"
REFERENCE_PLUGINS_DIR = Path("/usr/lib/cni")
NETWORK = "k8s-pod-network"
CONFLIST_NAME = "10-tabby.conflist"
KUBECONFIG_NAME = "tabby-kubeconfig"
PACKAGES_DIR = "tabby.d"
MANIFEST = ".tabby-install"
HOST_PYTHON = Path("/usr/bin/python3")
CNI_VERSION = "1.1.0"  # what tabby-cni speaks at best
VERSIONS_NEWEST_FIRST = ("1.1.0", "1.0.0")
MARK = "written by tabby install-cni"


# -- the lab's launcher -----------------------------------------------------------------


def real_interpreter() -> Path:
    """The interpreter running now, symlinks (venv, alternatives) resolved."""
    return Path(os.path.realpath(sys.executable))


def import_root() -> Path:
    """The directory holding the ``tabby`` package (``src/`` in a checkout)."""
    return Path(tabby.__file__).resolve().parent.parent


def _shebang(interpreter: Path) -> str:
    if not interpreter.is_absolute() or any(c.isspace() for c in str(interpreter)):
        raise ConfigError(f"interpreter path {interpreter} must be absolute and without "
                          "whitespace: a #! line cannot carry it otherwise")
    return f"#!{interpreter} -IS\n"


def launcher_text(interpreter: Path, root: Path) -> str:
    return (_shebang(interpreter)
            + "# tabby-cni launcher written by tabby.cni.install; regenerate, do not edit.\n"
              f"import sys\nsys.path.insert(0, {str(root)!r})\n"
              "from tabby.cni.plugin import main\nsys.exit(main())\n")


def write_plugin(bin_dir: str | os.PathLike[str], *, interpreter: Path | None = None,
                 name: str = PLUGIN_NAME) -> Path:
    """Write (atomically, mode 0755) the launcher ``bin_dir/name`` and return its path."""
    directory = Path(bin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    write_atomic(target, launcher_text(interpreter or real_interpreter(),
                                       import_root()).encode(), 0o755)
    return target


def link_reference_plugins(bin_dir: str | os.PathLike[str],
                           names: Iterable[str] | None = None,
                           source: Path = REFERENCE_PLUGINS_DIR) -> list[Path]:
    """Symlink reference plugins (all of ``source`` by default) into ``bin_dir``."""
    directory = Path(bin_dir)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = sorted(names) if names is not None else sorted(
        p.name for p in source.iterdir() if p.is_file() and os.access(p, os.X_OK))
    links = []
    for plugin in wanted:
        origin = source / plugin
        if not origin.is_file():
            raise ConfigError(f"reference CNI plugin {origin} is missing "
                              "(Debian package containernetworking-plugins)")
        link = directory / plugin
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(origin)
        links.append(link)
    return links


# -- what install-cni writes (pure) -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    """Where and what ``tabby install-cni`` installs."""

    bin_dir: Path = Path("/opt/cni/bin")
    conf_dir: Path = Path("/etc/cni/net.d")
    conflist_name: str = CONFLIST_NAME
    network: str = NETWORK
    mtu: int | None = None  # None: the agent's
    socket: Path = Path(wire.DEFAULT_SOCKET)
    datastore: str | None = None  # None: kubernetes://CONF/tabby-kubeconfig, written here
    node: str | None = None  # tabby-ipam's node name; None: its own default (hostname)
    python: Path = HOST_PYTHON

    @property
    def kubeconfig(self) -> Path:
        return self.conf_dir / KUBECONFIG_NAME

    @property
    def conflist_path(self) -> Path:
        return self.conf_dir / self.conflist_name

    @property
    def datastore_url(self) -> str:
        return self.datastore or f"kubernetes://{self.kubeconfig}"

    @property
    def writes_kubeconfig(self) -> bool:
        return self.datastore_url == f"kubernetes://{self.kubeconfig}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a kubeconfig for the plugins carries: the service account's identity."""

    server: str
    ca_pem: bytes = field(repr=False)
    token: str = field(repr=False)  # a secret: kept out of reprs and logs


def conflist(network: str, socket: Path, mtu: int | None, *, portmap_version: str | None,
             ipam: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """tabby-cni, then portmap (for hostPorts) when there is one. The list's cniVersion
    is the newest both speak: Debian's reference plugins 1.1.1 stop at 1.0.0."""
    plugin: dict[str, Any] = {"type": PLUGIN_NAME, "socket": str(socket)}
    if mtu is not None:
        plugin["mtu"] = mtu
    if ipam is not None:
        plugin["ipam"] = dict(ipam)
    plugins = [plugin]
    if portmap_version is not None:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True},
                        "snat": True})
    return {"cniVersion": portmap_version or CNI_VERSION, "name": network, "plugins": plugins}


def kubeconfig_text(creds: Credentials) -> str:
    """A kubeconfig (JSON is YAML) naming the API server, its CA and the token."""
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": creds.server,
            "certificate-authority-data": base64.b64encode(creds.ca_pem).decode()}}],
        "users": [{"name": "tabby-cni", "user": {"token": creds.token}}],
        "contexts": [{"name": "tabby", "context": {"cluster": "local", "user": "tabby-cni"}}],
        "current-context": "tabby"}
    return f"# {MARK} for tabby's CNI plugins; rewritten on every install.\n" \
           + json.dumps(config, indent=2) + "\n"


def package_launcher(plugin: str, module: str, python: Path, payload: str) -> str:
    """The launcher of ``plugin`` (``module:main``) using BIN/tabby.d/``payload``."""
    text = (_shebang(python) + f"# {plugin} {tabby.__version__}, {MARK}; do not edit.\n"
            "import sys\n")
    if plugin == IPAM_NAME:  # compiled dependencies: the installing interpreter's ABI only
        tag = sys.implementation.cache_tag
        text += (f"if sys.implementation.cache_tag != {tag!r}:\n"
                 "    sys.stdout.write('{\"cniVersion\": \"1.0.0\", \"code\": 999, \"msg\": "
                 f"\"{plugin} was installed for {tag}, ' + sys.executable + ' is ' + "
                 "str(sys.implementation.cache_tag) + '\"}\\n')\n    sys.exit(1)\n")
    return text + (f"sys.path.insert(0, (__file__.rpartition('/')[0] or '.') + "
                   f"'/{PACKAGES_DIR}/{payload}')\n"
                   f"from {module} import main\nsys.exit(main())\n")


def desired_files(opts: Options, creds: Credentials | None, portmap_version: str | None,
                  payload: str) -> dict[Path, tuple[bytes, int]]:
    """Every file install-cni writes, {path: (content, mode)}, the conflist last."""
    ipam: dict[str, Any] = {"type": IPAM_NAME, "datastore": opts.datastore_url}
    if opts.node:
        ipam["node"] = opts.node
    conf = conflist(opts.network, opts.socket, opts.mtu, portmap_version=portmap_version,
                    ipam=ipam)
    files = {opts.bin_dir / name: (package_launcher(name, module, opts.python,
                                                    payload).encode(), 0o755)
             for name, module in ((PLUGIN_NAME, "tabby.cni.plugin"),
                                  (IPAM_NAME, "tabby.ipam.plugin"))}
    if creds is not None:
        files[opts.kubeconfig] = (kubeconfig_text(creds).encode(), 0o600)
    files[opts.conflist_path] = ((json.dumps(conf, indent=2) + "\n").encode(), 0o644)
    return files


# -- reading what is there -----------------------------------------------------------------


def read(path: Path, what: str) -> bytes:
    """The bytes at ``path``; ConfigError naming ``what`` it is if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the {what} {path}: {e.strerror or e}") from e


def portmap_version(bin_dir: Path) -> str | None:
    """The newest cniVersion tabby-cni and ``bin_dir/portmap`` share, or None."""
    binary = bin_dir / "portmap"
    if not binary.is_file():
        return None
    try:
        answer = exec_plugin(binary, Invocation("VERSION"), {"cniVersion": "1.0.0"},
                             timeout=10)
    except TabbyError:
        return None
    supported = (answer or {}).get("supportedVersions", [])
    return next((v for v in VERSIONS_NEWEST_FIRST if v in supported), None)


def check(opts: Options, *, uninstalling: bool = False) -> None:
    """ConfigError if a directory is missing or read-only, or (installing) the conflist
    there belongs to another network."""
    for what, directory in (("bin dir", opts.bin_dir), ("conf dir", opts.conf_dir)):
        if not directory.is_dir():
            raise ConfigError(f"{what} {directory} does not exist or is not a directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {directory} is read-only")
    path = opts.conflist_path
    if uninstalling or not (path.exists() or path.is_symlink()):
        return
    owner = conflist_network(path)
    if owner != opts.network:
        whose = ("is not a JSON conflist" if owner is None
                 else f"belongs to network {owner!r}, not {opts.network!r}")
        raise ConfigError(f"{path} {whose}: remove it, or choose another --conflist-name"
                          " or --network")


def conflist_network(path: Path) -> str | None:
    """The ``name`` of the conflist at ``path``; None if it is not a JSON object."""
    try:
        conf = json.loads(read(path, "conflist"))
    except ValueError:
        return None
    name = conf.get("name") if isinstance(conf, dict) else None
    return name if isinstance(name, str) else None


# -- the package directory ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Payload:
    """The files of BIN/tabby.d/<name>: (relative path, source) pairs."""

    files: tuple[tuple[str, Path], ...]
    name: str  # <version>-<digest of paths and contents>


def install_payload(bin_dir: Path, payload: Payload) -> bool:
    """BIN/tabby.d/<payload.name>, copied, byte-compiled and renamed into place complete;
    False if it is there already."""
    root = bin_dir / PACKAGES_DIR
    target = root / payload.name
    if (target / MANIFEST).is_file():
        return False
    root.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{payload.name}."))
    try:
        for rel, source in payload.files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tmp / rel)  # mtime kept: a copied .pyc stays valid
            if source.suffix == ".py" and os.path.isfile(pyc := cache_from_source(source)):
                (tmp / cache_from_source(rel)).parent.mkdir(exist_ok=True)
                shutil.copy2(pyc, tmp / cache_from_source(rel))
        compileall.compile_dir(tmp, quiet=2, ddir=str(target), workers=0)  # what was not
        (tmp / MANIFEST).write_text("".join(f"{rel}\n" for rel, _ in payload.files))
        os.sync()  # thousands of files: one sync, not one fsync each
        if target.exists():  # left without its manifest: not complete
            shutil.rmtree(target)
        tmp.rename(target)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


# -- writing and removing ------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` (temporary file, fsync, rename, fsync of the directory) unless it
    already holds ``data`` with ``mode``; whether it wrote."""
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == mode \
                and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), mode)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return True


def _ours(directory: Path) -> list[Path]:
    root = directory / PACKAGES_DIR
    return sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []


def install(opts: Options, creds: Credentials | None, payload: Payload) -> list[tuple[str, Path]]:
    """Install (``check`` first: nothing is written if it fails); [(what, path)] with
    what = written | unchanged | removed."""
    check(opts)
    files = desired_files(opts, creds, portmap_version(opts.bin_dir), payload.name)
    try:
        done = [("written" if install_payload(opts.bin_dir, payload) else "unchanged",
                 opts.bin_dir / PACKAGES_DIR / payload.name)]
        for path, (data, mode) in files.items():
            done.append(("written" if write_atomic(path, data, mode) else "unchanged", path))
        for old in _ours(opts.bin_dir):
            if old.name != payload.name:  # a previous version's, now unreferenced
                shutil.rmtree(old)
                done.append(("removed", old))
    except OSError as e:
        raise ConfigError(f"cannot write {e.filename or opts.bin_dir}: {e.strerror or e}") from e
    return done


def _marked(path: Path) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as f:
        return MARK.encode() in f.read(300)


def uninstall(opts: Options) -> list[tuple[str, Path]]:
    """Remove what carries install-cni's marks: its launchers, package directories,
    kubeconfig, and the conflist if it is this network's tabby-cni list."""
    check(opts, uninstalling=True)
    done = []
    try:
        for path in (opts.bin_dir / PLUGIN_NAME, opts.bin_dir / IPAM_NAME, opts.kubeconfig):
            if _marked(path):
                path.unlink()
                done.append(("removed", path))
        for old in _ours(opts.bin_dir):
            shutil.rmtree(old)
            done.append(("removed", old))
        packages = opts.bin_dir / PACKAGES_DIR
        if packages.is_dir() and not any(packages.iterdir()):
            packages.rmdir()
        path = opts.conflist_path
        if path.is_file() and conflist_network(path) == opts.network:
            plugins = json.loads(path.read_bytes()).get("plugins") or []
            if any(isinstance(p, dict) and p.get("type") == PLUGIN_NAME for p in plugins):
                path.unlink()
                done.append(("removed", path))
        for directory in {p.parent for _, p in done if p.parent.is_dir()}:
            _fsync_dir(directory)
    except OSError as e:
        raise ConfigError(f"cannot remove {e.filename}: {e.strerror or e}") from e
    return done
