"""Kubernetes ``v1`` Secret, as far as tabby reads one: BGP passwords.

A BGPPeer's ``password.secretKeyRef`` names a Secret in the ``tabby-system``
namespace and a key of it, as Calico's does for ``calico-system``. ``data``
values are base64 (as Kubernetes stores them); ``stringData`` is the
write-only plain form, folded into ``data`` on the way in.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from tabby.model.base import KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields


@register
@dataclass(frozen=True, slots=True)
class Secret(Resource):
    KIND = KindInfo("Secret", "", "v1", "secrets", namespaced=True)
    meta: ObjectMeta
    data: Mapping[str, bytes] = field(default_factory=dict)
    type: str = "Opaque"

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        data: dict[str, bytes] = {}
        for key, text in top.str_map("data").items():
            try:
                data[key] = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                top.error(f"data.{key}", "is not base64 (use stringData for plain text)")
        for key, text in top.str_map("stringData").items():
            data[key] = text.encode()
        kind = top.str("type", "Opaque") or "Opaque"
        top.raw("immutable")
        return cls(meta=meta, data=data, type=kind)

    def body(self) -> dict[str, Any]:
        return {"type": self.type,
                "data": {k: base64.b64encode(v).decode() for k, v in sorted(self.data.items())}}

    def text(self, key: str) -> str | None:
        """The value under ``key`` as text (None if absent or not UTF-8)."""
        value = self.data.get(key)
        if value is None:
            return None
        try:
            return value.decode()
        except UnicodeDecodeError:
            return None
