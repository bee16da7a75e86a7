"""The tabby command as kubectl and calicoctl users expect it (issue 17): files and
directories, usage errors from the subcommand, read-only commands, get's forms and
outputs, selectors, dry runs, diff, label, edit, completion, ipam show --ip."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tabby.cli import kinds
from tabby.cli.main import main

POOL = """\
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {{name: {name}, labels: {{env: {env}}}}}
spec: {{cidr: {cidr}}}
"""
GNP = """\
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-all, labels: {env: dev, tier: web}}
spec: {selector: all(), types: [Ingress]}
"""
BAD = """\
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {name: pool-bad}
spec: {cidr: 198.20.0.0/16, blockSize: 33}
"""


def pool(name: str, cidr: str, env: str = "prod") -> str:
    return POOL.format(name=name, cidr=cidr, env=env)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite://{tmp_path}/tabby.db"
    monkeypatch.setenv("TABBY_DATASTORE", url)
    monkeypatch.setenv("TABBY_LAB", "clx-no-such-lab")
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def filled(store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "manifests"
    (d / "sub").mkdir(parents=True)
    (d / "a.yaml").write_text(pool("pool-a", "198.19.0.0/16"))
    (d / "b.yml").write_text(pool("pool-b", "198.18.128.0/20", env="dev"))
    (d / "sub" / "gnp.json").write_text(json.dumps({
        "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "deny-all", "labels": {"env": "dev", "tier": "web"}},
        "spec": {"selector": "all()", "types": ["Ingress"]}}))
    (d / "notes.txt").write_text("not a manifest")
    code, _, err = run(capsys, "apply", "-R", "-f", str(d))
    assert code == 0, err
    return d


# -- files, directories, summaries ----------------------------------------------------

def test_directory_and_recursive(store: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "m"
    (d / "sub").mkdir(parents=True)
    (d / "a.yaml").write_text(pool("pool-a", "198.19.0.0/16"))
    (d / "sub" / "g.yaml").write_text(GNP)
    code, out, _ = run(capsys, "apply", "-f", str(d))
    assert code == 0 and out.splitlines() == ["ippool.tabby.dev/pool-a created"]
    code, out, _ = run(capsys, "apply", "-f", str(d), "-R")
    assert out.splitlines() == ["ippool.tabby.dev/pool-a unchanged",
                                "globalnetworkpolicy.tabby.dev/deny-all created"]
    code, out, _ = run(capsys, "delete", "-R", "-f", str(d))
    assert code == 0 and len(out.splitlines()) == 2


def test_failed_multi_document_apply_names_every_document(
        store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "mixed.yaml"
    f.write_text(pool("pool-a", "198.19.0.0/16") + "---\n" + BAD + "---\n" + GNP)
    code, out, err = run(capsys, "apply", "-f", str(f))
    assert code == 1
    assert out.splitlines() == ["ippool.tabby.dev/pool-a created",
                                "globalnetworkpolicy.tabby.dev/deny-all created"]
    lines = err.splitlines()
    assert "error: 1 of 3 documents not applied:" in lines
    assert f"  applied: ippool.tabby.dev/pool-a ({f}[0])" in lines
    assert f"  not applied: ippool.tabby.dev/pool-bad ({f}[1])" in lines
    assert f"  applied: globalnetworkpolicy.tabby.dev/deny-all ({f}[2])" in lines


def test_missing_file_and_empty_directory(store: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "nope.yaml"))
    assert code == 1 and "no such file or directory" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "apply", "-f", str(tmp_path / "empty"))
    assert code == 1 and "no *.yaml, *.yml or *.json files" in err and "-R" in err


# -- usage errors: exit 2, from the subcommand ------------------------------------------

@pytest.mark.parametrize("argv, usage", [
    (["get", "ippools", "--bogus"], "usage: tabby get"),
    (["ipam", "show", "--bogus"], "usage: tabby ipam show"),
    (["get", "ippools", "-o", "xml"], "usage: tabby get"),
    (["apply", "-f", "x.yaml", "--dry-run=maybe"], "usage: tabby apply"),
    (["delete", "ippools"], "usage: tabby delete"),
    (["delete", "ippool", "a", "-l", "x=y"], "usage: tabby delete"),
    (["get", "ippool", "a", "-l", "x=y"], "usage: tabby get"),
    (["label", "ippool", "a"], "usage: tabby label"),
    (["completion", "fish"], "usage: tabby completion"),
])
def test_usage_errors_come_from_the_subcommand(store: str, argv: list[str], usage: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from tabby.store import open_store
    open_store(store).close()
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(usage), err
    assert "usage: tabby [-h]" not in err


def test_options_may_follow_names(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "get", "ipp", "-o", "name", "pool-a")
    assert code == 0 and out == "ippool.tabby.dev/pool-a\n"


# -- reading never creates a datastore ----------------------------------------------------

@pytest.mark.parametrize("argv", [["get", "ippools"], ["describe", "ippool", "x"],
                                  ["ipam", "show"], ["ipam", "check"], ["diff", "-f", "P"],
                                  ["delete", "ippool", "x"], ["label", "ipp", "x", "a=b"]])
def test_reading_commands_never_create_the_store(store: str, tmp_path: Path, argv: list[str],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text(pool("pool-a", "198.19.0.0/16"))
    code, _, err = run(capsys, *[str(tmp_path / "p.yaml") if a == "P" else a for a in argv])
    path = store.removeprefix("sqlite://")
    assert code in (1, 2)
    assert f"{path} does not exist" in err and "--datastore" in err and "TABBY_DATASTORE" in err
    assert not os.path.exists(path)


# -- get ----------------------------------------------------------------------------------

def test_calicoctl_names_resolve() -> None:
    expected = {"ipp": "IPPool", "ipps": "IPPool", "pools": "IPPool", "pol": "NetworkPolicy",
                "np": "NetworkPolicy", "policy": "NetworkPolicy", "pols": "NetworkPolicy",
                "gnp": "GlobalNetworkPolicy", "gnps": "GlobalNetworkPolicy",
                "bgpp": "BGPPeer", "bgpps": "BGPPeer", "bgpconfig": "BGPConfiguration",
                "hep": "HostEndpoint", "wep": "WorkloadEndpoint", "felixconfig":
                "FelixConfiguration", "netsets": "NetworkSet", "networksets": "NetworkSet",
                "gnetsets": "GlobalNetworkSet", "ipamconfig": "IPAMConfiguration",
                "networkpolicy": "NetworkPolicy", "node": "Node"}
    for name, kind in expected.items():
        assert kinds.resolve(name).KIND.kind == kind, name
    # The bare name stays Kubernetes'; the group selects tabby's.
    assert kinds.resolve("networkpolicy").KIND.group == "networking.k8s.io"
    assert kinds.resolve("policy.projectcalico.org").KIND.group == "tabby.dev"
    from tabby.model import all_kinds
    modelled = {c.KIND.kind for c in all_kinds() if c.KIND.group == "tabby.dev"}
    calico = {"BGPConfiguration", "BGPPeer", "FelixConfiguration", "GlobalNetworkPolicy",
              "GlobalNetworkSet", "HostEndpoint", "IPAMConfiguration", "IPPool",
              "NetworkPolicy", "NetworkSet", "WorkloadEndpoint"}
    assert calico <= modelled & set(kinds.CALICOCTL_NAMES)


def test_get_kinds_names_and_outputs(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "get", "ipp,gnp", "-o", "name")
    assert out.splitlines() == ["ippool.tabby.dev/pool-a", "ippool.tabby.dev/pool-b",
                                "globalnetworkpolicy.tabby.dev/deny-all"]
    code, out, _ = run(capsys, "get", "ippool/pool-b", "gnp/deny-all", "-o", "name")
    assert out.splitlines() == ["ippool.tabby.dev/pool-b", "globalnetworkpolicy.tabby.dev/deny-all"]
    code, out, _ = run(capsys, "get", "ippool/pool-b", "-o", "json")
    assert json.loads(out)["kind"] == "IPPool"
    code, out, _ = run(capsys, "get", "ipp", "pool-a", "pool-b", "-o", "json")
    assert json.loads(out)["kind"] == "List" and len(json.loads(out)["items"]) == 2
    code, out, err = run(capsys, "get", "ipp", "pool-a", "pool-x", "-o", "name")
    assert code == 1 and out == "ippool.tabby.dev/pool-a\n" and "'pool-x' not found" in err
    code, plain, _ = run(capsys, "get", "ipp")
    code, wide, _ = run(capsys, "get", "ipp", "-o", "wide")
    assert len(wide.splitlines()[0].split()) > len(plain.splitlines()[0].split())
    for kind in ("gnp", "pods", "nodes", "hep"):
        _, plain, _ = run(capsys, "get", kind, "-A")
        _, wide, _ = run(capsys, "get", kind, "-A", "-o", "wide")
        if plain:
            assert len(wide.splitlines()[0]) > len(plain.splitlines()[0]), kind
    code, out, _ = run(capsys, "get", "ipp,gnp")
    blocks = out.split("\n\n")
    assert len(blocks) == 2 and "ippool.tabby.dev/pool-a" in blocks[0]
    code, out, _ = run(capsys, "get", "ipp", "-o",
                       'jsonpath={range .items[*]}{.metadata.name}={.spec.cidr}{"\\n"}{end}')
    assert out == "pool-a=198.19.0.0/16\npool-b=198.18.128.0/20\n"
    code, out, _ = run(capsys, "get", "ipp", "pool-a", "-o", "jsonpath={.spec.blockSize}")
    assert out == "26"
    code, out, _ = run(capsys, "get", "ipp", "-o",
                       "custom-columns=NAME:.metadata.name,ENV:.metadata.labels.env,X:.spec.nope")
    assert [line.split() for line in out.splitlines()] == [
        ["NAME", "ENV", "X"], ["pool-a", "prod", "<none>"], ["pool-b", "dev", "<none>"]]


@pytest.mark.parametrize("selector, names", [
    ("env=dev", ["pool-b", "deny-all"]),
    ("env==prod", ["pool-a"]),
    ("env!=prod", ["pool-b", "deny-all"]),
    ("env in (prod,dev),tier", ["deny-all"]),
    ("env notin (dev)", ["pool-a"]),
    ("!tier", ["pool-a", "pool-b"]),
])
def test_label_selectors(filled: Path, selector: str, names: list[str],
                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "get", "ipp,gnp", "-l", selector, "-o", "name")
    assert code == 0
    assert [line.split("/")[1] for line in out.splitlines()] == names


def test_calico_selector_and_bad_selectors(filled: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "get", "ipp,gnp", "--calico-selector",
                       "env == 'dev' && !has(tier)", "-o", "name")
    assert out.splitlines() == ["ippool.tabby.dev/pool-b"]
    code, _, err = run(capsys, "get", "ipp", "-l", "env in (a", "-o", "name")
    assert code == 1 and "selector 'env in (a'" in err and "position" in err
    code, _, err = run(capsys, "get", "ipp", "-l", "bad key=1")
    assert code == 1 and "position" in err


# -- dry runs, create, replace, diff --------------------------------------------------------

def test_dry_runs_write_nothing_and_server_runs_the_rules(
        filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new = tmp_path / "new.yaml"
    new.write_text(pool("pool-c", "198.18.160.0/20"))
    overlap = tmp_path / "overlap.yaml"
    overlap.write_text(pool("pool-o", "198.19.4.0/24"))
    for mode in ("client", "server"):
        code, out, _ = run(capsys, "apply", "-f", str(new), f"--dry-run={mode}")
        suffix = "(dry run)" if mode == "client" else "(server dry run)"
        assert code == 0 and out.strip() == f"ippool.tabby.dev/pool-c created {suffix}"
        code, out, _ = run(capsys, "delete", "ipp", "pool-a", f"--dry-run={mode}")
        assert code == 0 and out.strip() == f"ippool.tabby.dev/pool-a deleted {suffix}"
    code, out, _ = run(capsys, "get", "ipp", "-o", "name")
    assert out.splitlines() == ["ippool.tabby.dev/pool-a", "ippool.tabby.dev/pool-b"]
    # Only the server dry run knows the pool overlaps a stored one.
    assert run(capsys, "apply", "-f", str(overlap), "--dry-run=client")[0] == 0
    code, _, err = run(capsys, "apply", "-f", str(overlap), "--dry-run=server")
    assert code == 1 and "overlaps IPPool/pool-a" in err
    code, _, err = run(capsys, "create", "-f", str(filled / "a.yaml"), "--dry-run=server")
    assert code == 1 and "already exists" in err
    code, _, err = run(capsys, "replace", "-f", str(new))
    assert code == 1 and "not found" in err


def test_create_and_replace(filled: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(pool("pool-c", "198.18.160.0/20"))
    assert run(capsys, "create", "-f", str(f))[1] == "ippool.tabby.dev/pool-c created\n"
    code, _, err = run(capsys, "create", "-f", str(f))
    assert code == 1 and "already exists" in err
    f.write_text(pool("pool-c", "198.18.160.0/20", env="staging"))
    assert run(capsys, "replace", "-f", str(f))[1] == "ippool.tabby.dev/pool-c replaced\n"
    code, out, _ = run(capsys, "get", "ipp", "pool-c", "-o", "jsonpath={.metadata.labels.env}")
    assert out == "staging"


def test_diff(filled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "diff", "-f", str(filled / "a.yaml"))[:2] == (0, "")
    changed = tmp_path / "a.yaml"
    changed.write_text(pool("pool-a", "198.19.0.0/16", env="qa"))
    code, out, _ = run(capsys, "diff", "-f", str(changed))
    assert code == 1
    assert "--- live/ippool.tabby.dev/pool-a" in out and "-    env: prod" in out
    assert "+    env: qa" in out and "resourceVersion" not in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    assert run(capsys, "diff", "-f", str(bad))[0] == 2
    code, out, _ = run(capsys, "get", "ipp", "pool-a", "-o", "jsonpath={.metadata.labels.env}")
    assert out == "prod"


# -- label, edit ------------------------------------------------------------------------------

def test_label(filled: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "label", "ipp", "pool-a", "team=net")[1] == \
        "ippool.tabby.dev/pool-a labeled\n"
    code, _, err = run(capsys, "label", "ipp", "pool-a", "env=dev")
    assert code == 1 and "--overwrite" in err
    code, out, _ = run(capsys, "label", "ippool/pool-a", "env=dev", "--overwrite", "team-")
    assert code == 0
    code, out, _ = run(capsys, "get", "ipp", "pool-a", "-o", "jsonpath={.metadata.labels}")
    assert json.loads(out) == {"env": "dev"}
    code, _, err = run(capsys, "label", "ipp", "pool-a", "bad key=x")
    assert code == 1 and "metadata.labels.bad key" in err
    code, out, _ = run(capsys, "label", "gnp", "-l", "env=dev", "seen=yes")
    assert out == "globalnetworkpolicy.tabby.dev/deny-all labeled\n"


def test_edit_reopens_with_the_error(filled: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen = tmp_path / "seen"
    editor = tmp_path / "editor.sh"
    # 1st round: an invalid blockSize; 2nd: what the user sees, then a valid change.
    editor.write_text(f"""#!/bin/sh
