"""The resource model: typed, validated Kubernetes-shaped objects.

Importing this package registers every kind.
"""

from tabby.model.base import (
    CALICO_API,
    TABBY_API,
    KindInfo,
    ObjectMeta,
    Resource,
    all_kinds,
    kind_for_manifest,
    kind_for_resource,
    parse_manifest,
    resolve_kind,
)
from tabby.model.ipam import (
    BlockAffinity,
    IPAMBlock,
    IPAMConfiguration,
    IPAMHandle,
    affinity_name,
    block_name,
    handle_name,
)
from tabby.model.ippool import IPPool, check_pools
from tabby.model.k8s import Namespace, Pod
from tabby.model.node import Node
from tabby.model.workloadendpoint import WorkloadEndpoint, endpoint_name

__all__ = [
    "CALICO_API",
    "TABBY_API",
    "BlockAffinity",
    "IPAMBlock",
    "IPAMConfiguration",
    "IPAMHandle",
    "IPPool",
    "KindInfo",
    "Namespace",
    "Node",
    "ObjectMeta",
    "Pod",
    "Resource",
    "WorkloadEndpoint",
    "affinity_name",
    "all_kinds",
    "block_name",
    "check_pools",
    "endpoint_name",
    "handle_name",
    "kind_for_manifest",
    "kind_for_resource",
    "parse_manifest",
    "resolve_kind",
]
