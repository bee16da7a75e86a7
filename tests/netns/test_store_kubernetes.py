"""The store contract on a real kube-apiserver (v1.37, built from the Go module),
plus what only the Kubernetes API shows: errors named as the server names them,
watches that resume and recover across an API server restart and an etcd
compaction.

The contract's made-up resources (``pods``, ``podsx``, ``services`` holding
``{"spec": {...}}`` values) are served here by CustomResourceDefinitions of a
test group that keep any spec (``x-kubernetes-preserve-unknown-fields``); the
store maps the contract's resource names onto them. Kubernetes' own writers
(leases, events) share the revision counter, so the suite runs with
``EXCLUSIVE = False`` (see tests/store_contract.py).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tabby.errors import Compacted, Conflict, Forbidden, NotFound, Unavailable, ValidationError
from tabby.kube.controlplane import ControlPlane
from tabby.store import open_store
from tabby.store.base import Key
from tabby.store.kuberesources import APIResource, default_resources
from tabby.store.kubernetes import KubernetesStore
from tests.kube import apply_yaml, kubectl, running_control_plane
from tests.store_contract import StoreContract, collect, value

GROUP = "contract.tabby.dev"
THINGS = "things"  # the contract's "pods" CRD, beside the real kinds
TEST_KINDS = {"pods": "Pod", "podsx": "Podsx", "services": "Service"}
NAMESPACES = ("a", "ab", "ab-x", "b", "c", "zzz")


def crd(plural: str, kind: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {"group": GROUP, "scope": "Namespaced",
                 "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]},
    }


def contract_resources() -> dict[str, APIResource]:
    return {name: APIResource(GROUP, "v1", name, kind, True) for name, kind in TEST_KINDS.items()}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("k8s")) as cp:
        apply_yaml(cp, [crd(p, k) for p, k in TEST_KINDS.items()])
        apply_yaml(cp, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
                        for n in NAMESPACES])
        kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{p}.{GROUP}" for p in TEST_KINDS))
        yield cp


class TestKubernetesStore(StoreContract):
    FRESH_STORE = False
    EXCLUSIVE = False
    DNS_NAMES = True
    EXACT_DELETE_REVISION = False

    @pytest.fixture
    def store(self, cp: ControlPlane) -> Iterator[KubernetesStore]:
        with KubernetesStore(str(cp.admin_kubeconfig), resources=contract_resources(),
                             page_size=3) as store:
            assert isinstance(store, KubernetesStore)
            for name in TEST_KINDS:
                for item in store.list(name):
                    store.delete(item.key)
            yield store

    def normalize(self, value: object) -> object:
        if not isinstance(value, dict):
            return value
        out = {k: v for k, v in value.items() if k not in ("apiVersion", "kind")}
        meta = {k: v for k, v in (out.get("metadata") or {}).items()
                if k not in ("name", "namespace", "uid", "creationTimestamp")}
        out.pop("metadata", None)
        if meta:
            out["metadata"] = meta
        return out


# -- beyond the contract ------------------------------------------------------------------

@pytest.fixture
def store(cp: ControlPlane) -> Iterator[KubernetesStore]:
    with KubernetesStore(str(cp.admin_kubeconfig), resources={
            **default_resources(), THINGS: contract_resources()["pods"]}) as store:
        for item in store.list(THINGS):  # the contract's leftovers share this CRD
            store.delete(item.key)
        yield store


def test_open_store_url(cp: ControlPlane) -> None:
    with open_store(f"kubernetes://{cp.admin_kubeconfig}") as store:
        assert isinstance(store, KubernetesStore)
        assert store.revision() > 0
        assert {i.key.name for i in store.list("namespaces")} >= {"default", "kube-system"}


def test_bad_kubeconfig_is_a_config_error(tmp_path: Path) -> None:
    from tabby.errors import ConfigError
    with pytest.raises(ConfigError, match="cannot load"):
        KubernetesStore(str(tmp_path / "missing.kubeconfig"))


def test_real_kinds_round_trip(store: KubernetesStore) -> None:
    key = Key("namespaces", "", "round-trip")
    item = store.create(key, {"metadata": {"labels": {"team": "a"}}})
    assert item.value["metadata"]["labels"]["team"] == "a"
    assert item.value["apiVersion"] == "v1" and item.value["kind"] == "Namespace"
    assert "managedFields" not in item.value["metadata"]
    assert store.get(key).revision == item.revision
    store.delete(key)


def test_listed_objects_parse_as_typed_resources(store: KubernetesStore) -> None:
    """The API server's lists leave apiVersion and kind out of their items; what the
    store lists must still parse as the agent reads it (a regression: it did not)."""
    from tabby.model import Namespace
    from tabby.store.client import Client
    store.create(Key("namespaces", "", "listed"), {"metadata": {"labels": {"team": "b"}}})
    listed = {ns.meta.name: ns for ns in Client(store).list(Namespace)}
    assert listed["listed"].meta.labels["team"] == "b"
    assert {"default", "kube-system"} <= set(listed)
    for item in store.list("namespaces"):
        assert (item.value["apiVersion"], item.value["kind"]) == ("v1", "Namespace")
    store.delete(Key("namespaces", "", "listed"))


def test_validation_errors_name_the_field(store: KubernetesStore) -> None:
    with pytest.raises(ValidationError) as info:
        store.create(Key("services", "a", "bad"), {"spec": {"ports": [{"port": 70000}]}})
    assert any("spec.ports[0].port" in line for line in info.value.lines()), info.value
    with pytest.raises(ValidationError) as info2:  # Strict: an unknown field is an error
        store.create(Key("namespaces", "", "typo"), {"spec": {"finalizerz": []}})
    assert "finalizerz" in str(info2.value)


def test_missing_namespace_is_notfound(store: KubernetesStore) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.create(Key(THINGS, "nope", "x"), value(1))


def test_secrets_are_kept_in_tabby_system(store: KubernetesStore) -> None:
    """Secrets (BGP passwords) are listed and watched in tabby-system only, so that the
    node role needs no Secret outside it; elsewhere reads find nothing, writes are refused."""
    from tabby.errors import StoreError
    if not any(i.key.name == "tabby-system" for i in store.list("namespaces")):
        store.create(Key("namespaces", "", "tabby-system"), {})
    kept, other = Key("secrets", "tabby-system", "bgp"), Key("secrets", "a", "bgp")
    with pytest.raises(StoreError, match="kept in namespace tabby-system only, not in 'a'"):
        store.create(other, {"data": {"k": "dg=="}})
    start = store.revision() + 1
    with store.watch("secrets", start) as w:
        post_secret(store, "a")  # written past the store, as any other program would
        item = store.create(kept, {"data": {"k": "dg=="}})
        try:
            events = collect(w, 2, timeout=5)
            assert [(e.type, e.key) for e in events] == [("PUT", kept)]
            assert [i.key for i in store.list("secrets")] == [kept]
            assert list(store.list("secrets", "a")) == []
            with pytest.raises(NotFound):
                store.get(other)
            assert store.get(kept).revision == item.revision
        finally:
            store.delete(kept)
            store.request("DELETE", "/api/v1/namespaces/a/secrets/bgp")


def post_secret(store: KubernetesStore, namespace: str) -> None:
    store.request("POST", f"/api/v1/namespaces/{namespace}/secrets", body={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "bgp"},
        "data": {"k": "dg=="}})


def test_rbac_denial_names_verb_and_resource(cp: ControlPlane) -> None:
    nobody = cp.kubeconfig("nobody", "tabby-test-nobody")
    with KubernetesStore(str(nobody), resources=contract_resources()) as store, \
            pytest.raises(Forbidden) as info:
        store.list("pods")
    text = str(info.value)
    assert "tabby-test-nobody" in text and "list" in text and "pods" in text, text


def follow(store: KubernetesStore, resource: str, until: Any, timeout: float = 60.0,
           ) -> tuple[dict[Key, int], int]:
    """A list+watch consumer as the agent runs one: list, watch from the list's
    revision + 1, list again on Compacted. Returns its view (key -> revision)
    once ``until(view)`` holds, and how many times it listed."""
    view: dict[Key, int] = {}
    lists = 0
    deadline = time.monotonic() + timeout
    watch = None
    try:
        while time.monotonic() < deadline:
            if watch is None:
                listing = store.list(resource)
                lists += 1
                view = {i.key: i.revision for i in listing}
                watch = store.watch(resource, listing.revision + 1)
            if until(view):
                return view, lists
            try:
                for e in watch.next(0.5):
                    if e.type == "DELETE":
                        view.pop(e.key, None)
                    else:
                        view[e.key] = e.revision
            except Compacted:
                watch.close()
                watch = None
    finally:
        if watch is not None:
            watch.close()
    raise AssertionError(f"the consumer's view never matched: {view}")


def store_revision_in_etcd(cp: ControlPlane) -> int:
    """etcd's current revision, asked of etcd itself (the API server may be down)."""
    out = subprocess.run(["etcdctl", f"--endpoints={cp.etcd_url}", "endpoint", "status",
                          "-w", "json"], env=ETCDCTL_ENV, check=True, capture_output=True,
                         text=True).stdout
    return int(json.loads(out)[0]["Status"]["header"]["revision"])


