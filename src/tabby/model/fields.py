"""Reading untrusted manifest data field by field, collecting errors with their paths.

A ``Fields`` wraps one mapping at one path (``spec``, ``spec.ports[0]``) and
offers typed getters. Getters never raise: they record a ``FieldError`` and
return a default, so one pass over a document reports every problem at once.
``finish()`` reports fields nobody asked for (typos such as ``blocksize``).
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from tabby.errors import FieldError, ValidationError


class Fields:
    def __init__(self, data: object, path: builtins.str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        self.seen: set[builtins.str] = set()
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            self.error("", f"must be a mapping, not {type_name(data)}")
            data = {}
        self.data: Mapping[builtins.str, Any] = data

    # -- paths and errors -------------------------------------------------
    def at(self, name: builtins.str) -> builtins.str:
        if not name:
            return self.path
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: builtins.str, message: builtins.str) -> None:
        self.errors.append(FieldError(self.at(name), message))

    def has(self, name: builtins.str) -> builtins.bool:
        return name in self.data and self.data[name] is not None

    def raw(self, name: builtins.str) -> Any:
        self.seen.add(name)
        return self.data.get(name)

    # -- typed getters ----------------------------------------------------
    def str(
        self, name: builtins.str, default: builtins.str = "", *, required: builtins.bool = False
    ) -> builtins.str:
        value = self.raw(name)
        if value is None:
            if required:
                self.error(name, "is required")
            return default
        if not isinstance(value, builtins.str):
            self.error(name, f"must be a string, not {type_name(value)}")
            return default
        if required and not value:
            self.error(name, "must not be empty")
        return builtins.str(value)

    def int(
        self,
        name: builtins.str,
        default: builtins.int | None = None,
        *,
        required: builtins.bool = False,
    ) -> builtins.int | None:
        value = self.raw(name)
        if value is None:
            if required:
                self.error(name, "is required")
            return default
        if isinstance(value, builtins.bool) or not isinstance(value, builtins.int):
            self.error(name, f"must be an integer, not {type_name(value)}")
            return default
        return value

    def bool(self, name: builtins.str, default: builtins.bool = False) -> builtins.bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, builtins.bool):
            self.error(name, f"must be true or false, not {type_name(value)}")
            return default
        return value

    def choice(
        self, name: builtins.str, choices: Sequence[builtins.str], default: builtins.str
    ) -> builtins.str:
        value = self.str(name, default)
        if value not in choices:
            self.error(name, f"{value!r} is not one of {', '.join(choices)}")
            return default
        return value

    def map(self, name: builtins.str) -> Fields:
        return Fields(self.raw(name), self.at(name), self.errors)

    def str_map(self, name: builtins.str) -> dict[builtins.str, builtins.str]:
        value = self.raw(name)
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(name, f"must be a mapping, not {type_name(value)}")
            return {}
        out: dict[builtins.str, builtins.str] = {}
        for key, item in value.items():
            if not isinstance(key, builtins.str) or not isinstance(item, builtins.str):
                self.error(f"{name}.{key}", "keys and values must be strings")
                continue
            out[key] = item
        return out

    def list(self, name: builtins.str) -> builtins.list[tuple[builtins.str, Any]]:
        """Items of a list field with their paths, e.g. ``("spec.ports[0]", {...})``."""
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            self.error(name, f"must be a list, not {type_name(value)}")
            return []
        return [(f"{self.at(name)}[{i}]", item) for i, item in enumerate(value)]

    def str_list(self, name: builtins.str) -> builtins.list[builtins.str]:
        out: builtins.list[builtins.str] = []
        for path, item in self.list(name):
            if isinstance(item, builtins.str):
                out.append(item)
            else:
                self.errors.append(FieldError(path, f"must be a string, not {type_name(item)}"))
        return out

    def finish(self, *, ignore_unknown: builtins.bool = False) -> None:
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


def type_name(value: object) -> builtins.str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def raise_if(obj: str, errors: list[FieldError]) -> None:
    if errors:
        raise ValidationError(obj, errors)
