"""Reading untrusted manifest data field by field, collecting errors with their paths.

A ``Fields`` wraps one mapping at one path (``spec``, ``spec.ports[0]``) and
offers typed getters. Getters never raise: they record a ``FieldError`` and
return a default, so one pass over a document reports every problem at once.
``finish()`` reports fields nobody asked for (typos such as ``blocksize``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from tabby.errors import FieldError, ValidationError


class Fields:
    def __init__(self, data: object, path: str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        self.seen: set[str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", f"must be a mapping, not {type_name(data)}")
            data = {}
        self.data: Mapping[str, Any] = data

    # -- paths and errors -------------------------------------------------
    def at(self, name: str) -> str:
        if not name:
            return self.path
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, message: str) -> None:
        self.errors.append(FieldError(self.at(name), message))

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    # -- typed getters ----------------------------------------------------
    def str(self, name: str, default: str = "", *, required: bool = False) -> str:
        value = self.raw(name)
        if value is None:
            if required:
                self.error(name, "is required")
            return default
        if not isinstance(value, str):
            self.error(name, f"must be a string, not {type_name(value)}")
            return default
        if required and not value:
            self.error(name, "must not be empty")
        return value

    def int(self, name: str, default: int | None = None, *, required: bool = False) -> int | None:
        value = self.raw(name)
        if value is None:
            if required:
                self.error(name, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(name, f"must be an integer, not {type_name(value)}")
            return default
        return value

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(name, f"must be true or false, not {type_name(value)}")
            return default
        return value

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.str(name, default)
        if value not in choices:
            self.error(name, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def map(self, name: str) -> Fields:
        return Fields(self.raw(name), self.at(name), self.errors)

    def str_map(self, name: str) -> dict[str, str]:
        value = self.raw(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(name, f"must be a mapping, not {type_name(value)}")
            return {}
        out: dict[str, str] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not isinstance(item, str):
                self.error(f"{name}.{key}", "keys and values must be strings")
                continue
            out[key] = item
        return out

    def list(self, name: str) -> list[tuple[str, Any]]:
        """Items of a list field with their paths, e.g. ``("spec.ports[0]", {...})``."""
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(name, f"must be a list, not {type_name(value)}")
            return []
        return [(f"{self.at(name)}[{i}]", item) for i, item in enumerate(value)]

    def str_list(self, name: str) -> list[str]:
        out = []
        for path, item in self.list(name):
            if isinstance(item, str):
                out.append(item)
            else:
                self.errors.append(FieldError(path, f"must be a string, not {type_name(item)}"))
        return out

    def finish(self, *, ignore_unknown: bool = False) -> None:
        """Report fields that no getter consumed."""
        if ignore_unknown:
            return
        known = sorted(self.seen)
        for key in self.data:
            if key in self.seen:
                continue
            hint = difflib.get_close_matches(str(key), known, n=1)
            suffix = f" (did you mean {hint[0]}?)" if hint else ""
            self.error(str(key), f"unknown field{suffix}")


def type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def raise_if(obj: str, errors: list[FieldError]) -> None:
    if errors:
        raise ValidationError(obj, errors)
