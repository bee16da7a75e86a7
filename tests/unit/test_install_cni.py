"""``tabby install-cni`` without root: what it writes, how, re-runs, uninstall, bad input.

The package directory here holds tabby alone (``collect_payload(())``: what tabby-cni
needs), so the installed tabby-cni really runs; the full copy with tabby-ipam's
dependencies is installed and driven by tests/netns/test_install_cni.py.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tabby.cli.installcni import collect_payload, read_credentials
from tabby.cli.main import main
from tabby.cni import install
from tabby.cni.install import Credentials, Options, conflist, desired_files, write_atomic
from tabby.lab.cni import cni_conflist

CA = b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def payload() -> install.Payload:
    return collect_payload(())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for d in ("bin", "net.d", "sa"):
        (tmp_path / d).mkdir()
    (tmp_path / "sa" / "token").write_text("eyJhbGciOiJSUzI1NiJ9.tok.sig\n")
    (tmp_path / "sa" / "ca.crt").write_bytes(CA)
    return tmp_path


def argv(root: Path, *extra: str) -> list[str]:
    return ["install-cni", "--bin-dir", str(root / "bin"), "--conf-dir", str(root / "net.d"),
            "--token-file", str(root / "sa" / "token"), "--ca-file", str(root / "sa" / "ca.crt"),
            "--server", "https://[fd7a:bb1e::1]:6443", *extra]


def tree(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every file and directory under ``root``: (inode, mode, mtime_ns, content)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        data = p.read_bytes()[:4096] if stat.S_ISREG(st.st_mode) else b""
        out[str(p.relative_to(root))] = (st.st_ino, st.st_mode, st.st_mtime_ns, data)
    return out


# -- what it writes (pure) ---------------------------------------------------------------


@pytest.mark.parametrize("portmap", [None, "1.0.0"])
def test_conflist_is_the_labs_with_ipam_settings(portmap: str | None) -> None:
    sock = Path("/var/run/tabby/cni.sock")
    ipam = {"type": "tabby-ipam", "datastore": "kubernetes:///etc/cni/net.d/tabby-kubeconfig"}
    got = conflist("k8s-pod-network", sock, 1450, portmap_version=portmap, ipam=ipam)
    assert got["plugins"][0].pop("ipam") == ipam
    assert got == cni_conflist(sock, 1450, portmap_version=portmap)
    assert "mtu" not in conflist("n", sock, None, portmap_version=None)["plugins"][0]


def test_desired_files(tmp_path: Path) -> None:
    opts = Options(bin_dir=tmp_path / "bin", conf_dir=tmp_path / "net.d", mtu=1400,
                   node="node-7")
    creds = Credentials("https://10.96.0.1:443", CA, "tok")
    files = desired_files(opts, creds, "1.0.0", "0.1.0-abc")
    assert list(files) == [opts.bin_dir / "tabby-cni", opts.bin_dir / "tabby-ipam",
                           opts.conf_dir / "tabby-kubeconfig",
                           opts.conf_dir / "10-tabby.conflist"]  # the conflist last
    assert [mode for _, mode in files.values()] == [0o755, 0o755, 0o600, 0o644]
    cni = files[opts.bin_dir / "tabby-cni"][0].decode().splitlines()
    assert cni[0] == "#!/usr/bin/python3 -IS"
    assert "/tabby.d/0.1.0-abc'" in cni[3] and "/opt" not in cni[3]  # beside itself
    conf = json.loads(files[opts.conflist_path][0])
    assert conf["plugins"][0] == {
        "type": "tabby-cni", "socket": "/var/run/tabby/cni.sock", "mtu": 1400,
        "ipam": {"type": "tabby-ipam", "node": "node-7",
                 "datastore": f"kubernetes://{tmp_path}/net.d/tabby-kubeconfig"}}
    kube = yaml.safe_load(files[opts.kubeconfig][0])
    [cluster], [user] = kube["clusters"], kube["users"]
    assert cluster["cluster"]["server"] == "https://10.96.0.1:443"
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]) == CA
    assert user["user"] == {"token": "tok"} and kube["current-context"] == "tabby"
    other = desired_files(Options(datastore="etcd://127.0.0.1:2379"), None, None, "x")
    assert Path("/etc/cni/net.d/tabby-kubeconfig") not in other


def test_credentials_from_the_pods_environment(root: Path) -> None:
    sa = root / "sa"
    env = {"KUBERNETES_SERVICE_HOST": "fd7a:bb1e:2::1", "KUBERNETES_SERVICE_PORT": "443"}
    creds = read_credentials(sa / "token", sa / "ca.crt", None, env)
    assert creds == Credentials("https://[fd7a:bb1e:2::1]:443", CA,
                                "eyJhbGciOiJSUzI1NiJ9.tok.sig")


def test_write_atomic_rewrites_only_a_change(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_atomic(path, b"one", 0o644)
    before = path.stat()
    assert not write_atomic(path, b"one", 0o644)
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    assert write_atomic(path, b"one", 0o600)  # a mode change is a change
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.stat().st_ino != before.st_ino
    assert write_atomic(path, b"two", 0o600) and path.read_bytes() == b"two"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary file left


def test_ipam_launcher_refuses_another_interpreter_abi(tmp_path: Path) -> None:
    """tabby-ipam's copied extensions fit one ABI: another interpreter gets a CNI error."""
    files = desired_files(Options(bin_dir=tmp_path, python=Path(sys.executable)), None, None,
                          "x")
    text = files[tmp_path / "tabby-ipam"][0].decode()
    tag = sys.implementation.cache_tag
    assert f"!= {tag!r}" in text
    write_atomic(tmp_path / "tabby-ipam", text.replace(tag, "cpython-399").encode(),
                 0o755)
    done = subprocess.run([str(tmp_path / "tabby-ipam")], env={"CNI_COMMAND": "VERSION"},
                          input=b"", capture_output=True, timeout=30, check=False)
    assert done.returncode == 1 and done.stderr == b""
    error = json.loads(done.stdout)
    assert error["code"] == 999 and f"installed for cpython-399, {sys.executable} is {tag}" \
        in error["msg"]


