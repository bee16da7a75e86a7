"""The one CNI front-end: both plugins, executed as a runtime executes them, answer alike.

Every invocation the front-end refuses runs through the real ``tabby-cni`` and
``tabby-ipam`` entry points in one parametrised test, which checks the exit
status and error object of each and that the two agree; the rules themselves
(CNI_ARGS as libcni parses them, the error object of a failing handler) are
tested in-process below.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.cni import frontend, wire
from tabby.cni.install import write_plugin
from tabby.errors import CNIError
from tabby.testing.cni import PluginRun, run_plugin, short_tempdir

PLUGINS = ("tabby-cni", "tabby-ipam")
KUBELET_ARGS = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0"


@pytest.fixture(scope="module")
def entry_points() -> Iterator[dict[str, Path]]:
    """tabby-cni as installed for runtimes (the launcher) and tabby-ipam's console script."""
    ipam = Path(sys.executable).parent / "tabby-ipam"
    if not os.access(ipam, os.X_OK):
        pytest.skip("no pip-generated tabby-ipam beside the interpreter (not a venv install)")
    workdir = short_tempdir()
    yield {"tabby-cni": write_plugin(workdir / "bin"), "tabby-ipam": ipam}
    shutil.rmtree(workdir, ignore_errors=True)


def env(command: str = "ADD", **extra: str) -> dict[str, str]:
    """A kubelet-like environment; a value of "-" leaves the variable out."""
    full = {"CNI_COMMAND": command, "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": KUBELET_ARGS, **extra}
    return {k: v for k, v in full.items() if v != "-"}


def conf(**extra: Any) -> dict[str, Any]:
    """A config either plugin accepts as far as the front-end goes."""
    return {"cniVersion": "1.1.0", "name": "k8s-pod-network", "type": "tabby-cni",
            "socket": "/nonexistent/tabby.sock",
            "ipam": {"type": "tabby-ipam", "datastore": "sqlite:///nonexistent/x.db"}, **extra}


# (environment, stdin, code, words in msg or details). The front-end refuses before
# it has accepted the config's cniVersion, so every answer speaks the latest version.
REFUSED: dict[str, tuple[dict[str, str], Any, int, tuple[str, ...]]] = {
    "missing CNI_COMMAND": (env(CNI_COMMAND="-"), conf(), 4, ("CNI_COMMAND",)),
    "unknown command": (env("FROB"), conf(), 4, ("FROB",)),
    "ADD without CNI_NETNS": (env(CNI_NETNS="-"), conf(), 4, ("CNI_NETNS",)),
    "ADD without CNI_PATH": (env(CNI_PATH="-"), conf(), 4, ("CNI_PATH",)),
    "DEL without CNI_IFNAME": (env("DEL", CNI_IFNAME="-"), conf(), 4, ("CNI_IFNAME",)),
    "GC without CNI_PATH": (env("GC", CNI_PATH="-"), conf(), 4, ("CNI_PATH",)),
    "CHECK with a bad container id": (env("CHECK", CNI_CONTAINERID="-x"), conf(), 4,
                                      ("CNI_CONTAINERID",)),
    "ADD with a long ifname": (env(CNI_IFNAME="a-very-long-ifname"), conf(), 4,
                               ("CNI_IFNAME", "too long")),
    "malformed CNI_ARGS": (env(CNI_ARGS="K8S_POD_NAME=a;;IgnoreUnknown=1"), conf(), 4,
                           ("CNI_ARGS", "invalid pair")),
    "unknown CNI_ARGS": (env(CNI_ARGS="K8S_POD_NAME=a;FOO=bar"), conf(), 4,
                         ("CNI_ARGS", "FOO", "IgnoreUnknown")),
    "IgnoreUnknown not a boolean": (env(CNI_ARGS="FOO=1;IgnoreUnknown=yes"), conf(), 4,
                                    ("IgnoreUnknown", "yes")),
    "empty stdin": (env(), b"", 6, ("no network configuration",)),
    "stdin not JSON": (env(), b'{"cniVersion": ', 6, ("decoding",)),
    "stdin not UTF-8": (env(), b"\xff\xfe", 6, ("decoding",)),
    "stdin not an object": (env(), b"[1, 2]", 6, ("not a JSON object",)),
    "config over the size limit": (env(), conf(padding="x" * (frontend.MAX_CONFIG + 1)), 7,
                                   ("too large",)),
    "unsupported version": (env(), conf(cniVersion="0.2.0"), 1,
                            ("incompatible CNI versions", "'0.2.0'", "1.1.0")),
    "no version": (env(), {"name": "n", "type": "x"}, 1, ("incompatible", "None")),
    "CHECK in 0.3.1": (env("CHECK"), conf(cniVersion="0.3.1"), 1, ("CHECK", "0.4.0")),
    "STATUS in 1.0.0": (env("STATUS"), conf(cniVersion="1.0.0"), 1, ("STATUS",)),
    "missing network name": (env(), conf(name=""), 7, ("network name",)),
    "malformed network name": (env(), conf(name="bad name"), 7, ("network name",)),
    # A GC without the runtime's list once tore down every pod on the node and exited 0:
    # no list is an error, never "nothing is valid".
    "GC without valid attachments": (env("GC"), conf(), 7, ("valid-attachments",)),
}


