"""The resource model: typed, validated Kubernetes-shaped objects.

Importing this package registers every kind (``KubeNode``, Kubernetes' own Node,
read-only, is exported but not registered: ``tabby.model.k8snode`` says why).
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
from tabby.model.bgpconfiguration import BGPConfiguration
from tabby.model.bgpfilter import BGPFilter
from tabby.model.bgppeer import BGPPeer
from tabby.model.clusternetworkpolicy import ClusterNetworkPolicy
from tabby.model.felixconfig import FelixConfiguration
from tabby.model.hostendpoint import HostEndpoint
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
from tabby.model.ipreservation import IPReservation
from tabby.model.k8s import Namespace, Pod
from tabby.model.k8snode import KubeNode
from tabby.model.k8spolicy import K8sNetworkPolicy
from tabby.model.networkset import GlobalNetworkSet, NetworkSet
from tabby.model.node import Node
from tabby.model.policy import GlobalNetworkPolicy, NetworkPolicy
from tabby.model.secret import Secret
from tabby.model.service import EndpointSlice, Service
from tabby.model.serviceaccount import ServiceAccount
from tabby.model.stagedpolicy import (
    StagedGlobalNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    StagedNetworkPolicy,
)
from tabby.model.tier import BUILTIN_TIERS, Tier
from tabby.model.workloadendpoint import WorkloadEndpoint, endpoint_name

__all__ = [
    "BUILTIN_TIERS",
    "CALICO_API",
    "TABBY_API",
    "BGPConfiguration",
    "BGPFilter",
    "BGPPeer",
    "BlockAffinity",
    "ClusterNetworkPolicy",
    "EndpointSlice",
    "FelixConfiguration",
    "GlobalNetworkPolicy",
    "GlobalNetworkSet",
    "HostEndpoint",
    "IPAMBlock",
    "IPAMConfiguration",
    "IPAMHandle",
    "IPPool",
    "IPReservation",
    "K8sNetworkPolicy",
    "KindInfo",
    "KubeNode",
    "Namespace",
    "NetworkPolicy",
    "NetworkSet",
    "Node",
    "ObjectMeta",
    "Pod",
    "Resource",
    "Secret",
    "Service",
    "ServiceAccount",
    "StagedGlobalNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
    "StagedNetworkPolicy",
    "Tier",
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
