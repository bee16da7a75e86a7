"""Every kind's field declaration (``FieldNotes``), in one table keyed by store resource.

``tabby.model.fieldnotes`` says what a declaration means. The table lists every
registered kind (``tests/unit/test_fields.py`` fails for a kind missing here), so
adding a kind means deciding, field by field, what tabby does with the upstream
API it follows: an empty ``FieldNotes()`` says "every field honoured".

For Calico's kinds, the Calico v3 fields tabby lacks are listed (Calico v3.31's
``api/pkg/apis/projectcalico/v3`` and ``libcalico-go/lib/apis/internalapi``):
rejected with the reason, or, where the kind's schema keeps them, ignored.
``UNSERVED`` names Calico's kinds tabby does not serve at all, and why.
"""

from __future__ import annotations

from collections.abc import Callable

from tabby.model import felixfields
from tabby.model.fieldnotes import FieldNote, FieldNotes, ignored, rejected

__all__ = ["NOTES", "UNSERVED", "notes_for"]

_CALICO_STATUS = "written by Calico's own components; tabby neither reads nor writes it"
_NOT_IMPLEMENTED = "not implemented by tabby"
_CALICO_IPAM = "Calico's IPAM bookkeeping; tabby's IPAM writes its own"
_CNI_WRITTEN = "written by Calico's CNI plugin; tabby-cni writes tabby's endpoints"


def _rules(make: Callable[[str, str], FieldNote], field: str, reason: str
           ) -> tuple[FieldNote, ...]:
    """One note per rule list of a Calico policy (ingress and egress)."""
    return tuple(make(f"spec.{d}[].{field}", reason) for d in ("ingress", "egress"))


_POLICY = FieldNotes(notes=(
    ignored("spec.performanceHints", "a hint for Felix's calculation; tabby's compiler needs"
            " none"),
    *_rules(ignored, "metadata", "rule annotations are not kept (Calico only shows them,"
            " too)"),
    *_rules(rejected, "http", "HTTP match rules need an application-layer proxy; tabby has"
            " none"),
    *(note for side in ("source", "destination") for note in _rules(
        rejected, f"{side}.services", "service matches in rules are not implemented; select"
        " the service's pods (or list its addresses in a NetworkSet)")),
))

_PASSWORD_OPTIONAL = ("tabby treats the Secret key as required: a peer whose password is"
                      " missing is left out (and reported) rather than run without one")