def compact(cp: ControlPlane, revision: int) -> None:
    subprocess.run(["etcdctl", f"--endpoints={cp.etcd_url}", "compaction", str(revision)],
                   env=ETCDCTL_ENV, check=True, capture_output=True)


ETCDCTL_ENV = {"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"}


def test_list_watch_loses_nothing_across_an_api_server_restart(
        cp: ControlPlane, store: KubernetesStore) -> None:
    """Writes before, during (refused: the server is down) and after a restart of
    kube-apiserver, with etcd's history compacted under the running watch while
    the server is down: a list+watch consumer ends with exactly the stored state.
    Resuming after the restart either continues (the resourceVersion is still in
    the new server's watch cache) or gets 410 Gone, and the consumer lists again."""
    keys = [Key(THINGS, "c", f"r{i}") for i in range(6)]
    for key in keys[:3]:
        store.create(key, value(1))
    box: dict[str, Any] = {}

    def consumer() -> None:
        box["view"], box["lists"] = follow(
            store, THINGS, lambda v: set(v) == {*keys[1:3], *keys[3:]} and all(
                v[k] == box.get("final", {}).get(k) for k in v))

    thread = threading.Thread(target=consumer)
    thread.start()
    store.delete(keys[0])
    cp.stop_apiserver()
    compact(cp, store_revision_in_etcd(cp))  # and the history under the running watch goes
    with pytest.raises(Unavailable):
        KubernetesStore(str(cp.admin_kubeconfig), resources=contract_resources(),
                        op_timeout=1.0).create(Key("pods", "c", "refused"), value(0))
    cp.start_apiserver()
    for key in keys[3:]:
        store.create(key, value(2))
    box["final"] = {i.key: i.revision for i in store.list(THINGS, "c")}
    thread.join(70)
    assert not thread.is_alive()
    assert box["view"] == box["final"]
    for key in keys[1:]:
        store.delete(key)


