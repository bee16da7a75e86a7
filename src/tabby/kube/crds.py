"""tabby's own kinds as Kubernetes CustomResourceDefinitions, generated from the model.

Every registered kind of group ``tabby.dev`` (``tabby.model.all_kinds()``) gets
one ``apiextensions.k8s.io/v1`` CRD named ``<plural>.tabby.dev``: version v1
served and stored, its scope, names and short names from ``KindInfo``, and an
``openAPIV3Schema`` built from the kind's ``SCHEMA`` (a
``tabby.model.schema.KindSchema`` declared beside its ``parse_body``). The
schema is structural, so the API server checks types, required fields and
enums, and with ``fieldValidation=Strict`` refuses a field the model does not
know instead of pruning it.

    python -m tabby.kube.crds > manifests/crds.yaml      # what `make crds` runs

Kinds of other groups that tabby follows but nobody else may have installed get a CRD
of the upstream project's shape the same way (``UPSTREAM``: Kubernetes'
``ClusterNetworkPolicy``, ``policy.networking.k8s.io/v1alpha2``, whose upstream CRD
network-policy-api ships; ours is generated from tabby's model with upstream's names,
short name, columns and validation rules).

Keeping them in step: change the kind's ``SCHEMA`` in the same change as its
``parse_body``/``body``, then ``make crds``. ``tests/unit/test_crds.py`` fails
until both are done (it compares manifests/crds.yaml byte for byte, and
checks fully-populated objects of every kind against the schemas).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import yaml

from tabby.errors import ConfigError
from tabby.model import all_kinds
from tabby.model.base import TABBY_GROUP, Resource
from tabby.model.schema import Column, KindSchema, Schema, obj, string

__all__ = ["KUBERNETES_SHORT_NAMES", "UPSTREAM", "crd", "crd_kinds", "crds", "kind_schema",
           "openapi_schema", "render"]

# Short names of Kubernetes' built-in resources: a CRD claiming one would shadow (or be
# shadowed by) the built-in in kubectl, so such names are left out of the CRD.
KUBERNETES_SHORT_NAMES = frozenset({
    "cm", "cj", "crd", "crds", "cs", "csr", "deploy", "ds", "ep", "ev", "hpa", "ing", "ip",
    "limits", "netpol", "no", "ns", "pc", "pdb", "po", "pv", "pvc", "quota", "rc", "rs", "sa",
    "sc", "sts", "svc", "vac",
})
CATEGORY = "tabby"
# CRD-served kinds of other API groups (by store resource name), rendered with their own
# group and version, without tabby's category, and with upstream's annotations (the API
# server refuses a CRD of a *.k8s.io group without an api-approved.kubernetes.io one).
UPSTREAM: Mapping[str, Mapping[str, str]] = {
    "clusternetworkpolicies.policy.networking.k8s.io": {
        "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/network-policy-api/pull/347",
        "policy.networking.k8s.io/bundle-version": "v0.2.0",
        "policy.networking.k8s.io/channel": "experimental",
    },
}
HEADER = ("# tabby's CustomResourceDefinitions, generated from tabby.model by\n"
          "# `make crds` (python -m tabby.kube.crds). Do not edit by hand.\n")


def tabby_kinds() -> list[type[Resource]]:
    return [cls for cls in all_kinds() if cls.KIND.group == TABBY_GROUP]


def crd_kinds() -> list[type[Resource]]:
    """Every kind tabby serves through a CRD: its own, and ``UPSTREAM``'s."""
    return [cls for cls in all_kinds()
            if cls.KIND.group == TABBY_GROUP or cls.KIND.resource in UPSTREAM]


def kind_schema(cls: type[Resource]) -> KindSchema:
    """The kind's declared schema; ConfigError if it has none."""
    schema = getattr(cls, "SCHEMA", None)
    if not isinstance(schema, KindSchema):
        raise ConfigError(f"{cls.KIND.kind} has no SCHEMA (a tabby.model.schema.KindSchema);"
                          " declare one beside its parse_body")
    return schema


def openapi_schema(cls: type[Resource]) -> Schema:
    """The whole object's ``openAPIV3Schema``: apiVersion, kind, metadata, spec, status."""
    ks = kind_schema(cls)
    properties: dict[str, Schema] = {
        "apiVersion": string(cls.KIND.api_version),
        "kind": string(cls.KIND.kind),
        "metadata": {"type": "object"},
        "spec": ks.spec,
    }
    if ks.status is not None:
        properties["status"] = ks.status
    required = ["spec"] if ks.spec.get("required") else []
    kind = cls.KIND.kind
    return obj(properties, f"{kind}: see tabby.model ({cls.__module__}).", required=required)


def crd(cls: type[Resource]) -> dict[str, Any]:
    """One CustomResourceDefinition for ``cls`` (a tabby.dev kind)."""
    info = cls.KIND
    upstream = info.resource in UPSTREAM
    if info.group != TABBY_GROUP and not upstream:
        raise ConfigError(f"{info.kind} is served by {info.api_version}, not by a CRD")
    ks = kind_schema(cls)
    names: dict[str, Any] = {
        "kind": info.kind,
        "listKind": f"{info.kind}List",
        "plural": info.plural,
        "singular": info.kind.lower(),
    }
    if not upstream:
        names["categories"] = [CATEGORY]
    short = [n for n in info.short_names if n not in KUBERNETES_SHORT_NAMES]
    if short:
        names["shortNames"] = short
    version: dict[str, Any] = {"name": info.version, "served": True, "storage": True}
    if ks.status is not None:
        version["subresources"] = {"status": {}}
    columns = [_column(c) for c in ks.columns]
    if columns:  # kubectl shows Age only when a CRD names no columns: keep it
        columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
        version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": openapi_schema(cls)}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.resource, "labels": {"app.kubernetes.io/part-of": "tabby"},
                     **({"annotations": dict(UPSTREAM[info.resource])} if upstream else {})},
        "spec": {
            "group": info.group,
            "names": names,
            "scope": "Namespaced" if info.namespaced else "Cluster",
            "versions": [version],
        },
    }


def _column(c: Column) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name, "type": c.type, "jsonPath": c.json_path}
    if c.description:
        out["description"] = c.description
    if c.priority:
        out["priority"] = c.priority
    return out


def crds() -> list[dict[str, Any]]:
    """Every tabby.dev kind's CRD and ``UPSTREAM``'s, sorted by CRD name."""
    return sorted((crd(cls) for cls in crd_kinds()), key=lambda d: str(d["metadata"]["name"]))


class _Dumper(yaml.SafeDumper):
    """Writes a schema shared by two fields (rules) out twice: no YAML anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render() -> str:
    """All CRDs as one multi-document YAML text (what manifests/crds.yaml holds)."""
    body = yaml.dump_all(crds(), Dumper=_Dumper, sort_keys=False, explicit_start=True,
                         allow_unicode=True, width=100)
    return HEADER + body


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