if [ -e {seen} ]; then
  cp "$1" {seen}.2
  sed -i 's/blockSize: 33/blockSize: 26/; s/natOutgoing: false/natOutgoing: true/' "$1"
else
  touch {seen}; sed -i 's/blockSize: 26/blockSize: 33/' "$1"
fi
""")
    editor.chmod(0o755)
    monkeypatch.setenv("EDITOR", str(editor))
    monkeypatch.delenv("VISUAL", raising=False)
    code, out, _ = run(capsys, "edit", "ipp", "pool-a")
    assert code == 0 and out == "ippool.tabby.dev/pool-a edited\n"
    reopened = Path(f"{seen}.2").read_text()
    assert "# error: IPPool/pool-a: spec.blockSize: 33 is outside 20..32" in reopened
    code, out, _ = run(capsys, "get", "ipp", "pool-a", "-o", "jsonpath={.spec.natOutgoing}")
    assert out == "true"
    monkeypatch.setenv("EDITOR", "true")
    assert run(capsys, "edit", "ipp", "pool-a")[1] == "Edit cancelled, no changes made.\n"


# -- describe, ipam, completion ------------------------------------------------------------

def test_describe_pool_and_ipam_show_ip(filled: Path, store: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from tabby.ipam import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client
    with open_store(store) as s:
        got = IPAM(Client(s)).assign("net.c1.eth0", "node-1", num_v4=1, num_v6=0,
                                     attrs={"namespace": "x", "pod": "a", "node": "node-1"})
    ip = str(got.addresses[0])
    code, out, _ = run(capsys, "ipam", "show", "--ip", ip, "-o", "json")
    info = json.loads(out)
    assert info["attributes"]["pod"] == "a" and info["node"] == "node-1"
    code, out, _ = run(capsys, "ipam", "show", "--ip", ip)
    assert out.startswith(f"{ip} is allocated: pool {info['pool']}, block {info['block']}")
    assert "handle net.c1.eth0" in out
    code, out, _ = run(capsys, "describe", "ipp", info["pool"])
    assert code == 0 and "1 used" in out
    assert out.split("Blocks:")[1].split()[4:6] == [info["block"], "node-1"]
    assert "not allocated" in run(capsys, "ipam", "show", "--ip", "198.19.200.1")[1]
    assert "not in any IP pool" in run(capsys, "ipam", "show", "--ip", "10.1.1.1")[1]
    assert "AFFINITIES" not in run(capsys, "ipam", "show")[1]
    assert "AFFINITIES" in run(capsys, "ipam", "show", "--show-blocks")[1]
    assert run(capsys, "ipam", "show", "--ip", "nope")[0] == 2


def test_completion_comes_from_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    for shell in ("bash", "zsh"):
        code, out, _ = run(capsys, "completion", shell)
        assert code == 0
        for word in ("apply", "describe", "--dry-run", "--calico-selector", "diags"):
            assert word in out, (shell, word)


def test_diags_plan() -> None:
    from tabby.cli.diags import Where, plan
    lab = plan(Where("node-1", "clx-node-1", Path("/x/bird.ctl"), None))
    assert all(c.argv[:4] == ("ip", "netns", "exec", "clx-node-1") for c in lab)
    names = {c.filename for c in lab}
    assert {"nft.txt", "bird-protocols.txt", "ip-routes-v4.txt", "ip-routes-v6.txt"} <= names
    here = plan(Where("n", None, Path("/x/bird.ctl"), None))
    assert ("birdc", "-s", "/x/bird.ctl", "show", "protocols", "all") in [c.argv for c in here]


def test_watch_streams_changes(filled: Path, store: str, tmp_path: Path) -> None:
    env = {**os.environ, "TABBY_DATASTORE": store, "TABBY_LAB": "clx-no-such-lab"}
    tabby = [sys.executable, "-m", "tabby.cli.main"]
    with subprocess.Popen([*tabby, "get", "ipp", "-w", "-o", "name", "--request-timeout",
                           "30"], env=env, text=True, stdout=subprocess.PIPE) as watcher:
        assert watcher.stdout is not None
        assert watcher.stdout.readline() == "ippool.tabby.dev/pool-a\n"
        assert watcher.stdout.readline() == "ippool.tabby.dev/pool-b\n"
        f = tmp_path / "w.yaml"
        f.write_text(pool("pool-w", "198.18.176.0/20"))
        deadline = time.monotonic() + 20
        subprocess.run([*tabby, "apply", "-f", str(f)], env=env, check=True,
                       capture_output=True)
        subprocess.run([*tabby, "delete", "ipp", "pool-w"], env=env, check=True,
                       capture_output=True)
        assert watcher.stdout.readline() == "ippool.tabby.dev/pool-w\n"  # created
        assert watcher.stdout.readline() == "ippool.tabby.dev/pool-w\n"  # deleted
        assert time.monotonic() < deadline
        watcher.kill()
