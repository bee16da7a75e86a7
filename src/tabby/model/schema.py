"""OpenAPI v3 structural schemas of tabby's own kinds, declared next to the model.

Each kind of group ``tabby.dev`` carries ``SCHEMA: ClassVar[KindSchema]``
beside its ``parse_body``/``body``: the shape of ``spec`` (and ``status``) as
the Kubernetes API server should check it, built with the helpers below
(``obj``, ``string``, ``integer``, ``array``, ...). ``tabby.kube.crds`` turns
those into CustomResourceDefinitions and ``make crds`` writes them to
``manifests/crds.yaml``.

Keeping them in step: a field that ``body()`` emits or ``parse_body()``
accepts is added to the kind's ``SCHEMA`` in the same change, then ``make
crds``. ``tests/unit/test_crds.py`` fails otherwise: it renders a
fully-populated object of every kind and checks each emitted field path
against the schema (the API server prunes, or under ``fieldValidation=Strict``
refuses, a field its schema lacks), and it checks every schema path is one the
model emits or accepts.

``validate`` is a checker for the subset of structural schemas used here (the
same subset the API server enforces: types, ``required``, ``enum``, bounds,
``pattern``, ``nullable``, int-or-string, unknown fields), so the unit tests
need no API server.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tabby.errors import FieldError

Schema = dict[str, Any]

__all__ = [
    "Column",
    "KindSchema",
    "Schema",
    "array",
    "boolean",
    "example",
    "field_paths",
    "free_form",
    "int_or_string",
    "integer",
    "map_of",
    "number",
    "obj",
    "preserved_paths",
    "schema_paths",
    "string",
    "string_map",
    "validate",
]

_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True, slots=True)
class Column:
    """One ``additionalPrinterColumns`` entry (what ``kubectl get`` shows)."""

    name: str
    json_path: str
    type: str = "string"
    description: str = ""
    priority: int = 0


@dataclass(frozen=True, slots=True)
class KindSchema:
    """A kind's body: ``spec`` and, if the kind has one, ``status`` (a subresource)."""

    spec: Schema
    status: Schema | None = None
    columns: tuple[Column, ...] = ()


# -- builders -------------------------------------------------------------------------------

def _described(schema: Schema, description: str) -> Schema:
    return {"description": description, **schema} if description else schema


def string(description: str = "", *, enum: Sequence[str] = (), pattern: str = "",
           max_length: int | None = None, nullable: bool = False) -> Schema:
    out: Schema = {"type": "string"}
    if enum:
        out["enum"] = list(enum)
    if pattern:
        out["pattern"] = pattern
    if max_length is not None:
        out["maxLength"] = max_length
    if nullable:
        out["nullable"] = True
    return _described(out, description)


def integer(description: str = "", *, minimum: int | None = None, maximum: int | None = None,
            enum: Sequence[int] = (), nullable: bool = False) -> Schema:
    """An integer; ``format`` is int32 when the bounds fit, int64 otherwise."""
    low, high = _INT_RANGE["int32"]
    fits = (minimum is None or minimum >= low) and (maximum is None or maximum <= high)
    out: Schema = {"type": "integer", "format": "int32" if fits else "int64"}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    if enum:
        out["enum"] = list(enum)
    if nullable:
        out["nullable"] = True
    return _described(out, description)


def number(description: str = "") -> Schema:
    return _described({"type": "number"}, description)


def boolean(description: str = "") -> Schema:
    return _described({"type": "boolean"}, description)


def int_or_string(description: str = "", *, pattern: str = "") -> Schema:
    """A number or a text (ports, protocols); ``pattern`` applies to the text form."""
    out: Schema = {"x-kubernetes-int-or-string": True}
    if pattern:
        out["pattern"] = pattern
    return _described(out, description)


def array(items: Schema, description: str = "") -> Schema:
    return _described({"type": "array", "items": items}, description)


def obj(properties: Mapping[str, Schema], description: str = "", *,
        required: Sequence[str] = (), preserve_unknown: bool = False) -> Schema:
    """An object with these fields; ``preserve_unknown`` keeps fields not listed."""
    missing = [r for r in required if r not in properties]
    if missing:
        raise ValueError(f"required fields {missing} are not properties")
    out: Schema = {"type": "object"}
    if properties:
        out["properties"] = dict(properties)
    if required:
        out["required"] = list(required)
    if preserve_unknown:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _described(out, description)


def map_of(values: Schema, description: str = "") -> Schema:
    """Free keys (data, not field names), each value of ``values``' shape."""
    return _described({"type": "object", "additionalProperties": values}, description)


def string_map(description: str = "") -> Schema:
    """Free keys, string values (labels and the like)."""
    return map_of({"type": "string"}, description)


