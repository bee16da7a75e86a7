"""tabby-cni as a runtime executes it: both entry points, what it checks beyond the
front-end, and every way the conversation with the agent can go (the front-end's
own refusals, shared with tabby-ipam, are in test_cni_frontend.py)."""

from __future__ import annotations

import itertools
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.cni import plugin, wire
from tabby.cni.install import import_root, write_plugin
from tabby.testing.cni import PluginRun, console_script, run_plugin, short_tempdir

KUBELET_ARGS = [("K8S_POD_NAMESPACE", "default"), ("K8S_POD_NAME", "web-0"),
                ("K8S_POD_INFRA_CONTAINER_ID", "c0ffee"), ("K8S_POD_UID", "1234-abcd"),
                ("IgnoreUnknown", "1")]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def launcher(workdir: Path) -> Path:
    return write_plugin(workdir / "bin")


def _entry_point(kind: str, launcher: Path) -> Path:
    if kind == "launcher":
        return launcher
    script = console_script()
    if script is None:
        pytest.skip("no pip-generated tabby-cni beside the interpreter (not a venv install)")
    return script


@pytest.fixture(params=["launcher", "console"])
def cni(request: pytest.FixtureRequest, launcher: Path) -> Path:
    return _entry_point(request.param, launcher)


def config(workdir: Path, **extra: Any) -> dict[str, Any]:
    return {"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "tabby-cni",
            "socket": str(workdir / "absent.sock"), **extra}


def container_env(command: str = "ADD", **extra: str) -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    env.update(extra)
    return {k: v for k, v in env.items() if v != "-"}


def assert_error(run: PluginRun, code: int, *words: str) -> dict[str, Any]:
    assert run.returncode != 0, run
    assert "Traceback" not in run.stderr, run.stderr
    error: dict[str, Any] = run.json()
    assert set(error) == {"cniVersion", "code", "msg", "details"}, error
    assert error["code"] == code, error
    assert error["cniVersion"] in wire.SUPPORTED_VERSIONS
    text = f"{error['msg']} {error['details']}"
    for word in words:
        assert word in text, error
    return error


# --- start-up ------------------------------------------------------------------


@pytest.mark.parametrize("asked", ["0.4.0", None])
def test_version_is_answered_locally(cni: Path, asked: str | None) -> None:
    """Both entry points; every version and the agreement with tabby-ipam are in
    test_cni_frontend.py."""
    run = run_plugin(cni, {"CNI_COMMAND": "VERSION"}, {"cniVersion": asked} if asked else b"")
    assert run.returncode == 0, run
    assert run.stderr == ""
    assert run.json() == {"cniVersion": asked or wire.LATEST_VERSION,
                          "supportedVersions": list(wire.SUPPORTED_VERSIONS)}


def test_plugin_imports_stay_light() -> None:
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import tabby.cni.plugin; "
             "print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", probe, str(import_root())],
                         capture_output=True, text=True, check=True).stdout.split()
    heavy = {"re", "enum", "typing", "json", "socket", "dataclasses", "ipaddress", "selectors",
             "os"}
    assert heavy.isdisjoint(out), sorted(heavy & set(out))


# --- what the front-end lets through, and tabby-cni's own settings ---------------------


def test_second_del_without_netns_reaches_the_agent(cni: Path, workdir: Path) -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "abc123", "CNI_IFNAME": "eth0",
           "CNI_NETNS": ""}
    # Validation passed: the only complaint is that no agent listens.
    assert_error(run_plugin(cni, env, config(workdir)), 11, "not running")


@pytest.mark.parametrize(("command", "env"), [
    ("STATUS", {}), ("GC", {"CNI_PATH": "/opt/cni/bin"})])
def test_status_and_gc_need_no_container(cni: Path, workdir: Path, command: str,
                                         env: dict[str, str]) -> None:
    conf = config(workdir, **({"cni.dev/valid-attachments": []} if command == "GC" else {}))
    assert_error(run_plugin(cni, {"CNI_COMMAND": command, **env}, conf), 11, "not running")