NOTES: dict[str, FieldNotes] = {
    "bgpconfigurations.tabby.dev": FieldNotes(
        notes=(
            ignored("spec.nodeMeshPassword.secretKeyRef.optional", _PASSWORD_OPTIONAL,
                    as_if=False),
            rejected("spec.bindMode", "BIRD listens on every address of the node; binding"
                     " to the node IP only is not implemented"),
            rejected("spec.ignoredInterfaces", _NOT_IMPLEMENTED),
            rejected("spec.localWorkloadPeeringIPV4", "peering with local workloads is not"
                     " implemented"),
            rejected("spec.localWorkloadPeeringIPV6", "peering with local workloads is not"
                     " implemented"),
            rejected("spec.programClusterRoutes", "BIRD always programs the routes it"
                     " learns (Calico's default)"),
            rejected("spec.serviceLoadBalancerAggregation", _NOT_IMPLEMENTED),
        ),
        extensions=("spec.nodeToNodeMeshBFD", "spec.nodeMeshPassword.value")),
    "bgpfilters.tabby.dev": FieldNotes(),
    "bgppeers.tabby.dev": FieldNotes(
        notes=(
            ignored("spec.password.secretKeyRef.optional", _PASSWORD_OPTIONAL, as_if=False),
            rejected("spec.keepaliveTime", "BIRD's keepalive follows its hold time; a"
                     " per-peer keepalive is not implemented"),
            rejected("spec.localASNumber", "sessions use the node's AS number; a per-peer"
                     " local AS is not implemented"),
            rejected("spec.localWorkloadSelector", "peering with local workloads is not"
                     " implemented"),
            rejected("spec.nextHopMode", "not implemented (keepOriginalNextHop is)"),
            rejected("spec.reachableBy", _NOT_IMPLEMENTED),
            rejected("spec.reversePeering", _NOT_IMPLEMENTED),
            rejected("spec.ttlSecurity", "GTSM (TTL security) is not implemented"),
        ),
        extensions=("spec.bfd", "spec.password.value")),
    "felixconfigurations.tabby.dev": FieldNotes(notes=(
        *felixfields.notes(),
        ignored("status", _CALICO_STATUS))),
    "workloadendpoints.tabby.dev": FieldNotes(
        notes=(
            ignored("spec.profiles", "tabby derives namespace and service-account profiles"
                    " itself"),
            ignored("spec.ipNATs", "floating IPs (1:1 NAT) are not implemented"),
            rejected("spec.ipv4Gateway", _CNI_WRITTEN),
            rejected("spec.ipv6Gateway", _CNI_WRITTEN),
            rejected("spec.allowSpoofedSourcePrefixes", "tabby's anti-spoofing admits a"
                     " pod's own addresses only"),
            rejected("spec.qosControls", "bandwidth limits come from the CNI bandwidth"
                     " plugin in tabby's chain"),
            rejected("spec.ports[].hostPort", "host ports come from the CNI portmap plugin"
                     " in tabby's chain"),
            rejected("spec.ports[].hostIP", "host ports come from the CNI portmap plugin"
                     " in tabby's chain"),
        ),
        extensions=("spec.namespaceLabels",)),
    "hostendpoints.tabby.dev": FieldNotes(),
    "ipamblocks.tabby.dev": FieldNotes(notes=tuple(rejected(p, _CALICO_IPAM) for p in (
        "spec.affinityClaimTime", "spec.sequenceNumber", "spec.sequenceNumberForAllocation",
        "spec.attributes[].alternateOwnerAttrs", "spec.attributes[].releasedAt"))),
    "blockaffinities.tabby.dev": FieldNotes(notes=(
        ignored("spec.deleted", "a deleted affinity is removed from the store at once"),
        rejected("spec.type", _CALICO_IPAM))),
    "ipamhandles.tabby.dev": FieldNotes(notes=(
        ignored("spec.deleted", "a released handle is removed from the store at once",
                as_if=False),)),
    "ipamconfigurations.tabby.dev": FieldNotes(notes=(
        rejected("spec.ipCooldownSeconds", "released addresses are free again at once; a"
                 " cool-down is not implemented"),
        rejected("spec.kubeVirtVMAddressPersistence", "KubeVirt is not supported"))),
    "ippools.tabby.dev": FieldNotes(notes=(
        ignored("spec.assignmentMode", "every enabled pool is used automatically (Manual"
                " pools are not implemented)", as_if="Automatic"),
        ignored("status", _CALICO_STATUS),
        rejected("spec.namespaceSelector", "pools are chosen per node (nodeSelector); per"
                 " namespace is not implemented"))),
    "ipreservations.tabby.dev": FieldNotes(),
    "networksets.tabby.dev": FieldNotes(notes=(
        ignored("spec.allowedEgressDomains", "domain names in policy (Calico Enterprise) are"
                " not implemented"),)),
    "globalnetworksets.tabby.dev": FieldNotes(notes=(
        ignored("spec.allowedEgressDomains", "domain names in policy (Calico Enterprise) are"
                " not implemented"),)),
    "nodes.tabby.dev": FieldNotes(notes=(
        ignored("spec.orchRefs", "tabby's Node is named after its Kubernetes Node"),
        ignored("status", _CALICO_STATUS),
        rejected("spec.bgp.ipv4IPIPTunnelAddr", "tabby has no IP-in-IP"),
        rejected("spec.wireguard", "tabby has no WireGuard"),
        rejected("spec.interfaces", "written by calico-node; tabby's agent reads the"
                 " kernel"))),
    "tiers.tabby.dev": FieldNotes(notes=(ignored("status", _CALICO_STATUS),)),
    "networkpolicies.tabby.dev": _POLICY,
    "globalnetworkpolicies.tabby.dev": _POLICY,
    # Staged policies (tabby.model.stagedpolicy): evaluated on flows, never enforced.
    "stagednetworkpolicies.tabby.dev": _POLICY,
    "stagedglobalnetworkpolicies.tabby.dev": _POLICY,
    "stagedkubernetesnetworkpolicies.tabby.dev": FieldNotes(),
    "clusternetworkpolicies.policy.networking.k8s.io": FieldNotes(notes=(
        ignored("status", "written by implementations for their users; tabby neither reads"
                " nor writes it"),)),
    # Kubernetes' own kinds: tabby reads a few fields; the others are Kubernetes'.
    "namespaces": FieldNotes(
        reads=(("metadata.labels", "Namespace selectors in policy (with"
                " kubernetes.io/metadata.name, as Kubernetes sets it)."),
               ("status.phase", "Kept as served.")),
        rest="Kubernetes' own; tabby does not read them."),
    "pods": FieldNotes(
        reads=(("spec.nodeName", "The node the pod runs on (the lab places it there)."),
               ("spec.containers[].name", "The container's name."),
               ("spec.containers[].ports[]", "containerPort, protocol, name: named ports in"
                " policy and Services; in a lab, the pod listens on each."),
               ("spec.serviceAccountName", "serviceAccounts matches in policy."),
               ("spec.hostNetwork", "A host-network pod gets no tabby endpoint."),
               ("status.podIP, status.podIPs, status.hostIP, status.phase",
                "Written by whoever wires the pod (tabby's lab, the kubelet).")),
        rest="Kubernetes' own (kept as written for the kubelet and the API server); tabby"
             " does not read them."),
    "networkpolicies.networking.k8s.io": FieldNotes(
        reads=(("spec", "Every field: podSelector, policyTypes, ingress and egress with"
                " from/to (podSelector, namespaceSelector, ipBlock with except) and ports"
                " (protocol, port or name, endPort)."),),
        rest="Refused: NetworkPolicy has no other fields."),
    "secrets": FieldNotes(
        reads=(("data, stringData", "BGP passwords (secretKeyRef) from tabby-system."),
               ("type", "Kept.")),
        rest="Kubernetes' own; tabby does not read them."),
    "serviceaccounts": FieldNotes(
        reads=(("metadata.labels", "serviceAccounts.selector in Calico policy rules."),),
        rest="Kubernetes' own (secrets, imagePullSecrets, automountServiceAccountToken kept as"
             " written)."),
    "services": FieldNotes(
        notes=(
            ignored("spec.loadBalancerSourceRanges", "tabby's service proxy does not filter"
                    " LoadBalancer traffic by source: use a policy"),
            ignored("spec.trafficDistribution", "topology-aware routing is not implemented"),
        ),
        reads=(("spec.type, clusterIP(s), ipFamilies, ipFamilyPolicy, selector, ports[]"
                " (name, protocol, port, targetPort, nodePort, appProtocol)",
                "The service proxy (nftables)."),
               ("spec.sessionAffinity, sessionAffinityConfig, externalTrafficPolicy,"
                " internalTrafficPolicy, externalIPs, loadBalancerIP",
                "The service proxy; external and load-balancer addresses are advertised"
                " over BGP."),
               ("spec.healthCheckNodePort", "Validated and kept; not served."),
               ("spec.externalName", "Kept; ExternalName services are DNS's, not proxied."),
               ("status.loadBalancer.ingress[].ip", "Load-balancer addresses (tabby's"
                " controllers write them).")),
        rest="Kubernetes' own (kept as written); tabby does not read them."),
    "endpointslices.discovery.k8s.io": FieldNotes(
        reads=(("addressType, endpoints[] (addresses, conditions, nodeName, targetRef,"
                " hostname), ports[]", "A Service's backends (the service proxy)."),),
        rest="zone, hints and deprecatedTopology are kept and not read."),
}

UNSERVED: dict[str, str] = {
    "KubeControllersConfiguration": "tabby's controllers take flags (tabby controllers --help)",
    "ClusterInformation": "written by Calico about its own install; tabby has no such object",
    "CalicoNodeStatus": "ask the node: tabby node status",
    "Profile": "tabby derives namespace and service-account profiles itself",
}


def notes_for(resource: str) -> FieldNotes:
    """The declaration of the kind stored as ``resource``; none declared: every field honoured."""
    return NOTES.get(resource, _NONE)


_NONE = FieldNotes()
