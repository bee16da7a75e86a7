"""Fuzzing both CNI plugins as a runtime would run them: configs, environments, stdin.

Each case execs the real ``tabby-cni`` or ``tabby-ipam`` (the installed console
scripts) with a mutated CNI environment and a mutated (or broken) config on
stdin. tabby holds when:

- a non-zero exit comes with exactly one CNI error object on stdout (integer
  ``code``, string ``msg``);
- a zero exit comes with a JSON object on stdout;
- nothing ever prints a Python traceback;
- the run ends within 10 s.

tabby-cni's agent socket does not exist, so an ADD that gets past every check
ends in "try again later", which is an error object too. tabby-ipam works on a
throwaway SQLite store with one pool, so valid ADDs really allocate; after the
run, ``tabby ipam check`` on that store must find the blocks, handles and
affinities consistent. (Its allocations have no WorkloadEndpoint and its node
no Node object: a standalone IPAM plugin writes neither, so ``leaked-address``
and ``missing-node`` are expected there.)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.faults.fuzz import ODD_TEXT, SCALE, SEED, Tally, mutate, odd_value

BIN = Path(sys.executable).parent
COMMANDS = ["ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC", "add", "", "ADD ", "BOGUS"]
VERSIONS: list[Any] = ["1.1.0", "1.0.0", "0.4.0", "0.3.1", "0.3.0", "0.2.0", "9.9.9", "", None, 1]


def base_config(plugin: str, tmp: Path) -> dict[str, Any]:
    if plugin == "tabby-cni":
        return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "tabby-cni",
                "socket": str(tmp / "no-agent.sock"), "mtu": 1450,
                "ipam": {"assign_ipv4": "true", "assign_ipv6": "false"}}
    return {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "bridge",
            "ipam": {"type": "tabby-ipam", "datastore": f"sqlite://{tmp / 'ipam.db'}",
                     "node": "node-1", "assign_ipv4": True, "assign_ipv6": False,
                     "routes": [{"dst": "0.0.0.0/0"}]}}


def base_env(rnd: random.Random) -> dict[str, str]:
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{rnd.randrange(1000)}",
            "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin", "PATH": "/usr/bin:/bin",
            "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=p"}


def case(rnd: random.Random, plugin: str, tmp: Path) -> tuple[dict[str, str], bytes]:
    env = base_env(rnd)
    for _ in range(rnd.randrange(3)):
        key = rnd.choice(sorted(env))
        if rnd.random() < 0.3:
            env.pop(key, None)
        else:
            env[key] = rnd.choice(ODD_TEXT)[:5000].replace("\x00", "")
    env["CNI_COMMAND"] = rnd.choice(COMMANDS) if rnd.random() < 0.5 else \
        env.get("CNI_COMMAND", "ADD")
    config: Any = base_config(plugin, tmp)
    config["cniVersion"] = rnd.choice(VERSIONS)
    if rnd.random() < 0.7:
        config = mutate(rnd, config, edits=rnd.randrange(1, 4))
    roll = rnd.random()
    if roll < 0.08:
        return env, json.dumps(config).encode()[: rnd.randrange(1, 40)]  # truncated
    if roll < 0.12:
        return env, bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
    if roll < 0.14:
        return env, b'{"cniVersion": "1.0.0", "name": "x", "pad": "' + b"x" * 2_000_000 + b'"}'
    if roll < 0.17:
        return env, json.dumps(odd_value(rnd)).encode()
    return env, json.dumps(config, default=str).encode()


def verdict(done: subprocess.CompletedProcess[bytes]) -> str | None:
    err = done.stderr.decode(errors="replace")
    if "Traceback" in err:
        return "traceback: " + err.strip().splitlines()[-1][:200]
    try:
        out = json.loads(done.stdout or b"null")
    except ValueError:
        return f"exit {done.returncode}, stdout not JSON: {done.stdout[:120]!r}"
    if done.returncode == 0:
        return None if isinstance(out, dict) or done.stdout == b"" else f"exit 0 with {out!r}"
    if not (isinstance(out, dict) and isinstance(out.get("code"), int)
            and isinstance(out.get("msg"), str)):
        return f"exit {done.returncode} without an error object: {done.stdout[:160]!r}"
    return None


@pytest.mark.parametrize("plugin", ["tabby-cni", "tabby-ipam"])
def test_hostile_invocations_get_error_objects(plugin: str, tmp_path: Path) -> None:
    if plugin == "tabby-ipam":
        seed_store(tmp_path / "ipam.db")
    rnd = random.Random(f"{SEED}-{plugin}")
    tally = Tally(f"CNI fuzz, {plugin}")
    for n in range(SCALE):
        env, stdin = case(rnd, plugin, tmp_path)

        def run(env: dict[str, str] = env, stdin: bytes = stdin) -> str | None:
            done = subprocess.run([str(BIN / plugin)], input=stdin, env=env, cwd=tmp_path,
                                  capture_output=True, timeout=10, check=False)
            return verdict(done)
        tally.check(f"case {n} {env.get('CNI_COMMAND')!r}", run)
    print(tally.report())
    assert not tally.lost, "\n".join(tally.lost[:10])
    if plugin == "tabby-ipam":
        check = subprocess.run([str(BIN / "tabby"), "--datastore",
                                f"sqlite://{tmp_path / 'ipam.db'}", "ipam", "check", "-o",
                                "json"], capture_output=True, text=True, timeout=60,
                               check=False)
        problems = json.loads(check.stdout)["problems"]
        wrong = [p for p in problems if p["kind"] not in STANDALONE]
        assert not wrong, json.dumps(wrong, indent=1)[:3000]


STANDALONE = ("leaked-address", "missing-node")  # no endpoints, no Node: expected here


def seed_store(path: Path) -> None:
    pool = ("apiVersion: tabby.dev/v1\nkind: IPPool\nmetadata: {name: fuzz}\n"
            "spec: {cidr: 198.19.0.0/20, blockSize: 26}\n")
    done = subprocess.run([str(BIN / "tabby"), "--datastore", f"sqlite://{path}", "apply",
                           "-f", "-"], input=pool, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, "TABBY_LAB": "none"})
    assert done.returncode == 0, done.stderr
