"""How a store resource name maps onto the Kubernetes API.

Every kind of the model is one API resource: Kubernetes' own kinds (``pods``,
``services``, ``endpointslices.discovery.k8s.io``, ...) are served by the API
server itself; tabby's kinds (``ippools.tabby.dev``, ...) are served through the
CustomResourceDefinitions in ``manifests/crds.yaml``. The store's resource
name is ``KindInfo.resource`` (``<plural>`` or ``<plural>.<group>``), which is
also the CRD's name for tabby's kinds.

A namespaced resource may be kept to one namespace (``APIResource.namespace``):
its collection is that namespace's, so listing and watching it need rights in
that namespace only. Secrets are: tabby reads them only for BGP passwords,
which live in ``tabby-system`` (``SECRET_NAMESPACE``), and its node role may
read Secrets there and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from tabby.model import Secret, all_kinds
from tabby.model.base import KindInfo
from tabby.model.bgpfields import SECRET_NAMESPACE

__all__ = ["KEPT_IN", "APIResource", "default_resources"]

# Resources kept to one namespace, by store resource name.
KEPT_IN = {Secret.KIND.resource: SECRET_NAMESPACE}


@dataclass(frozen=True, slots=True)
class APIResource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    namespace: str | None = None  # the one namespace kept (None: every namespace)

    @classmethod
    def of(cls, info: KindInfo) -> APIResource:
        return cls(info.group, info.version, info.plural, info.kind, info.namespaced,
                   status_subresource=info.group != "tabby.dev" and info.kind in _WITH_STATUS,
                   namespace=KEPT_IN.get(info.resource) if info.namespaced else None)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def name(self) -> str:
        """The store's (and, for CRDs, the API's) name: ``pods``, ``ippools.tabby.dev``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def holds(self, namespace: str | None) -> bool:
        """Whether objects of ``namespace`` (None: of every namespace) are kept here."""
        return self.namespace is None or namespace in (None, self.namespace)

    def collection(self, namespace: str | None) -> str:
        """The collection path: every namespace (or the one kept) when ``namespace`` is
        None."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        namespace = namespace or self.namespace
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{base}/{self.plural}"

    def item(self, namespace: str, name: str) -> str:
        return f"{self.collection(namespace)}/{quote(name, safe='')}"


# Built-in kinds whose status the main resource ignores on update (status subresource).
_WITH_STATUS = frozenset({"Pod", "Service", "Namespace", "Node"})


def default_resources(kinds: Iterable[KindInfo] | None = None) -> Mapping[str, APIResource]:
    """Every kind of the model (or of ``kinds``), by store resource name."""
    infos = [cls.KIND for cls in all_kinds()] if kinds is None else list(kinds)
    return {info.resource: APIResource.of(info) for info in infos}
