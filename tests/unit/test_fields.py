"""No silent fields (issue 18): every kind declares what it does with each field, and the
model does what the declaration says.

- every registered kind has a declaration (``tabby.model.kindnotes.NOTES``);
- an ignored field is in the kind's schema (its CRD keeps it), is accepted by the model and
  gives exactly one warning naming its path, and none when written with its ``as_if`` value;
- a rejected field is refused at its path with the declared reason and no second
  "unknown field" error; with ``as_if``, that one value is accepted;
- FelixConfiguration: Calico's ~190 fields are listed, type-checked, kept as written; a field
  Calico does not have is an unknown field.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tabby.errors import ValidationError
from tabby.model import FelixConfiguration, Node, all_kinds, kind_for_manifest
from tabby.model.base import Resource, field_warnings
from tabby.model.felixfields import GROUPS, schemas
from tabby.model.fieldnotes import UNSET, FieldNote, FieldNotes, Status, ignored, rejected
from tabby.model.kindnotes import NOTES, UNSERVED, notes_for
from tabby.model.schema import KindSchema, example, schema_paths
from tests.unit.test_crds import FULL

KINDS = {cls.KIND.resource: cls for cls in all_kinds()}
CALICO_FELIX_FIELDS = 188  # Calico v3.31's FelixConfigurationSpec


def notes_of(status: Status) -> list[tuple[str, FieldNote]]:
    return [(resource, note) for resource, notes in sorted(NOTES.items())
            for note in notes.notes if note.status is status]


def note_id(param: tuple[str, FieldNote]) -> str:
    return f"{param[0].partition('.')[0]}:{param[1].path}"


IGNORED = notes_of(Status.IGNORED)
REJECTED = notes_of(Status.REJECTED)


def schema_of(cls: type[Resource]) -> KindSchema | None:
    schema = getattr(cls, "SCHEMA", None)
    return schema if isinstance(schema, KindSchema) else None


def known_paths(cls: type[Resource]) -> set[str]:
    schema = schema_of(cls)
    if schema is None:
        return set()
    paths = schema_paths(schema.spec, "spec")
    return paths | (schema_paths(schema.status, "status") if schema.status else set())


def node_schema(cls: type[Resource], path: str) -> dict[str, Any]:
    schema = schema_of(cls)
    assert schema is not None
    node: dict[str, Any] = {"properties": {"spec": schema.spec, "status": schema.status or {}}}
    for part in path.split("."):
        name = part.removesuffix("[]")
        node = node["properties"][name]
        for _ in range((len(part) - len(name)) // 2):
            node = node["items"]
    return node


def base_doc(cls: type[Resource], path: str = "") -> dict[str, Any]:
    """A valid manifest of the kind: test_crds' fully-populated one, the first holding
    ``path``'s parent (a password's secretKeyRef, a policy's rules)."""
    if cls.KIND.kind in FULL and cls.KIND.group == "tabby.dev":
        items = FULL[cls.KIND.kind]
        parent = path.rpartition(".")[0].replace("[]", "")
        held = [d for d in items if _has(d, parent.split("."))] if parent else items
        fresh: dict[str, Any] = json.loads(json.dumps((held or items)[0]))
        return fresh  # no lists shared between ingress and egress (deepcopy keeps them)
    if cls.KIND.kind == "Service":
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}}
    if cls.KIND.kind == "ClusterNetworkPolicy":
        return {"apiVersion": cls.KIND.api_version, "kind": cls.KIND.kind,
                "metadata": {"name": "admin"},
                "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                         "ingress": [{"action": "Accept", "from": [{"namespaces": {}}]}]}}
    raise AssertionError(f"no base manifest for {cls.KIND.kind}: add one")


def _has(node: Any, parts: list[str]) -> bool:
    if not parts:
        return True
    child = node.get(parts[0]) if isinstance(node, dict) else None
    if isinstance(child, list):
        return any(_has(item, parts[1:]) for item in child)
    return child is not None and _has(child, parts[1:])


def put(doc: dict[str, Any], path: str, value: Any) -> list[str]:
    """Set ``path`` (``[]``: in every item of an existing list) to ``value``; the concrete
    paths set."""
    out: list[str] = []

    def walk(node: Any, parts: list[str], where: str) -> None:
        part, rest = parts[0], parts[1:]
        name = part.removesuffix("[]")
        here = f"{where}.{name}" if where else name
        if part.endswith("[]"):
            for i, item in enumerate(node.get(name) or []):
                walk(item, rest, f"{here}[{i}]") if rest else None
            return
        if not rest:
            node[name] = copy.deepcopy(value)
            out.append(here)
            return
        child = node.setdefault(name, {})
        walk(child, rest, here)

    walk(doc, path.split("."), "")
    assert out, f"{path}: nowhere to put it in the base manifest"
    return out


def value_for(cls: type[Resource], note: FieldNote) -> Any:
    """A value that gets the note: an example of its schema, never its as_if value."""
    if note.path not in known_paths(cls):
        return "x"
    value = example(node_schema(cls, note.path))
    if note.as_if is not UNSET and value == note.as_if:
        value = (not value) if isinstance(value, bool) else f"{value}-other"
    return value


def errors_of(doc: dict[str, Any]) -> list[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        kind_for_manifest(doc).from_manifest(doc)
    return [(e.path, e.message) for e in info.value.errors]


# -- the declarations ----------------------------------------------------------------------

def test_every_kind_is_declared() -> None:
    missing = sorted(set(KINDS) - set(NOTES))
    assert missing == [], f"declare these kinds' fields in tabby/model/kindnotes.py: {missing}"
    assert sorted(set(NOTES) - set(KINDS)) == [], "declarations of kinds no longer registered"


@pytest.mark.parametrize("param", IGNORED, ids=note_id)
def test_ignored_fields_are_in_the_schema(param: tuple[str, FieldNote]) -> None:
    resource, note = param
    cls = KINDS[resource]
    if schema_of(cls) is not None:  # the CRD keeps it: kubectl apply works
        assert note.path in known_paths(cls)


@pytest.mark.parametrize("param", REJECTED, ids=note_id)
def test_rejected_fields_are_not_in_the_schema(param: tuple[str, FieldNote]) -> None:
    resource, note = param
    cls = KINDS[resource]
    if note.as_if is UNSET:  # the API server refuses it too
        assert note.path not in known_paths(cls)
    else:  # only the as_if value passes
        assert node_schema(cls, note.path)["enum"] == [note.as_if]


def test_kubernetes_kinds_say_what_tabby_reads() -> None:
    for resource, cls in KINDS.items():
        if schema_of(cls) is None:
            notes = notes_for(resource)
            assert notes.reads and notes.rest, resource


# -- the model does what they say --------------------------------------------------------------

@pytest.mark.parametrize("param", IGNORED, ids=note_id)
def test_an_ignored_field_is_accepted_with_one_warning(param: tuple[str, FieldNote]) -> None:
    resource, note = param
    cls = KINDS[resource]
    doc = base_doc(cls, note.path)
    put(doc, note.path, None)  # not written (FULL may set it)
    before = {str(w) for w in field_warnings(doc)}
    where = put(doc, note.path, value_for(cls, note))
    cls.from_manifest(doc)
    new = [w for w in field_warnings(doc) if str(w) not in before]
    assert [w.path for w in new] == where
    assert all(w.reason == note.reason for w in new)
    assert str(new[0]) == (f"{cls.KIND.kind}/{doc['metadata']['name']}: {where[0]} is accepted"
                           f" and ignored by tabby: {note.reason}")
    if note.as_if is not UNSET:
        quiet = base_doc(cls, note.path)
        put(quiet, note.path, note.as_if)
        cls.from_manifest(quiet)
        assert {str(w) for w in field_warnings(quiet)} == before


@pytest.mark.parametrize("param", REJECTED, ids=note_id)
def test_a_rejected_field_is_refused_with_its_reason(param: tuple[str, FieldNote]) -> None:
    resource, note = param
    cls = KINDS[resource]
    doc = base_doc(cls, note.path)
    where = put(doc, note.path, value_for(cls, note))
    found = errors_of(doc)
    assert [(w, note.reason) for w in where] == [e for e in found if e[0] in where], found
    assert len(found) == len(where), f"one error per place, no 'unknown field' too: {found}"
    if note.as_if is not UNSET:
        allowed = base_doc(cls, note.path)
        put(allowed, note.path, note.as_if)
        cls.from_manifest(allowed)


def test_screening_leaves_the_callers_document_alone() -> None:
    doc = base_doc(KINDS["globalnetworkpolicies.tabby.dev"], "spec.ingress[].http")
    doc["spec"]["ingress"][0]["http"] = {"methods": ["GET"]}
    kept = copy.deepcopy(doc)
    errors_of(doc)
    assert doc == kept


def test_null_and_empty_values_are_not_written() -> None:
    note = ignored("spec.x", "why")
    assert not note.applies_to(None) and not note.applies_to({}) and not note.applies_to([])
    assert note.applies_to(False) and note.applies_to(0) and note.applies_to("")
    quiet = ignored("spec.x", "why", as_if=False)
    assert not quiet.applies_to(False) and quiet.applies_to(True)
    assert quiet.applies_to(0), "0 is not false: the type counts"


def test_notes_reach_into_lists_and_maps() -> None:
    notes = FieldNotes(notes=(ignored("spec.rules[].meta", "m"), rejected("spec.m.{}.bad", "b")))
    doc = {"spec": {"rules": [{"meta": 1}, {}, {"meta": 2}],
                    "m": {"a": {"bad": 1, "ok": 2}, "b": {"ok": 3}}}}
    assert [w.path for w in notes.warnings("K/x", doc)] == ["spec.rules[0].meta",
                                                           "spec.rules[2].meta"]
    errors: list[Any] = []
    screened = notes.screen(doc, errors)
    assert [e.path for e in errors] == ["spec.m.a.bad"]
    assert screened["spec"]["m"] == {"a": {"ok": 2}, "b": {"ok": 3}}


def test_unserved_calico_kinds_say_why() -> None:
    doc = {"apiVersion": "projectcalico.org/v3", "kind": "KubeControllersConfiguration",
           "metadata": {"name": "default"}, "spec": {}}
    with pytest.raises(ValidationError, match="tabby does not serve it: tabby's controllers"):
        kind_for_manifest(doc)
    assert "Profile" in UNSERVED
    assert "StagedNetworkPolicy" not in UNSERVED  # served since issue 16 (stagedpolicy)


def test_node_refuses_unknown_fields() -> None:
    """Node used to drop any field it did not know; Calico's are now refused by name and
    anything else as an unknown field."""
    doc = base_doc(Node)
    doc["spec"]["colour"] = "blue"
    assert ("spec.colour", "unknown field") in errors_of(doc)


def test_service_fields_the_proxy_ignores_warn() -> None:
    doc = base_doc(KINDS["services"])
    doc["spec"]["loadBalancerSourceRanges"] = ["203.0.113.0/24"]
    kind_for_manifest(doc).from_manifest(doc)
    assert [w.path for w in field_warnings(doc)] == ["spec.loadBalancerSourceRanges"]


# -- FelixConfiguration ----------------------------------------------------------------------

def felix(spec: dict[str, Any], name: str = "default") -> dict[str, Any]:
    return {"apiVersion": "projectcalico.org/v3", "kind": "FelixConfiguration",
            "metadata": {"name": name}, "spec": spec}


def test_every_calico_felix_field_is_listed_once() -> None:
    names = [f.name for g in GROUPS for f in g.fields]
    assert len(names) == len(set(names))
    assert len(names) + 3 == CALICO_FELIX_FIELDS  # + failsafe in/out, natOutgoingExclusions


def test_felix_fields_are_kept_as_written_and_warned() -> None:
    spec = {"bpfEnabled": False, "bpfLogLevel": "Debug", "routeTableRange": {"min": 1, "max": 9},
            "logSeverityScreen": "Info", "failsafeInboundHostPorts": [{"port": 22}]}
    obj = FelixConfiguration.from_manifest(felix(spec))
    assert obj.to_manifest()["spec"] == {**spec, "failsafeInboundHostPorts": [
        {"protocol": "TCP", "port": 22}]}
    assert [str(w) for w in field_warnings(felix(spec))] == [
        "FelixConfiguration/default: spec.logSeverityScreen is accepted and ignored by tabby:"
        " the agent logs to standard error at its --log-level",
        "FelixConfiguration/default: spec.routeTableRange is accepted and ignored by tabby:"
        " tabby programs routes to pods and blocks in the main table, with protocol 77 and the"
        " kernel's default metric, from IPAM blocks; it never touches other routes",
        "FelixConfiguration/default: spec.bpfLogLevel is accepted and ignored by tabby:"
        " eBPF dataplane: tabby's dataplane is nftables"]


def test_felix_unknown_and_mistyped_fields_are_refused() -> None:
    found = errors_of(felix({"bpfEnabeld": True, "healthPort": "9099",
                             "routeTableRange": {"min": 1}}))
    assert ("spec.bpfEnabeld", "unknown field (did you mean bpfEnabled?)") in found
    assert ("spec.healthPort", "must be of type integer, not str") in found
    assert ("spec.routeTableRange.max", "is required") in found


def test_felix_wireguard_is_refused_unless_off() -> None:
    found = errors_of(felix({"wireguardEnabled": True, "wireguardMTU": 1400}))
    assert [p for p, _ in found] == ["spec.wireguardEnabled"]
    assert "traffic would cross the network in clear" in found[0][1]
    off = FelixConfiguration.from_manifest(felix({"wireguardEnabled": False}))
    assert off.raw_spec == {"wireguardEnabled": False}
    assert field_warnings(felix({"wireguardEnabled": False})) == ()


def test_felix_schema_lists_each_field() -> None:
    schema = FelixConfiguration.SCHEMA.spec
    assert "x-kubernetes-preserve-unknown-fields" not in schema
    assert set(schemas()) <= set(schema["properties"]) | {"nodeSelector"}
    assert "nodeSelector" not in schema["properties"]