# -- install, re-run, uninstall ----------------------------------------------------------


def run(root: Path, payload: install.Payload, opts: Options | None = None,
        ) -> list[tuple[str, str]]:
    opts = opts or Options(bin_dir=root / "bin", conf_dir=root / "net.d")
    creds = read_credentials(root / "sa" / "token", root / "sa" / "ca.crt",
                                     "https://127.0.0.1:6443", {})
    return [(what, str(p.relative_to(root))) for what, p in install.install(opts, creds, payload)]


def test_install_rerun_and_uninstall(root: Path, payload: install.Payload) -> None:
    (root / "bin" / "portmap").write_text("#!/bin/sh\nexit 1\n")  # someone else's plugin
    (root / "net.d" / "99-other.conflist").write_text('{"name": "other"}')
    pkg = f"bin/tabby.d/{payload.name}"
    written = run(root, payload)
    assert written == [("written", pkg), ("written", "bin/tabby-cni"),
                       ("written", "bin/tabby-ipam"), ("written", "net.d/tabby-kubeconfig"),
                       ("written", "net.d/10-tabby.conflist")]
    assert stat.S_IMODE((root / "net.d/tabby-kubeconfig").stat().st_mode) == 0o600
    assert (root / pkg / "tabby" / "cni" / "plugin.py").is_file()
    assert list((root / pkg / "tabby" / "cni" / "__pycache__").glob("plugin.*.pyc"))
    assert not [p for p in (root / "bin" / "tabby.d").iterdir() if p.name != payload.name]

    # The installed plugin runs with nothing of this process: no environment, cwd /.
    done = subprocess.run([str(root / "bin" / "tabby-cni")], env={"CNI_COMMAND": "VERSION"},
                          input=b"", capture_output=True, cwd="/", timeout=30, check=False)
    assert done.returncode == 0 and b'"supportedVersions"' in done.stdout, done

    before = tree(root)
    assert run(root, payload) == [("unchanged", p) for _, p in written]
    assert tree(root) == before  # nothing rewritten, nothing touched

    # Another build: a new package directory, the launchers follow, the old one goes.
    newer = install.Payload(payload.files, payload.name + "x")
    assert run(root, newer) == [
        ("written", pkg + "x"), ("written", "bin/tabby-cni"), ("written", "bin/tabby-ipam"),
        ("unchanged", "net.d/tabby-kubeconfig"), ("unchanged", "net.d/10-tabby.conflist"),
        ("removed", pkg)]

    opts = Options(bin_dir=root / "bin", conf_dir=root / "net.d")
    assert sorted(str(p) for _, p in install.uninstall(opts)) == sorted(
        [f"{root}/{p}" for p in ("bin/tabby-cni", "bin/tabby-ipam", "net.d/tabby-kubeconfig",
                                 "net.d/10-tabby.conflist", pkg + "x")])
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == [
        "bin", "bin/portmap", "net.d", "net.d/99-other.conflist", "sa", "sa/ca.crt",
        "sa/token"]
    assert install.uninstall(opts) == []


