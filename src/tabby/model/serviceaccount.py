"""Kubernetes ``v1`` ServiceAccount, as far as policy reads one: its labels.

Calico's rules match pods by service account: ``serviceAccounts.names`` by
the pod's ``spec.serviceAccountName``, and ``serviceAccounts.selector`` and a
policy's ``serviceAccountSelector`` by the labels of that ServiceAccount
(``tabby.policy.index``: the ``pcsa.`` label space). In Kubernetes mode the
API server serves them (the controller-manager makes each namespace's
``default``); in a lab they are applied like any manifest. The rest of the
object (``secrets``, ``imagePullSecrets``, ``automountServiceAccountToken``)
is kept as it is, never interpreted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from tabby.model.base import KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields

_KEPT = ("secrets", "imagePullSecrets", "automountServiceAccountToken")


@register
@dataclass(frozen=True, slots=True)
class ServiceAccount(Resource):
    KIND = KindInfo("ServiceAccount", "", "v1", "serviceaccounts", namespaced=True,
                    short_names=("sa",))
    meta: ObjectMeta
    rest: Mapping[str, Any] = field(default_factory=dict)  # the fields in _KEPT, as given

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        rest = {key: top.raw(key) for key in _KEPT}
        return cls(meta=meta, rest={k: v for k, v in rest.items() if v is not None})

    def body(self) -> dict[str, Any]:
        return dict(self.rest)


def account_labels(accounts: tuple[ServiceAccount, ...]
                   ) -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, name) -> the account's labels."""
    return {(a.meta.namespace, a.meta.name): dict(a.meta.labels) for a in accounts}