def _error(run: PluginRun) -> dict[str, Any]:
    assert run.returncode == 1, run
    assert "Traceback" not in run.stdout + run.stderr, run
    assert run.stdout.endswith("\n") and run.stdout.count("\n") == 1, run
    error: dict[str, Any] = run.json()
    assert list(error) == ["cniVersion", "code", "msg", "details"], error
    return error


@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_both_plugins_refuse_alike(entry_points: dict[str, Path], case: str) -> None:
    environment, stdin, code, words = REFUSED[case]
    errors = {}
    for name in PLUGINS:
        error = _error(run_plugin(entry_points[name], environment, stdin))
        assert error["code"] == code, (name, error)
        assert error["cniVersion"] == wire.LATEST_VERSION, (name, error)
        text = f"{error['msg']} {error['details']}"
        assert all(word in text for word in words), (name, error)
        errors[name] = {k: str(v).replace(name, "PLUGIN") for k, v in error.items()}
    assert errors["tabby-cni"] == errors["tabby-ipam"]


@pytest.mark.parametrize("asked", [*wire.SUPPORTED_VERSIONS, "0.2.0", None, "garbage"])
def test_both_plugins_answer_version_alike(entry_points: dict[str, Path],
                                           asked: str | None) -> None:
    stdin: Any = b"{not json" if asked == "garbage" else {"cniVersion": asked} if asked else b""
    outputs = set()
    for name in PLUGINS:
        run = run_plugin(entry_points[name], {"CNI_COMMAND": "VERSION"}, stdin)
        assert run.returncode == 0 and run.stderr == "", (name, run)
        assert run.json() == {
            "cniVersion": asked if asked in wire.SUPPORTED_VERSIONS else "1.1.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
        outputs.add(run.stdout)
    assert len(outputs) == 1, outputs


# --- the rules, in-process ----------------------------------------------------------------


def _request(environment: dict[str, str], config: dict[str, Any]) -> dict[str, Any]:
    return frontend.parse_request("tabby-test", environment, wire.dumps(config).encode())


ALL_VARS = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")
GC_CONF = {"cni.dev/valid-attachments": []}


@pytest.mark.parametrize("command", ["ADD", "CHECK", "DEL", "STATUS", "GC"])
def test_required_variables(command: str) -> None:
    """Spec 1.1's table, plus CNI_PATH for ADD and CHECK: each required variable's
    absence is named; every other one may be missing."""
    config = conf(**GC_CONF)
    for var in ALL_VARS:
        environment = env(command, **{var: "-"})
        if var in frontend.REQUIRED_ENV[command]:
            with pytest.raises(CNIError) as info:
                _request(environment, config)
            assert (info.value.code, info.value.msg) == (
                4, f"required env variables [{var}] missing")
        else:
            assert _request(environment, config)["command"] == command
    bare = {"CNI_COMMAND": command, **{var: "x" for var in frontend.REQUIRED_ENV[command]}}
    assert _request(bare, config)["args"] == {}


@pytest.mark.parametrize("version", wire.SUPPORTED_VERSIONS)
@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_commands_by_version(version: str, command: str) -> None:
    allowed = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}.get(command, "0.3.0")
    config = conf(cniVersion=version, **GC_CONF)
    if wire.version_tuple(version) >= wire.version_tuple(allowed):
        assert _request(env(command), config)["config"]["cniVersion"] == version
    else:
        with pytest.raises(CNIError) as info:
            _request(env(command), config)
        assert info.value.code == wire.ERR_INCOMPATIBLE_VERSION