def test_uninstall_leaves_what_is_not_its_own(root: Path) -> None:
    install.write_plugin(root / "bin")  # the lab's launcher: not install-cni's
    (root / "net.d" / "10-tabby.conflist").write_text(json.dumps(
        {"name": "k8s-pod-network", "plugins": [{"type": "calico"}]}))
    (root / "net.d" / "tabby-kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    before = tree(root)
    assert install.uninstall(Options(bin_dir=root / "bin", conf_dir=root / "net.d")) == []
    assert tree(root) == before


# -- bad input: one line, exit 1, nothing changed -------------------------------------------


def refused(capsys: pytest.CaptureFixture[str], args: list[str], root: Path) -> str:
    before = tree(root)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert tree(root) == before
    return err


def test_missing_directory(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shutil.rmtree(root / "net.d")
    assert "does not exist" in refused(capsys, argv(root), root)
    assert "does not exist" in refused(capsys, argv(root, "--uninstall"), root)


def test_conflist_of_another_network(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (root / "net.d" / "10-tabby.conflist").write_text('{"name": "other-net", "plugins": []}')
    err = refused(capsys, argv(root), root)
    assert "belongs to network 'other-net', not 'k8s-pod-network'" in err
    (root / "net.d" / "10-tabby.conflist").write_text("not json")
    assert "is not a JSON conflist" in refused(capsys, argv(root), root)


@pytest.mark.parametrize("token", ["missing", "empty", "directory"])
def test_unreadable_token(root: Path, capsys: pytest.CaptureFixture[str], token: str) -> None:
    path = root / "sa" / "token"
    path.unlink()
    if token == "empty":
        path.write_text("\n")
    elif token == "directory":
        path.mkdir()
    err = refused(capsys, argv(root), root)
    assert "service-account token" in err and str(path) in err


def test_no_api_server_known(root: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    args = [a for a in argv(root) if a not in ("--server", "https://[fd7a:bb1e::1]:6443")]
    assert "KUBERNETES_SERVICE_HOST" in refused(capsys, args, root)
    assert "--token-file" in refused(capsys, [*argv(root), "--datastore", "etcd://h:1"], root)
    assert "--mtu 20" in refused(capsys, [*argv(root), "--mtu", "20"], root)


def without_dac_override(args: list[str]) -> list[str]:
    """``args`` run so that file modes bind: as root, without CAP_DAC_OVERRIDE."""
    if os.geteuid() != 0:
        return args
    if shutil.which("setpriv") is None:
        pytest.fail("root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE")
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--", *args]


@pytest.mark.parametrize("what", ["bin", "net.d", "token"])
def test_read_only_directory_or_unreadable_token(root: Path, what: str) -> None:
    (root / "net.d" / "10-tabby.conflist").write_text('{"name": "k8s-pod-network"}')
    target = root / ("sa/token" if what == "token" else what)
    mode = stat.S_IMODE(target.stat().st_mode)
    before = tree(root)
    target.chmod(0o000 if what == "token" else 0o555)
    try:
        done = subprocess.run(without_dac_override(
            [sys.executable, "-m", "tabby.cli.main", *argv(root)]),
            capture_output=True, text=True, timeout=60, check=False)
    finally:
        target.chmod(mode)
    assert done.returncode == 1, done
    [line] = done.stderr.splitlines()
    expect = "Permission denied" if what == "token" else "is read-only"
    assert line.startswith("error: ") and expect in line and str(target) in line
    assert tree(root) == before  # the conflist as it was
