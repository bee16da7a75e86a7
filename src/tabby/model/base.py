"""Kubernetes-shaped resources: metadata, the Resource base, and the kind registry.

Every kind is a frozen dataclass with a ``meta`` field and a ``KIND`` class
attribute (a ``KindInfo``). ``from_manifest`` is the one validating
constructor; ``to_manifest`` renders the object back to plain data. The store
keeps manifests (plain dicts); typed values live above it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Self, TypeVar

from tabby.errors import FieldError, ValidationError
from tabby.model.fieldnotes import FieldWarning
from tabby.model.fields import Fields, raise_if
from tabby.model.kindnotes import UNSERVED, notes_for

TABBY_GROUP = "tabby.dev"
TABBY_API = "tabby.dev/v1"
CALICO_API = "projectcalico.org/v3"

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@dataclass(frozen=True, slots=True)
class KindInfo:
    """How one kind is named, addressed and stored."""

    kind: str
    group: str  # "" for Kubernetes core (v1)
    version: str
    plural: str
    namespaced: bool
    aliases: tuple[str, ...] = ()  # other apiVersions accepted on input
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> str:
        """The store's name for this kind: ``pods``, ``ippools.tabby.dev``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def accepts(self, api_version: str) -> bool:
        return api_version == self.api_version or api_version in self.aliases


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    name: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""
    resource_version: str = ""
    creation_timestamp: str = ""
    # The rest of a served object's metadata (finalizers, ownerReferences,
    # deletionTimestamp, ...), kept as it is so that writing the object back
    # (a status update, a relabel) never drops what others put there.
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, f: Fields, info: KindInfo, *, name_pattern: re.Pattern[str] | None = None
              ) -> ObjectMeta:
        name = f.str("name", required=True)
        pattern = name_pattern or _DNS_SUBDOMAIN
        if name and (len(name) > 253 or not pattern.fullmatch(name)):
            f.error("name", f"{name!r} is not a valid name (lower-case letters, digits, '-', '.')")
        namespace = f.str("namespace")
        if info.namespaced:
            namespace = namespace or "default"
            if not _DNS_SUBDOMAIN.fullmatch(namespace) or len(namespace) > 63:
                f.error("namespace", f"{namespace!r} is not a valid namespace name")
        elif namespace:
            f.error("namespace", f"{info.kind} is not namespaced")
            namespace = ""
        labels = f.str_map("labels")
        for key, value in labels.items():
            check_label(f, f"labels.{key}", key, value)
        meta = cls(
            name=name,
            namespace=namespace,
            labels=labels or _EMPTY,
            annotations=f.str_map("annotations") or _EMPTY,
            uid=f.str("uid"),
            resource_version=f.str("resourceVersion"),
            creation_timestamp=f.str("creationTimestamp"),
            extra={k: v for k, v in f.data.items() if k not in _META_KNOWN} or _EMPTY,
        )
        f.finish(ignore_unknown=True)  # kubectl-written metadata carries more than we use
        return meta

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.uid:
            out["uid"] = self.uid
        if self.resource_version:
            out["resourceVersion"] = self.resource_version
        if self.creation_timestamp:
            out["creationTimestamp"] = self.creation_timestamp
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


# One read-only empty mapping for every object without labels, annotations or extra
# metadata (an empty dict each costs 64 bytes: 1.3 MiB over 10k endpoints).
_EMPTY: Mapping[str, Any] = MappingProxyType({})

# Metadata fields typed above, and the server's bookkeeping nobody writes back.
_META_KNOWN = frozenset({"name", "namespace", "labels", "annotations", "uid", "resourceVersion",
                         "creationTimestamp", "managedFields", "generation", "selfLink"})


def check_label(f: Fields, path: str, key: str, value: str) -> None:
    prefix, _, name = key.rpartition("/")
    if prefix and not _DNS_SUBDOMAIN.fullmatch(prefix):
        f.error(path, f"label prefix {prefix!r} is not a DNS subdomain")
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        f.error(path, f"label name {name!r} is invalid")
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        f.error(path, f"label value {value!r} is invalid")


