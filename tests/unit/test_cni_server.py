"""CNIServer with a fake pod handler, driven through the real tabby-cni subprocess."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import stat
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tabby.agent.cniserver import CNIServer, dispatch
from tabby.cni import wire
from tabby.cni.install import write_plugin
from tabby.cni.protocol import CNIError, PodResult
from tabby.errors import ConfigError, PoolExhausted, Unavailable
from tabby.testing.cni import (
    FakePodHandler,
    PluginRun,
    RecordingMetrics,
    console_script,
    run_plugin,
    short_tempdir,
)

NETNS = "/var/run/netns/tc-pod"


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = short_tempdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def launcher() -> Iterator[Path]:
    path = short_tempdir()
    yield write_plugin(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def handler() -> FakePodHandler:
    return FakePodHandler()


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def server(workdir: Path, handler: FakePodHandler,
           metrics: RecordingMetrics) -> Iterator[CNIServer]:
    srv = CNIServer(workdir / "run" / "cni.sock", handler, metrics)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def call(cni: Path, server: CNIServer, command: str, version: str = "1.1.0", *,
         container: str = "pod1", netns: str = NETNS, args: str = "",
         conf: dict[str, Any] | None = None) -> PluginRun:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args}
    if command in ("GC", "STATUS"):
        env = {"CNI_COMMAND": command, "CNI_PATH": "/opt/cni/bin"}
    config = {"cniVersion": version, "name": "k8s-pod-network", "type": "tabby-cni",
              "socket": str(server.socket_path), **(conf or {})}
    return run_plugin(cni, env, config)


def ok(run: PluginRun) -> PluginRun:
    assert run.returncode == 0, run
    assert run.stderr == "", run.stderr
    return run


def error(run: PluginRun, code: int) -> dict[str, Any]:
    assert run.returncode != 0, run
    assert "Traceback" not in run.stderr
    err = run.json()
    assert err["code"] == code, err
    return dict(err)


# --- ADD in every version ---------------------------------------------------------


@pytest.mark.parametrize("version", wire.SUPPORTED_VERSIONS)
def test_add_renders_the_requested_version(launcher: Path, server: CNIServer,
                                           version: str) -> None:
    result = ok(call(launcher, server, "ADD", version)).json()
    assert result["cniVersion"] == version
    host, pod = result["interfaces"]
    assert host["name"].startswith("tab") and "sandbox" not in host
    assert pod == {"name": "eth0", "mac": "0a:58:c6:13:00:01", "sandbox": NETNS,
                   **({"mtu": 1500} if version == "1.1.0" else {})}
    v4, v6 = result["ips"]
    legacy = wire.version_tuple(version) < (1, 0, 0)
    assert v4 == {**({"version": "4"} if legacy else {}), "interface": 1,
                  "address": "198.19.0.1/32", "gateway": "169.254.1.1"}
    assert v6 == {**({"version": "6"} if legacy else {}), "interface": 1,
                  "address": "fd7a:bb1e:1::1/128", "gateway": "fe80::ecee:eeff:feee:eeee"}
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
                                {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}]
    assert "dns" not in result
    parsed = PodResult.from_dict(result)
    assert parsed.container_addresses("eth0") == (ipaddress.ip_address("198.19.0.1"),
                                                  ipaddress.ip_address("fd7a:bb1e:1::1"))


def test_add_through_the_console_script(server: CNIServer) -> None:
    script = console_script()
    if script is None:
        pytest.skip("no pip-generated tabby-cni beside the interpreter")
    assert ok(call(script, server, "ADD")).json()["ips"][0]["address"] == "198.19.0.1/32"


def test_add_is_idempotent_and_passes_pod_identity(launcher: Path, server: CNIServer,
                                                   handler: FakePodHandler) -> None:
    args = "K8S_POD_UID=u1;K8S_POD_NAME=web;IgnoreUnknown=1;K8S_POD_NAMESPACE=shop"
    first = ok(call(launcher, server, "ADD", args=args)).json()
    again = ok(call(launcher, server, "ADD", args=args)).json()
    assert first == again
    assert handler.calls[0].container_id == "pod1"


def test_request_reaches_the_handler_intact(server: CNIServer) -> None:
    seen: list[Any] = []

    class Spy(FakePodHandler):
        def add(self, req: Any) -> PodResult:
            seen.append(req)
            return super().add(req)

    frame = {"command": "ADD", "containerID": "c1", "netns": NETNS, "ifname": "eth0",
             "args": {"K8S_POD_NAMESPACE": "shop", "K8S_POD_NAME": "web"}, "path": "/x",
             "config": {"cniVersion": "1.0.0", "name": "net", "prevResult": None,
                        "runtimeConfig": {"portMappings": []}}}
    label, answer = dispatch(Spy(), frame)
    assert label == "ADD" and "result" in answer
    (req,) = seen
    assert (req.pod_namespace, req.pod_name, req.handle_id) == ("shop", "web", "net.c1.eth0")
    assert req.runtime_config == {"portMappings": []}


# --- DEL, CHECK, STATUS, GC ---------------------------------------------------------


def test_del_is_idempotent_with_empty_netns(launcher: Path, server: CNIServer,
                                            handler: FakePodHandler) -> None:
    added = ok(call(launcher, server, "ADD")).json()
    first = ok(call(launcher, server, "DEL", conf={"prevResult": added}))
    second = ok(call(launcher, server, "DEL", netns=""))  # the runtime's second DEL
    third = ok(call(launcher, server, "DEL", netns=""))
    assert first.stdout == second.stdout == third.stdout == ""
    assert handler.pods == {}
    assert [(c.command, c.netns) for c in handler.calls] == [
        ("ADD", NETNS), ("DEL", NETNS), ("DEL", ""), ("DEL", "")]


def test_check_passes_handler_errors_through(launcher: Path, server: CNIServer) -> None:
    err = error(call(launcher, server, "CHECK", "1.0.0"), 3)
    assert err["msg"] == "container pod1 is unknown"
    assert err["cniVersion"] == "1.0.0"
    added = ok(call(launcher, server, "ADD", "1.0.0")).json()
    assert ok(call(launcher, server, "CHECK", "1.0.0", conf={"prevResult": added})).stdout == ""
    forged = {**added, "ips": [{"address": "198.19.0.99/32", "interface": 1}]}
    assert "differ" in error(call(launcher, server, "CHECK", "1.0.0", conf={"prevResult": forged}),
                             999)["msg"]


def test_status_reports_readiness(launcher: Path, server: CNIServer,
                                  handler: FakePodHandler) -> None:
    assert ok(call(launcher, server, "STATUS")).stdout == ""
    handler.ready = False
    assert error(call(launcher, server, "STATUS"), 50)["msg"] == "the fake agent is not ready"


def test_gc_passes_the_valid_attachments(launcher: Path, server: CNIServer,
                                         handler: FakePodHandler) -> None:
    for cid in ("keep1", "drop1", "keep2"):
        ok(call(launcher, server, "ADD", container=cid))
    valid = [{"containerID": "keep1", "ifname": "eth0"}, {"containerID": "keep2",
                                                          "ifname": "eth0"}]
    ok(call(launcher, server, "GC", conf={"cni.dev/valid-attachments": valid}))
    assert handler.gc_lists == [[("keep1", "eth0"), ("keep2", "eth0")]]
    assert sorted(handler.pods) == [("keep1", "eth0"), ("keep2", "eth0")]
    bad = [{"containerID": 5}]
    assert "containerID" in error(
        call(launcher, server, "GC", conf={"cni.dev/valid-attachments": bad}), 7)["msg"]


# --- failures ------------------------------------------------------------------------


@pytest.mark.parametrize(("exc", "code", "words"), [
    (RuntimeError("boom"), 999, ["ADD failed", "RuntimeError", "boom"]),
    (PoolExhausted("pool 198.19.0.0/16 has no free address"), 100, ["IPAM", "198.19.0.0/16"]),
    (Unavailable("sqlite: database is locked"), 11, ["try again later", "locked"]),
    (CNIError(7, "pod shop/web names pool nope", "no such IPPool"), 7, ["nope", "IPPool"])])
def test_handler_exceptions_become_error_objects(launcher: Path, server: CNIServer,
                                                 handler: FakePodHandler,
                                                 metrics: RecordingMetrics,
                                                 exc: Exception, code: int,
                                                 words: list[str]) -> None:
    handler.fail("ADD", exc)
    err = error(call(launcher, server, "ADD"), code)
    text = f"{err['msg']} {err['details']}"
    assert all(w in text for w in words), err
    handler.fail("ADD", None)
    assert ok(call(launcher, server, "ADD")).json()["ips"]  # still serving
    assert metrics.count("ADD", ok=False) == 1 and metrics.count("ADD", ok=True) == 1


def test_unreadable_frames_get_an_error_and_the_server_survives(
        launcher: Path, server: CNIServer, metrics: RecordingMetrics) -> None:
    for junk in (b"\x00\x00\x00\x03abc", b"\x00\x00\x00\x02[]", b"\xff\xff\xff\xff"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(server.socket_path))
            sock.sendall(junk)
            assert wire.recv_frame(sock)["error"]["code"] == wire.ERR_DECODING
    assert metrics.count("invalid", ok=False) == 3
    assert ok(call(launcher, server, "STATUS")).stdout == ""


def test_dispatch_validates_requests(handler: FakePodHandler) -> None:
    assert dispatch(handler, {"command": "ADD", "config": []})[1]["error"]["code"] == 6
    assert dispatch(handler, {"command": "NOPE"})[1]["error"]["code"] == 4
    frame = {"command": "ADD", "config": {"cniVersion": "9.9.9", "name": "n"}}
    assert dispatch(handler, frame)[1]["error"]["code"] == 1
    assert handler.calls == []


def test_concurrent_requests_are_served_in_parallel(launcher: Path, server: CNIServer,
                                                    handler: FakePodHandler,
                                                    metrics: RecordingMetrics) -> None:
    n = 6
    handler.gate = threading.Barrier(n, timeout=20)  # every ADD waits for all n
    with ThreadPoolExecutor(n) as pool:
        runs = list(pool.map(lambda i: call(launcher, server, "ADD", container=f"p{i}"),
                             range(n)))
    addresses = {ok(r).json()["ips"][0]["address"] for r in runs}
    assert len(addresses) == n
    assert metrics.count("ADD", ok=True) == n
    assert all(o.seconds >= 0 for o in metrics.observations)


def test_a_burst_of_pod_starts_is_not_turned_away(launcher: Path, server: CNIServer) -> None:
    # socketserver's default backlog (5) made most of such a burst fail with EAGAIN.
    with ThreadPoolExecutor(48) as pool:
        runs = list(pool.map(lambda i: call(launcher, server, "DEL", container=f"b{i}"),
                             range(96)))
    assert [r.stdout for r in runs if r.returncode] == []


# --- the socket file -----------------------------------------------------------------


def test_socket_is_private_and_removed_on_close(workdir: Path,
                                                handler: FakePodHandler) -> None:
    path = workdir / "a" / "b" / "cni.sock"
    with CNIServer(path, handler) as srv:
        srv.start()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert not path.exists()


def test_stale_socket_is_replaced_and_live_one_refused(launcher: Path, workdir: Path,
                                                       handler: FakePodHandler) -> None:
    path = workdir / "cni.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))
    leftover.close()
    with CNIServer(path, handler) as first:
        first.start()
        with pytest.raises(ConfigError, match="already running"):
            CNIServer(path, handler)
        assert ok(call(launcher, first, "STATUS")).stdout == ""


def test_regular_file_in_the_way_is_refused(workdir: Path, handler: FakePodHandler) -> None:
    path = workdir / "cni.sock"
    path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        CNIServer(path, handler)
    assert path.read_text() == "not a socket"


def test_serve_forever_returns_after_close(workdir: Path, handler: FakePodHandler) -> None:
    srv = CNIServer(workdir / "cni.sock", handler)
    thread = threading.Thread(target=srv.serve_forever)
    thread.start()
    srv.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    srv.close()  # idempotent


def test_close_before_start(workdir: Path, handler: FakePodHandler) -> None:
    srv = CNIServer(workdir / "cni.sock", handler)
    srv.close()
    assert not (workdir / "cni.sock").exists()
    with pytest.raises(RuntimeError):
        srv.start()
