"""manifests/crds.yaml on a real kube-apiserver (v1.37, built from the Go module).

The CRDs are applied server-side and become Established; then every fully-populated object
of tests/unit/test_crds.py (and the Calico fields the model accepts) is created with
``fieldValidation=Strict`` and read back: the spec comes back as sent (nothing pruned, no
default added) and parses to the same model value. Invalid objects are refused by the
API server with the field's path in the message.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tabby.errors import ConfigError
from tabby.kube import binaries, crds
from tabby.kube.controlplane import ControlPlane
from tabby.model import kind_for_manifest
from tests.kube import apply_yaml, kubectl, running_control_plane
from tests.unit.test_crds import ACCEPTED, FULL, MANIFEST, doc

try:
    binaries.bin_dir()
except ConfigError as e:
    pytest.skip(f"Kubernetes programs not built: {e}", allow_module_level=True)
if shutil.which("etcd") is None:
    pytest.skip("needs the etcd binary (apt-get install etcd-server)", allow_module_level=True)

GROUP, VERSION = "tabby.dev", "v1"
NAMESPACE = "shop"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    with running_control_plane(tmp_path_factory.mktemp("crds")) as cp:
        kubectl(cp, "apply", "--server-side", "-f", str(MANIFEST))
        kubectl(cp, "wait", "--for=condition=Established", "--timeout=60s",
                *(f"crd/{d['metadata']['name']}" for d in crds.crds()))
        apply_yaml(cp, [{"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": NAMESPACE}}])
        yield cp


@pytest.fixture(scope="module")
def api(cp: ControlPlane) -> Iterator[client.CustomObjectsApi]:
    api_client: Any = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cp.admin_kubeconfig))
    try:
        yield client.CustomObjectsApi(api_client)
    finally:
        api_client.close()


def plural(kind: str) -> str:
    return {cls.KIND.kind: cls.KIND.plural for cls in crds.tabby_kinds()}[kind]


def create(api: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    """Create with fieldValidation=Strict; the stored object as the server returns it."""
    kind, namespace = body["kind"], body["metadata"].get("namespace")
    resp: Any
    if namespace:
        resp = api.create_namespaced_custom_object(
            GROUP, VERSION, namespace, plural(kind), body, field_validation="Strict",
            _preload_content=False)
    else:
        resp = api.create_cluster_custom_object(
            GROUP, VERSION, plural(kind), body, field_validation="Strict",
            _preload_content=False)
    return dict(json.loads(resp.data))


def read(api: client.CustomObjectsApi, kind: str, name: str, namespace: str = ""
         ) -> dict[str, Any]:
    resp: Any
    if namespace:
        resp = api.get_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name,
                                                _preload_content=False)
    else:
        resp = api.get_cluster_custom_object(GROUP, VERSION, plural(kind), name,
                                             _preload_content=False)
    return dict(json.loads(resp.data))


def delete(api: client.CustomObjectsApi, kind: str, name: str, namespace: str = "") -> None:
    if namespace:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)
    else:
        api.delete_cluster_custom_object(GROUP, VERSION, plural(kind), name)


def refusal(api: client.CustomObjectsApi, body: dict[str, Any]) -> str:
    """The API server's message for ``body``, which it must refuse."""
    with pytest.raises(ApiException) as caught:
        create(api, body)
    assert caught.value.status in (400, 422), caught.value
    return str(json.loads(caught.value.body or "{}")["message"])


def test_crds_are_established_with_their_names(cp: ControlPlane) -> None:
    listed = json.loads(kubectl(cp, "get", "crd", "-l", "app.kubernetes.io/part-of=tabby",
                                "-o", "json").stdout)["items"]
    assert sorted(c["metadata"]["name"] for c in listed) == [
        d["metadata"]["name"] for d in crds.crds()]
    for item in listed:
        conditions = {c["type"]: c["status"] for c in item["status"]["conditions"]}
        assert conditions.get("NamesAccepted") == "True", item["metadata"]["name"]
        assert conditions.get("Established") == "True", item["metadata"]["name"]



def builtin_short_names(cp: ControlPlane) -> set[str]:
    """Short names of every resource the server serves outside the groups of tabby's CRDs
    (discovery)."""
    def raw(path: str) -> Any:
        return json.loads(kubectl(cp, "get", "--raw", path).stdout)

    ours = {GROUP} | {d["spec"]["group"] for d in crds.crds()}  # incl. upstream CRDs we install
    lists = [raw("/api/v1")]
    for group in raw("/apis")["groups"]:
        if group["name"] not in ours:
            lists.append(raw(f"/apis/{group['preferredVersion']['groupVersion']}"))
    return {n for found in lists for r in found["resources"] for n in r.get("shortNames", [])}