@pytest.mark.parametrize(("var", "value", "ok"), [
    ("CNI_CONTAINERID", "0a_b.c-d", True), ("CNI_CONTAINERID", "-a", False),
    ("CNI_CONTAINERID", "_a", False), ("CNI_CONTAINERID", "a b", False),
    ("CNI_CONTAINERID", "a/b", False), ("CNI_CONTAINERID", "é", False),
    ("CNI_IFNAME", "eth0", True), ("CNI_IFNAME", "x" * 15, True),
    ("CNI_IFNAME", "x" * 16, False), ("CNI_IFNAME", ".", False), ("CNI_IFNAME", "..", False),
    ("CNI_IFNAME", "a/b", False), ("CNI_IFNAME", "a:b", False), ("CNI_IFNAME", "a\tb", False),
])
def test_container_id_and_interface_syntax(var: str, value: str, ok: bool) -> None:
    for command in ("ADD", "DEL", "CHECK"):
        if ok:
            _request(env(command, **{var: value}), conf())
            continue
        with pytest.raises(CNIError) as info:
            _request(env(command, **{var: value}), conf())
        assert info.value.code == 4 and var in info.value.msg and info.value.details == value


# --- CNI_ARGS, as libcni's types.LoadArgs reads them -----------------------------------


@pytest.mark.parametrize(("text", "parsed"), [
    ("", {}),
    ("K8S_POD_NAME=a", {"K8S_POD_NAME": "a"}),
    ("K8S_POD_NAME=", {"K8S_POD_NAME": ""}),
    ("IgnoreUnknown=1;FOO=bar", {"IgnoreUnknown": "1", "FOO": "bar"}),
    ("FOO=bar;IgnoreUnknown=TRUE", {"FOO": "bar", "IgnoreUnknown": "TRUE"}),
    ("IgnoreUnknown=true;=v", {"IgnoreUnknown": "true", "": "v"}),  # an unknown, empty key
    ("K8S_POD_NAME=a;K8S_POD_NAME=b", {"K8S_POD_NAME": "b"}),  # the last one wins
])
def test_cni_args_accepted(text: str, parsed: dict[str, str]) -> None:
    assert frontend.parse_cni_args(text) == parsed


@pytest.mark.parametrize(("text", "words"), [
    ("K8S_POD_NAME", "invalid pair 'K8S_POD_NAME'"),
    ("K8S_POD_NAME=a;", "invalid pair ''"),
    ("A=1;;IgnoreUnknown=1", "invalid pair ''"),
    ("K8S_POD_NAME=a=b", "invalid pair"),
    ("FOO=bar", "unknown args ['FOO']"),
    ("FOO=bar;IgnoreUnknown=0", "unknown args ['FOO']"),
    ("FOO=bar;ignoreunknown=1", "unknown args ['FOO', 'ignoreunknown']"),  # keys are exact
    ("=v", "unknown args ['']"),
    ("IgnoreUnknown=maybe", "is not a boolean"),
])
def test_cni_args_refused(text: str, words: str) -> None:
    with pytest.raises(CNIError) as info:
        frontend.parse_cni_args(text)
    assert info.value.code == wire.ERR_INVALID_ENVIRONMENT
    assert words in info.value.msg


# --- the handler's side ------------------------------------------------------------------


def _serve(handler: Any, command: str = "ADD", **config: Any) -> tuple[int, Any]:
    code, out = frontend.serve("tabby-test", handler, env(command),
                               (wire.dumps(conf(**config)) + "\n").encode())
    return code, wire.loads(out.decode()) if out else None


def test_handler_gets_the_request_and_its_bytes_are_printed() -> None:
    seen = []

    def handler(request: dict[str, Any]) -> bytes:
        seen.append(request)
        return b'{"cniVersion":"0.4.0"}\n'

    code, out = _serve(handler, cniVersion="0.4.0")
    assert (code, out) == (0, {"cniVersion": "0.4.0"})
    assert seen == [{"command": "ADD", "containerID": "abc123", "netns": "/run/netns/x",
                     "ifname": "eth0", "args": {"IgnoreUnknown": "1",
                                                "K8S_POD_NAMESPACE": "default",
                                                "K8S_POD_NAME": "web-0"},
                     "path": "/opt/cni/bin", "config": conf(cniVersion="0.4.0")}]
    assert _serve(lambda request: b"", "DEL") == (0, None)


def test_handler_errors_become_error_objects_in_the_config_version() -> None:
    def refuse(request: dict[str, Any]) -> bytes:
        raise CNIError(102, "check failed", "address gone")

    def crash(request: dict[str, Any]) -> bytes:
        raise KeyError("ips")

    assert _serve(refuse, cniVersion="1.0.0") == (1, {
        "cniVersion": "1.0.0", "code": 102, "msg": "check failed", "details": "address gone"})
    assert _serve(crash, cniVersion="0.3.0") == (1, {
        "cniVersion": "0.3.0", "code": 999, "msg": "tabby-test: unexpected error",
        "details": "KeyError: 'ips'"})


def test_environment_is_read_as_os_reads_it() -> None:
    assert frontend.environment() == dict(os.environ)
