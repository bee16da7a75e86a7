"""The tabby CLI's contract: apply/get/delete/ipam, outputs for scripts, errors for people."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tabby.cli.main import main

POOLS = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool-a}
spec: {cidr: 198.19.0.0/16}
---
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {name: pool-v6}
spec: {cidr: "fd7a:bb1e:1::/48"}
"""

BAD = """\
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {name: pool-bad}
spec: {cidr: 198.20.0.0/16, blockSize: 33}
---
apiVersion: tabby.dev/v1
kind: Gadget
metadata: {name: g}
---
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {name: pool-ok}
spec: {cidr: 198.21.0.0/16}
---
apiVersion: tabby.dev/v1
kind: IPPool
metadata: {name: pool-overlap}
spec: {cidr: 198.19.4.0/24}
"""


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite://{tmp_path}/tabby.db"
    monkeypatch.setenv("TABBY_DATASTORE", url)
    monkeypatch.setenv("TABBY_LAB", "no-such-lab-for-cli-tests")
    return url


def run(capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = "",
        monkeypatch: pytest.MonkeyPatch | None = None) -> tuple[int, str, str]:
    if monkeypatch is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "f.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_apply_get_delete_round_trip(store: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, POOLS)
    code, out, _ = run(capsys, "apply", "-f", f)
    assert code == 0
    assert out.splitlines() == ["ippool.tabby.dev/pool-a created",
                                "ippool.tabby.dev/pool-v6 created"]
    code, out, _ = run(capsys, "apply", "-f", f)
    assert out.splitlines() == ["ippool.tabby.dev/pool-a unchanged",
                                "ippool.tabby.dev/pool-v6 unchanged"]
    code, out, _ = run(capsys, "get", "ippools", "-o", "json")
    data = json.loads(out)
    assert data["kind"] == "List" and data["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in data["items"]] == ["pool-a", "pool-v6"]
    assert data["items"][1]["spec"]["blockSize"] == 122
    code, out, _ = run(capsys, "get", "ippool", "pool-a", "-o", "json")
    one = json.loads(out)
    assert one["kind"] == "IPPool" and one["spec"]["cidr"] == "198.19.0.0/16"
    code, out, _ = run(capsys, "get", "ippools")
    assert out.splitlines()[0].split()[:3] == ["NAME", "CIDR", "BLOCKSIZE"]
    assert "198.19.0.0/16" in out
    code, out, _ = run(capsys, "delete", "ippool", "pool-a")
    assert code == 0 and out.strip() == "ippool.tabby.dev/pool-a deleted"
    code, _, err = run(capsys, "get", "ippool", "pool-a")
    assert code == 1 and "not found" in err


def test_empty_list_is_still_a_list(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    from tabby.store import open_store
    open_store(store).close()  # an existing, empty store (a missing one is an error)
    code, out, _ = run(capsys, "get", "pods", "-A", "-o", "json")
    assert code == 0
    assert json.loads(out) == {"apiVersion": "v1", "kind": "List", "items": [],
                               "metadata": {"resourceVersion": ""}}


def test_bad_documents_are_reported_and_not_written(store: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "apply", "-f", write(tmp_path, POOLS, "pools.yaml"))
    code, out, err = run(capsys, "apply", "-f", write(tmp_path, BAD))
    assert code == 1
    assert out.splitlines() == ["ippool.tabby.dev/pool-ok created"]
    lines = err.splitlines()
    assert "error: IPPool/pool-bad: spec.blockSize: 33 is outside 20..32" in lines
    assert "error: Gadget/g: kind: unknown kind 'Gadget'" in lines
    assert ("error: IPPool/pool-overlap: spec.cidr: 198.19.4.0/24 overlaps IPPool/pool-a"
            " (198.19.0.0/16)") in lines
    code, out, _ = run(capsys, "get", "ippools", "-o", "json")
    names = [i["metadata"]["name"] for i in json.loads(out)["items"]]
    assert names == ["pool-a", "pool-ok", "pool-v6"]


def test_malformed_yaml_writes_nothing(store: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, POOLS + "---\nkind: [unclosed\n")
    code, out, err = run(capsys, "apply", "-f", f)
    assert code == 1 and out == ""
    assert err.startswith(f"error: {f}:") and "malformed YAML" in err
    code, out, err = run(capsys, "get", "ippools", "-o", "json")
    assert code == 1 and "does not exist" in err  # not even the store was created


def test_duplicate_keys_are_refused_with_their_line(store: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """PyYAML keeps the last of two equal keys silently; a manifest saying
    blockSize twice must not be applied with one of them."""
    f = write(tmp_path, POOLS + "---\napiVersion: tabby.dev/v1\nkind: IPPool\nmetadata:\n"
              "  name: twice\nspec:\n  cidr: 198.18.200.0/24\n  blockSize: 26\n"
              "  blockSize: 28\n")
    code, out, err = run(capsys, "apply", "-f", f)
    assert code == 1 and out == ""
    assert "key 'blockSize' is given twice" in err and f"{f}:" in err
    code, out, err = run(capsys, "get", "ippools", "-o", "json")
    assert code == 1 and "does not exist" in err  # not even the store was created


def test_apply_from_stdin_and_immutable_block_size(store: str, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, _ = run(capsys, "apply", "-f", "-", stdin=POOLS, monkeypatch=monkeypatch)
    assert code == 0
    changed = POOLS.replace("spec: {cidr: 198.19.0.0/16}",
                            "spec: {cidr: 198.19.0.0/16, blockSize: 28}")
    code, out, err = run(capsys, "apply", "-f", "-", stdin=changed, monkeypatch=monkeypatch)
    assert code == 1
    assert "error: IPPool/pool-a: spec.blockSize: is immutable (was 26)" in err
    assert "ippool.tabby.dev/pool-v6 unchanged" in out


def test_unknown_kind_on_get(store: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "get", "gadgets")
    assert code == 1 and "unknown kind 'gadgets'" in err


def test_ipam_show_check_release(store: str, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tabby.ipam import IPAM
    from tabby.store import open_store
    from tabby.store.client import Client

    run(capsys, "apply", "-f", write(tmp_path, POOLS))
    client = Client(open_store(store))
    got = IPAM(client).assign("net.c1.eth0", "node-1", num_v4=1, num_v6=1,
                              attrs={"namespace": "x", "pod": "a", "node": "node-1"})
    v4 = str(got.addresses[0])
    code, out, _ = run(capsys, "ipam", "show", "-o", "json")
    report = json.loads(out)
    assert {p["name"]: p["used"] for p in report["pools"]} == {"pool-a": 1, "pool-v6": 1}
    assert {a["node"] for a in report["affinities"]} == {"node-1"}
    code, out, _ = run(capsys, "ipam", "check", "-o", "json")
    kinds = {p["kind"] for p in json.loads(out)["problems"]}
    assert code == 1 and "leaked-address" in kinds and "missing-node" in kinds
    code, out, _ = run(capsys, "ipam", "release", "--ip", v4)
    assert code == 0 and out.strip() == f"released {v4}"
    code, _, err = run(capsys, "ipam", "release", "--ip", v4)
    assert code == 1 and "not allocated" in err


def test_deleting_a_node_releases_its_blocks(store: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tabby.ipam import IPAM
    from tabby.model import IPAMBlock
    from tabby.store import open_store
    from tabby.store.client import Client

    run(capsys, "apply", "-f", write(tmp_path, POOLS))
    run(capsys, "apply", "-f", write(tmp_path, """\
apiVersion: tabby.dev/v1
kind: Node
metadata: {name: node-1}
""", "node.yaml"))
    client = Client(open_store(store))
    ipam = IPAM(client)
    held = ipam.assign("net.c1.eth0", "node-1", num_v4=1, num_v6=0)
    ipam.assign("net.c2.eth0", "node-1", num_v4=0, num_v6=1)
    ipam.release_handle("net.c2.eth0")  # leaves node-1's IPv6 block empty
    code, out, _ = run(capsys, "delete", "node", "node-1")
    assert code == 0
    assert out.splitlines() == ["node.tabby.dev/node-1 deleted",
                                "released 2 IPAM block affinities of node node-1"]
    blocks = client.list(IPAMBlock)
    # The empty block is gone; the one still holding an address stays, unclaimed.
    assert [(str(b.spec.cidr), b.node) for b in blocks] == [(str(held.blocks[0]), None)]
    assert ipam.affine_blocks("node-1") == ()