class Resource:
    """Base of every kind. Subclasses are frozen dataclasses with ``meta`` first."""

    __slots__ = ()
    KIND: ClassVar[KindInfo]
    meta: ObjectMeta

    # -- construction -----------------------------------------------------
    @classmethod
    def from_manifest(cls, doc: Mapping[str, Any]) -> Self:
        """Validate ``doc`` and build the value; raises ValidationError naming every field."""
        errors: list[FieldError] = []
        doc = notes_for(cls.KIND.resource).screen(doc, errors)  # rejected fields (kindnotes)
        top = Fields(doc, "", errors)
        api_version = top.str("apiVersion", required=True)
        kind = top.str("kind", required=True)
        if kind and kind != cls.KIND.kind:
            top.error("kind", f"expected {cls.KIND.kind}, got {kind}")
        if api_version and not cls.KIND.accepts(api_version):
            top.error("apiVersion", f"{api_version} does not serve {cls.KIND.kind}"
                      f" (use {cls.KIND.api_version})")
        meta = ObjectMeta.parse(top.map("metadata"), cls.KIND, name_pattern=cls.name_pattern())
        obj = cls.parse_body(meta, top)
        top.finish()
        raise_if(f"{cls.KIND.kind}/{display_name(meta)}", errors)
        return obj

    @classmethod
    def name_pattern(cls) -> re.Pattern[str] | None:
        return None

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        raise NotImplementedError

    # -- rendering --------------------------------------------------------
    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "apiVersion": self.KIND.api_version,
            "kind": self.KIND.kind,
            "metadata": self.meta.to_dict(),
        }
        out.update(self.body())
        return out

    def body(self) -> dict[str, Any]:
        """``spec`` and ``status`` (whatever the kind has), as plain data."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------
    @property
    def ref(self) -> str:
        return f"{self.KIND.kind}/{display_name(self.meta)}"

    def with_meta(self, **changes: Any) -> Self:
        return dataclasses.replace(self, meta=dataclasses.replace(self.meta, **changes))  # type: ignore[type-var]

    def validate_update(self, old: Self) -> None:
        """Raise ValidationError if changing ``old`` into ``self`` is not allowed."""


def field_warnings(doc: Mapping[str, Any]) -> tuple[FieldWarning, ...]:
    """The fields ``doc`` writes that tabby accepts and ignores (``tabby.model.kindnotes``),
    for ``apply`` to print and the agent to log; () for a document of no known kind."""
    try:
        cls = kind_for_manifest(doc)
    except ValidationError:
        return ()
    return notes_for(cls.KIND.resource).warnings(f"{cls.KIND.kind}/{_doc_name(doc)}", doc)


def display_name(meta: ObjectMeta) -> str:
    name = meta.name or "<unnamed>"
    return f"{meta.namespace}/{name}" if meta.namespace else name


# -- the registry ---------------------------------------------------------

R = TypeVar("R", bound=type[Resource])
_KINDS: dict[str, type[Resource]] = {}  # resource name -> class


def register(cls: R) -> R:
    _KINDS[cls.KIND.resource] = cls
    return cls


def all_kinds() -> list[type[Resource]]:
    return list(_KINDS.values())


def kind_for_resource(resource: str) -> type[Resource]:
    return _KINDS[resource]


def kind_for_manifest(doc: Mapping[str, Any]) -> type[Resource]:
    """The class serving ``doc``'s apiVersion and kind; ValidationError if none."""
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    where = f"{kind or '<no kind>'}/{_doc_name(doc)}"
    if not isinstance(kind, str) or not kind:
        raise ValidationError(where, [FieldError("kind", "is required")])
    if not isinstance(api_version, str) or not api_version:
        raise ValidationError(where, [FieldError("apiVersion", "is required")])
    same_kind = [c for c in _KINDS.values() if c.KIND.kind == kind]
    for cls in same_kind:
        if cls.KIND.accepts(api_version):
            return cls
    if same_kind:
        served = ", ".join(c.KIND.api_version for c in same_kind)
        raise ValidationError(where, [FieldError(
            "apiVersion", f"{api_version} does not serve {kind} (use {served})")])
    why = f" (Calico's; tabby does not serve it: {UNSERVED[kind]})" if kind in UNSERVED else ""
    raise ValidationError(where, [FieldError("kind", f"unknown kind {kind!r}{why}")])


def _doc_name(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata")
    if isinstance(meta, Mapping) and isinstance(meta.get("name"), str):
        return str(meta["name"])
    return "<unnamed>"


def parse_manifest(doc: Mapping[str, Any]) -> Resource:
    return kind_for_manifest(doc).from_manifest(doc)


def resolve_kind(name: str) -> type[Resource]:
    """A kind as kubectl users write it: ``ippool``, ``pods``, ``networkpolicy.tabby.dev``.

    The bare name prefers Kubernetes' own kind (group "" or ``*.k8s.io``); a
    group suffix selects another (``projectcalico.org`` is an alias of tabby.dev).
    """
    lowered = name.lower()
    base, _, group = lowered.partition(".")
    if group == "projectcalico.org":
        group = TABBY_GROUP
    matches: list[type[Resource]] = []
    for cls in _KINDS.values():
        info = cls.KIND
        names = {info.kind.lower(), info.plural, *info.short_names}
        if base in names and (not group or group == info.group):
            matches.append(cls)
    if not matches:
        known = sorted({c.KIND.kind.lower() for c in _KINDS.values()})
        message = f"unknown kind {name!r}; known: {', '.join(known)}"
        raise ValidationError("", [FieldError("", message)])
    matches.sort(key=lambda c: (not _is_kubernetes(c.KIND.group), c.KIND.group))
    return matches[0]


def _is_kubernetes(group: str) -> bool:
    return group == "" or group.endswith(".k8s.io")