@pytest.mark.parametrize("mtu", ["abc", -1, 1400.5, True, 67, 70000])
def test_nonsense_mtu_is_refused(cni: Path, workdir: Path, mtu: object) -> None:
    assert_error(run_plugin(cni, container_env(), config(workdir, mtu=mtu)), 7, "mtu")


@pytest.mark.parametrize("ipam", [{"assign_ipv4": "false"},
                                  {"assign_ipv4": "false", "assign_ipv6": "false"},
                                  {"assign_ipv4": "no"}, {"assign_ipv6": 1}])
def test_ipam_assigning_nothing_or_nonsense_is_refused(cni: Path, workdir: Path,
                                                       ipam: dict[str, object]) -> None:
    assert_error(run_plugin(cni, container_env(), config(workdir, ipam=ipam)), 7, "ipam")


# --- the network configuration ---------------------------------------------------------


@pytest.mark.parametrize(("key", "value"), [
    ("socket", 7), ("socket", ""), ("timeout", -1), ("timeout", "soon")])
def test_invalid_network_config(cni: Path, workdir: Path, key: str, value: Any) -> None:
    conf = config(workdir)
    conf[key] = value
    assert_error(run_plugin(cni, container_env(), conf), 7, key)


# --- CNI_ARGS ------------------------------------------------------------------------


@pytest.mark.parametrize("order", list(itertools.permutations(range(5)))[::17])
def test_kubelet_args_in_any_order(cni: Path, workdir: Path, order: tuple[int, ...]) -> None:
    args = ";".join("=".join(KUBELET_ARGS[i]) for i in order)
    assert_error(run_plugin(cni, container_env(CNI_ARGS=args), config(workdir)), 11)


@pytest.mark.parametrize("ignore", ["1", "true", "TRUE", "True"])
def test_ignore_unknown_lets_other_args_through(cni: Path, workdir: Path, ignore: str) -> None:
    env = container_env(CNI_ARGS=f"FOO=bar;IgnoreUnknown={ignore};K8S_POD_NAME=a")
    assert_error(run_plugin(cni, env, config(workdir)), 11)


# --- talking to the agent ------------------------------------------------------------


def test_stale_socket_is_try_again_later(cni: Path, workdir: Path) -> None:
    path = workdir / "stale.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.close()  # the file stays, nobody listens: connection refused
    try:
        run = run_plugin(cni, container_env(), config(workdir, socket=str(path)))
        assert_error(run, 11, "refuses")
    finally:
        path.unlink()


def _one_shot_server(path: Path, reply: bytes) -> threading.Thread:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                wire.recv_frame(conn)
                conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(("reply", "code", "word"), [
    (b"", 11, "closed the connection"),
    (b"\x00\x00\x00\x05[1,2]", 11, "closed the connection"),
    (wire.encode_frame({"what": 1}), 999, "cannot read"),
    (wire.encode_frame({"error": {"code": 100, "msg": "IPAM failed: pool 198.19.0.0/16 is full",
                                  "details": "PoolExhausted"}}), 100, "pool")])
def test_agent_answers_are_checked(launcher: Path, workdir: Path, reply: bytes, code: int,
                                   word: str) -> None:
    path = workdir / "oneshot.sock"
    thread = _one_shot_server(path, reply)
    try:
        run = run_plugin(launcher, container_env(), config(workdir, socket=str(path)))
        assert_error(run, code, word)
    finally:
        thread.join(timeout=10)
        path.unlink()


def test_agent_that_never_answers_times_out(launcher: Path, workdir: Path) -> None:
    path = workdir / "mute.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    try:
        run = run_plugin(launcher, container_env(),
                         config(workdir, socket=str(path), timeout=0.3))
        assert_error(run, 11, "did not answer")
    finally:
        listener.close()
        path.unlink()


def test_run_in_process_never_raises() -> None:
    code, out = plugin.run({"CNI_COMMAND": "ADD"}, b"\x00")
    assert code == 1
    assert wire.loads(out.decode())["code"] == 4