def test_compacted_history_raises_compacted(cp: ControlPlane, store: KubernetesStore) -> None:
    """A watch resuming from a revision the API server no longer has gets 410 Gone:
    Compacted, and a list brings the caller up to date. The API server's watch
    cache forgets history across a restart, and etcd's compaction removes it."""
    old = store.create(Key(THINGS, "c", "old"), value(1))
    for i in range(5):
        store.update(Key(THINGS, "c", "old"), value(i + 2), store.get(Key(THINGS, "c", "old"))
                     .revision)
    now = store.revision()
    assert cp.etcd is not None
    compact(cp, now)
    cp.stop_apiserver()
    cp.start_apiserver()
    with pytest.raises(Compacted), store.watch(THINGS, old.revision + 1) as w:
        collect(w, 1, timeout=20)  # nothing came: the 410 did
    listing = store.list(THINGS, "c")
    assert [json.dumps(i.value["spec"]) for i in listing] == [json.dumps(value(6)["spec"])]
    store.delete(Key(THINGS, "c", "old"))


def test_conflicting_updates_from_two_clients(cp: ControlPlane, store: KubernetesStore) -> None:
    key = Key(THINGS, "a", "contested")
    item = store.create(key, value(0))
    with KubernetesStore(str(cp.admin_kubeconfig), resources=contract_resources()) as other:
        other.update(Key("pods", "a", "contested"), value(1), item.revision)
        with pytest.raises(Conflict):
            store.update(key, value(2), item.revision)
    store.delete(key)