def free_form(description: str) -> Schema:
    """Any object, kept as written: only where the model stores data it does not interpret."""
    return _described({"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                      description)


# -- checking -------------------------------------------------------------------------------

def validate(schema: Schema, value: Any, path: str = "") -> list[FieldError]:
    """Every way ``value`` breaks ``schema`` (unknown fields included), with its path."""
    errors: list[FieldError] = []
    _check(schema, value, path, errors)
    return errors


def _check(schema: Schema, value: Any, path: str, errors: list[FieldError]) -> None:
    def fail(message: str) -> None:
        errors.append(FieldError(path, message))

    if value is None:
        if not schema.get("nullable"):
            fail("must not be null")
        return
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            fail(f"must be an integer or a string, not {type(value).__name__}")
            return
    else:
        kind = schema.get("type")
        if kind is None and schema.get("x-kubernetes-preserve-unknown-fields"):
            return
        if not _type_ok(kind, value):
            fail(f"must be of type {kind}, not {type(value).__name__}")
            return
    if "enum" in schema and value not in schema["enum"]:
        fail(f"{value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            fail(f"{value!r} does not match {schema['pattern']}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            fail(f"is longer than {schema['maxLength']}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        _check_number(schema, value, fail)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check(schema.get("items", {}), item, f"{path}[{i}]", errors)
    elif isinstance(value, Mapping):
        _check_object(schema, value, path, errors)


def _type_ok(kind: object, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    types = {"string": str, "boolean": bool, "array": list, "object": Mapping}
    return isinstance(kind, str) and kind in types and isinstance(value, types[kind])


def _check_number(schema: Schema, value: float, fail: Any) -> None:
    low, high = _INT_RANGE.get(schema.get("format", ""), (None, None))
    if low is not None and high is not None and not low <= value <= high:
        fail(f"{value} does not fit {schema['format']}")
    if "minimum" in schema and value < schema["minimum"]:
        fail(f"{value} is less than {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        fail(f"{value} is greater than {schema['maximum']}")


def _check_object(schema: Schema, value: Mapping[str, Any], path: str,
                  errors: list[FieldError]) -> None:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    extra: Schema | None = schema.get("additionalProperties")
    for name in schema.get("required", ()):
        if name not in value:
            errors.append(FieldError(_join(path, name), "is required"))
    for key, item in value.items():
        where = _join(path, str(key))
        if not path and key == "metadata":
            continue  # ObjectMeta: the API server checks it itself, whatever the schema says
        if key in properties:
            _check(properties[key], item, where, errors)
        elif extra is not None:
            _check(extra, item, where, errors)
        elif not schema.get("x-kubernetes-preserve-unknown-fields"):
            errors.append(FieldError(where, "unknown field (the API server would prune it)"))


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# -- examples -------------------------------------------------------------------------------

def example(schema: Schema) -> Any:
    """A value of ``schema``'s shape with every field set (enums: the first value; patterns
    are not honoured): fills fully-populated test objects from a schema."""
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("x-kubernetes-int-or-string"):
        return 1
    kind = schema.get("type")
    if kind == "array":
        return [example(schema.get("items", {}))]
    if kind == "object" or schema.get("x-kubernetes-preserve-unknown-fields"):
        if "properties" in schema:
            return {name: example(sub) for name, sub in schema["properties"].items()}
        if isinstance(schema.get("additionalProperties"), dict):
            return {"key": example(schema["additionalProperties"])}
        return {"any": 1}
    scalars: dict[str, Any] = {"string": "x", "boolean": True, "number": 1.5,
                               "integer": schema.get("minimum", 1)}
    return scalars.get(str(kind), "x")


# -- paths ----------------------------------------------------------------------------------

def schema_paths(schema: Schema, path: str = "") -> set[str]:
    """The field paths a schema names: ``spec.ingress[].source.ports[]``; maps as ``{}``."""
    out = {path} if path else set()
    if schema.get("type") == "array":
        out |= schema_paths(schema.get("items", {}), f"{path}[]")
    for name, sub in schema.get("properties", {}).items():
        out |= schema_paths(sub, _join(path, name))
    if isinstance(schema.get("additionalProperties"), dict):
        out |= schema_paths(schema["additionalProperties"], _join(path, "{}"))
    return out


def preserved_paths(schema: Schema, path: str = "") -> set[str]:
    """The paths under which fields not in the schema are kept (free-form data)."""
    out = {path} if schema.get("x-kubernetes-preserve-unknown-fields") else set()
    if schema.get("type") == "array":
        out |= preserved_paths(schema.get("items", {}), f"{path}[]")
    for name, sub in schema.get("properties", {}).items():
        out |= preserved_paths(sub, _join(path, name))
    return out


def field_paths(value: Any, path: str = "", *, maps: Collection[str] = ()) -> set[str]:
    """The field paths a value uses, in ``schema_paths``' notation.

    ``maps`` names the paths whose keys are data, not field names (labels, ``block``).
    """
    out = {path} if path else set()
    if isinstance(value, list):
        for item in value:
            out |= field_paths(item, f"{path}[]", maps=maps)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            name = "{}" if path in maps else str(key)
            out |= field_paths(item, _join(path, name), maps=maps)
    return out