def test_no_short_name_shadows_a_kubernetes_resource(cp: ControlPlane) -> None:
    builtin = builtin_short_names(cp)
    assert {"no", "po", "svc", "netpol", "ns"} <= builtin
    ours = {n for d in crds.crds() if d["spec"]["group"] == GROUP
            for n in d["spec"]["names"].get("shortNames", [])}
    assert not ours & builtin
    assert builtin <= crds.KUBERNETES_SHORT_NAMES, "add the new ones to KUBERNETES_SHORT_NAMES"


@pytest.mark.parametrize("kind", sorted(FULL))
def test_full_objects_are_kept_whole(api: client.CustomObjectsApi, kind: str) -> None:
    for item in FULL[kind]:
        cls = kind_for_manifest(item)
        sent = cls.from_manifest(item).to_manifest()
        meta = sent["metadata"]
        namespace = meta.get("namespace", "") if cls.KIND.namespaced else ""
        created = create(api, sent)
        try:
            back = read(api, kind, meta["name"], namespace)
            assert created["spec"] == sent["spec"], f"{kind}/{meta['name']}: create"
            assert back["spec"] == sent["spec"], f"{kind}/{meta['name']}: read back"
            assert cls.from_manifest(back).to_manifest()["spec"] == sent["spec"]
            assert "status" not in back  # no kind keeps one; a status subresource drops it
        finally:
            delete(api, kind, meta["name"], namespace)


def test_calico_fields_are_accepted_as_written(api: client.CustomObjectsApi) -> None:
    """What the model reads but drops (Calico's fields) is accepted by the server too."""
    for kind, items in sorted(ACCEPTED.items()):
        for item in items:
            namespace = item["metadata"].get("namespace", "")
            created = create(api, item)
            try:
                assert created["spec"] == item["spec"], f"{kind}/{item['metadata']['name']}"
                assert "status" not in created  # the status subresource ignores it on create
            finally:
                delete(api, kind, item["metadata"]["name"], namespace)


def test_wrong_type_is_refused_naming_the_field(api: client.CustomObjectsApi) -> None:
    message = refusal(api, doc("IPPool", "bad-size", {"cidr": "198.19.0.0/16",
                                                      "blockSize": "x"}))
    assert "spec.blockSize" in message and "integer" in message, message


def test_unknown_field_is_refused_under_strict(api: client.CustomObjectsApi) -> None:
    message = refusal(api, doc("IPPool", "typo", {"cidr": "198.19.0.0/16", "blocksize": 26}))
    assert "spec.blocksize" in message and "unknown field" in message, message


def test_enum_is_enforced(api: client.CustomObjectsApi) -> None:
    message = refusal(api, doc("GlobalNetworkPolicy", "maybe", {
        "ingress": [{"action": "Allow"}, {"action": "Maybe"}]}))
    assert "spec.ingress[1].action" in message and '"Maybe"' in message, message


def test_required_field_and_bounds_are_enforced(api: client.CustomObjectsApi) -> None:
    message = refusal(api, doc("HostEndpoint", "no-node", {
        "interfaceName": "eth0", "ports": [{"name": "ssh", "port": 70000}]}))
    assert "spec.node" in message and "Required" in message, message
    assert "spec.ports[0].port" in message, message


def test_int_or_string_ports_and_protocols(api: client.CustomObjectsApi) -> None:
    message = refusal(api, doc("NetworkPolicy", "bad-port", {"ingress": [
        {"action": "Allow", "protocol": "QUIC", "source": {"ports": [True]}}]},
        namespace=NAMESPACE))
    assert "spec.ingress[0].protocol" in message, message
    assert "spec.ingress[0].source.ports[0]" in message, message


def test_non_dns_names_cannot_be_stored(api: client.CustomObjectsApi) -> None:
    """The model allows IPAMHandle names the API server refuses (upper case, '_')."""
    item = doc("IPAMHandle", "Handle_A", {"handleID": "Handle_A"})
    kind_for_manifest(item).from_manifest(item)
    message = refusal(api, item)
    assert "metadata.name" in message, message


def test_printer_columns_and_category(cp: ControlPlane, api: client.CustomObjectsApi) -> None:
    pool = FULL["IPPool"][0]
    create(api, pool)
    try:
        table = kubectl(cp, "get", "pools", pool["metadata"]["name"]).stdout.splitlines()
        assert table[0].split()[:4] == ["NAME", "CIDR", "BLOCK", "VXLAN"], table
        assert table[1].split()[:4] == ["pool-v4", "198.19.0.0/16", "28", "CrossSubnet"], table
        everything = kubectl(cp, "get", "tabby", "-o", "name").stdout.split()
        assert everything == ["ippool.tabby.dev/pool-v4"], everything
    finally:
        delete(api, "IPPool", pool["metadata"]["name"])
