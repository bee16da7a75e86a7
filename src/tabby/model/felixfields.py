"""Calico's FelixConfiguration fields, and what tabby does with each.

Calico's Felix has ~190 settings (``FelixConfigurationSpec`` in Calico's
``api/pkg/apis/projectcalico/v3/felixconfig.go``, v3.31). tabby's agent reads
three (``failsafeInboundHostPorts``, ``failsafeOutboundHostPorts``,
``natOutgoingExclusions``: typed in ``tabby.model.felixconfig``). Every other
Calico field is listed here, grouped by the reason tabby does not act on it:
accepted with its type checked, kept as written (so Calico manifests round-trip
and ``kubectl apply`` works), and warned about unless written with the value tabby
behaves as anyway. The WireGuard switches and ``nodeSelector`` are rejected:
ignoring them would leave traffic in clear or apply settings to nodes that did
not ask for them. A field Calico does not have is an unknown field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tabby.model.fieldnotes import UNSET, FieldNote, Status
from tabby.model.schema import Schema, array, boolean, int_or_string, integer, map_of, obj, string

__all__ = ["GROUPS", "FelixField", "FelixGroup", "accepted_schemas", "notes", "schemas"]

_B = boolean()
_I = integer()
_MASK = integer(minimum=0, maximum=4294967295)
_S = string()
_D = string()  # a Go duration: 90s, 1m30s
_SL = array(string())
_IS = int_or_string()
_RANGE = obj({"min": integer(), "max": integer()}, required=["min", "max"])
_CT = obj({name: string() for name in (
    "creationGracePeriod", "genericTimeout", "icmpTimeout", "tcpEstablished", "tcpFinsSeen",
    "tcpResetSeen", "tcpSynSent", "udpTimeout")})


@dataclass(frozen=True, slots=True)
class FelixField:
    name: str
    schema: Schema
    as_if: Any = UNSET


@dataclass(frozen=True, slots=True)
class FelixGroup:
    title: str
    reason: str
    fields: tuple[FelixField, ...]
    status: Status = Status.IGNORED


def _g(title: str, reason: str, *fields: tuple[Any, ...],
       status: Status = Status.IGNORED) -> FelixGroup:
    return FelixGroup(title, reason, tuple(FelixField(*f) for f in fields), status)


_RESYNC = "the agent resyncs everything every --resync-interval and on every change"
_NFT = "tabby's rules live in its own nft table (inet tabby) with fixed verdicts and marks"

GROUPS: tuple[FelixGroup, ...] = (
    _g("Go runtime", "Felix's Go runtime; tabby's agent is Python",
       ("goGCThreshold", _I), ("goMaxProcs", _I), ("goMemoryLimitMB", _I)),
    _g("Feature detection", "tabby asks the kernel itself (e.g. for the ipip link type)",
       ("featureDetectOverride", _S), ("featureGates", _S)),
    _g("Health", "the agent always serves /healthz on its --metrics-addr",
       ("healthEnabled", _B, True), ("healthHost", _S), ("healthPort", _I),
       ("healthTimeoutOverrides", array(obj({"name": _S, "timeout": _S},
                                            required=["name", "timeout"])))),
    _g("Logging", "the agent logs to standard error at its --log-level",
       ("logDebugFilenameRegex", _S), ("logFilePath", _S), ("logSeverityFile", _S),
       ("logSeverityScreen", _S), ("logSeveritySys", _S)),
    _g("Log action", "a policy's Log rules use tabby's own nft log prefix, without rate limit",
       ("logPrefix", _S), ("logActionRateLimit", _S), ("logActionRateLimitBurst", _I)),
    _g("Prometheus metrics", "the agent always serves Prometheus /metrics on its"
       " --metrics-addr, over plain HTTP",
       ("prometheusMetricsEnabled", _B, True), ("prometheusGoMetricsEnabled", _B),
       ("prometheusMetricsCAFile", _S), ("prometheusMetricsCertFile", _S),
       ("prometheusMetricsClientAuth", _S), ("prometheusMetricsHost", _S),
       ("prometheusMetricsKeyFile", _S), ("prometheusMetricsPort", _I),
       ("prometheusProcessMetricsEnabled", _B), ("prometheusWireGuardMetricsEnabled", _B)),
    _g("Dataplane driver", "tabby has one dataplane: nftables and netlink, in the agent",
       ("dataplaneDriver", _S), ("useInternalDataplaneDriver", _B, True),
       ("nftablesMode", _S, "Enabled"), ("chainInsertMode", _S)),
    _g("Resync timing", _RESYNC,
       ("dataplaneWatchdogTimeout", _D), ("interfaceRefreshInterval", _D),
       ("routeRefreshInterval", _D), ("netlinkTimeout", _D), ("nftablesRefreshInterval", _D)),
    _g("Routes", "tabby programs routes to pods and blocks in the main table, with protocol 77"
       " and the kernel's default metric, from IPAM blocks; it never touches other routes",
       ("deviceRouteProtocol", _I, 77), ("deviceRouteSourceAddress", _S),
       ("deviceRouteSourceAddressIPv6", _S), ("ipv4ElevatedRoutePriority", _I),
       ("ipv4NormalRoutePriority", _I), ("ipv6ElevatedRoutePriority", _I),
       ("ipv6NormalRoutePriority", _I), ("removeExternalRoutes", _B, False),
       ("routeSource", _S, "CalicoIPAM"), ("routeSyncDisabled", _B, False),
       ("routeTableRange", _RANGE), ("routeTableRanges", array(_RANGE)),
       ("programClusterRoutes", _S)),
    _g("Interfaces", "pod interfaces are tabby's tab* veths; all-interfaces host endpoints"
       " skip them and the interfaces other host endpoints name, nothing else",
       ("interfacePrefix", _S), ("interfaceExclude", _S)),
    _g("MTU", "the pod MTU is the agent's --mtu, less the VXLAN overhead where pools"
       " encapsulate", ("mtuIfacePattern", _S), ("requireMTUFile", _B, False),
       ("vxlanMTU", _I), ("vxlanMTUV6", _I)),
    _g("Policy defaults", "fixed in tabby: pod-to-host traffic meets the pod's egress policy"
       " and then the host endpoints' (Calico's Return); conntrack-invalid packets are"
       " dropped; pods may send only from their own addresses",
       ("defaultEndpointToHostAction", _S, "Return"),
       ("disableConntrackInvalidCheck", _B, False), ("workloadSourceSpoofing", _S, "Disabled"),
       ("allowIPIPPacketsFromWorkloads", _B), ("allowVXLANPacketsFromWorkloads", _B),
       ("externalNodesList", _SL)),
    _g("nftables details", _NFT,
       ("nftablesFilterAllowAction", _S), ("nftablesFilterDenyAction", _S, "Drop"),
       ("nftablesMangleAllowAction", _S), ("nftablesMarkMask", _MASK),
       ("nftablesFlowTableDataIfacePattern", _S), ("nftablesFlowTableOffload", _S, "Disabled")),
    _g("iptables", "tabby programs nftables, never iptables",
       ("ipsetsRefreshInterval", _D), ("iptablesBackend", _S),
       ("iptablesFilterAllowAction", _S), ("iptablesFilterDenyAction", _S),
       ("iptablesLockProbeInterval", _D), ("iptablesMangleAllowAction", _S),
       ("iptablesMarkMask", _MASK), ("iptablesNATOutgoingInterfaceFilter", _S),
       ("iptablesPostWriteCheckInterval", _D), ("iptablesRefreshInterval", _D),
       ("maxIpsetSize", _I)),
    _g("Forwarding and NAT", "the agent always turns forwarding on and supports IPv6;"
       " natOutgoing masquerades to the outgoing interface's address with the kernel's"
       " port choice",
       ("ipForwarding", _S, "Enabled"), ("ipv6Support", _B, True), ("natOutgoingAddress", _S),
       ("natPortRange", _IS)),
    _g("Services", "tabby's service proxy (nftables) serves every Service; it has no loop"
       " prevention for unserved service addresses",
       ("serviceLoopPrevention", _S), ("kubeNodePortRanges", array(_IS))),
    _g("Not implemented", "not implemented by tabby",
       ("floatingIPs", _S, "Disabled"), ("istioAmbientMode", _S, "Disabled"),
       ("istioDSCPMark", _IS), ("liveMigrationRouteConvergenceTime", _D),
       ("localSubnetL2Reachability", _S, "Disabled"),
       ("localSubnetL2ReachabilityRefreshInterval", _D),
       ("policySyncPathPrefix", _S, ""), ("sidecarAccelerationEnabled", _B, False),
       ("endpointStatusPathPrefix", _S)),
    _g("eBPF dataplane", "eBPF dataplane: tabby's dataplane is nftables",
       ("bpfEnabled", _B, False), ("bpfAttachType", _S), ("bpfCTLBLogFilter", _S),
       ("bpfConnectTimeLoadBalancing", _S), ("bpfConnectTimeLoadBalancingEnabled", _B),
       ("bpfConntrackLogLevel", _S), ("bpfConntrackMode", _S), ("bpfConntrackTimeouts", _CT),
       ("bpfDSROptoutCIDRs", _SL), ("bpfDataIfacePattern", _S), ("bpfDisableGROForIfaces", _S),
       ("bpfDisableUnprivileged", _B), ("bpfEnforceRPF", _S), ("bpfExcludeCIDRsFromNAT", _SL),
       ("bpfExportBufferSizeMB", _I), ("bpfExtToServiceConnmark", _I),
       ("bpfExternalServiceMode", _S), ("bpfForceTrackPacketsFromIfaces", _SL),
       ("bpfHostConntrackBypass", _B), ("bpfHostNetworkedNATWithoutCTLB", _S),
       ("bpfIPFragTimeout", _D), ("bpfIPFragmentReassemblyEnabled", _B),
       ("bpfJITHardening", _S), ("bpfKubeProxyHealthzPort", _I),
       ("bpfKubeProxyIptablesCleanupEnabled", _B), ("bpfKubeProxyMinSyncPeriod", _D),
       ("bpfL3IfacePattern", _S), ("bpfLogFilters", map_of(string())), ("bpfLogLevel", _S),
       ("bpfMaglevMaxEndpointsPerService", _I), ("bpfMaglevMaxServices", _I),
       ("bpfMapSizeConntrack", _I), ("bpfMapSizeConntrackCleanupQueue", _I),
       ("bpfMapSizeConntrackScaling", _S), ("bpfMapSizeIPSets", _I), ("bpfMapSizeIfState", _I),
       ("bpfMapSizeNATAffinity", _I), ("bpfMapSizeNATBackend", _I),
       ("bpfMapSizeNATFrontend", _I), ("bpfMapSizePerCpuConntrack", _I),
       ("bpfMapSizeRoute", _I), ("bpfOverlayHostSourceIP", _S), ("bpfPSNATPorts", _IS),
       ("bpfPolicyDebugEnabled", _B), ("bpfProfiling", _S), ("bpfRedirectToPeer", _S),
       ("cgroupV2Path", _S)),
    _g("XDP", "XDP acceleration: tabby has none",
       ("xdpEnabled", _B, False), ("genericXDPEnabled", _B, False), ("xdpRefreshInterval", _D)),
    _g("VXLAN", "tabby sets VXLAN up from the pools' vxlanMode, on UDP 4789 with VNI 4096"
       " (IPv6: 6096)",
       ("vxlanEnabled", _B), ("vxlanPort", _I, 4789), ("vxlanVNI", _I, 4096)),
    _g("IP-in-IP", "tabby has no IP-in-IP (VXLAN does that job; pools asking for IPIP are"
       " refused where the kernel lacks it)", ("ipipEnabled", _B, False), ("ipipMTU", _I)),
    _g("WireGuard switches", "tabby has no WireGuard encryption: traffic would cross the"
       " network in clear; remove the field or set it to false",
       ("wireguardEnabled", _B, False), ("wireguardEnabledV6", _B, False),
       ("wireguardHostEncryptionEnabled", _B, False), status=Status.REJECTED),
    _g("WireGuard settings", "tabby has no WireGuard",
       ("wireguardInterfaceName", _S), ("wireguardInterfaceNameV6", _S),
       ("wireguardKeepAlive", _D), ("wireguardListeningPort", _I),
       ("wireguardListeningPortV6", _I), ("wireguardMTU", _I), ("wireguardMTUV6", _I),
       ("wireguardRoutingRulePriority", _I), ("wireguardThreadingEnabled", _B)),
    _g("Windows", "tabby runs on Linux nodes only", ("windowsManageFirewallRules", _S,
                                                     "Disabled")),
    _g("OpenStack and status reports", "OpenStack integration and Felix's status reports:"
       " tabby has none", ("endpointReportingEnabled", _B, False),
       ("endpointReportingDelay", _D), ("metadataAddr", _S), ("metadataPort", _I),
       ("openstackRegion", _S), ("reportingInterval", _D), ("reportingTTL", _D)),
    _g("Flow logs", "flow logs: tabby has none",
       ("flowLogsCollectorDebugTrace", _B), ("flowLogsFlushInterval", _D),
       ("flowLogsGoldmaneServer", _S), ("flowLogsLocalReporter", _S, "Disabled"),
       ("flowLogsPolicyEvaluationMode", _S)),
    _g("AWS", "tabby calls no cloud API", ("awsSrcDstCheck", _S, "DoNothing")),
    _g("Debugging", "Felix's debugging knobs",
       ("debugDisableLogDropping", _B), ("debugHost", _S), ("debugMemoryProfilePath", _S),
       ("debugPort", _I), ("debugSimulateCalcGraphHangAfter", _D),
       ("debugSimulateDataplaneApplyDelay", _D), ("debugSimulateDataplaneHangAfter", _D)),
    _g("Usage reporting", "tabby reports no usage",
       ("usageReportingEnabled", _B, False), ("usageReportingInitialDelay", _D),
       ("usageReportingInterval", _D)),
    _g("Node selection", "tabby reads FelixConfiguration 'default' and 'node.<node name>'"
       " only; selecting nodes by label is not implemented", ("nodeSelector", _S),
       status=Status.REJECTED),
)


def schemas() -> dict[str, Schema]:
    """Every listed field's schema (for the CRD and for type checks), by name."""
    return {f.name: f.schema for g in GROUPS for f in g.fields}


def notes() -> tuple[FieldNote, ...]:
    return tuple(FieldNote(f"spec.{f.name}", g.status, g.reason, f.as_if)
                 for g in GROUPS for f in g.fields)


def accepted_schemas() -> Mapping[str, Schema]:
    """The fields a FelixConfiguration may carry besides the typed ones: every listed field
    but those rejected outright (a rejected one with an as_if value keeps it as an enum)."""
    out: dict[str, Schema] = {}
    for g in GROUPS:
        for f in g.fields:
            described = {"description": f"Calico's Felix: {g.title}.", **f.schema}
            if g.status is Status.IGNORED:
                out[f.name] = described
            elif f.as_if is not UNSET:
                out[f.name] = {**described, "enum": [f.as_if]}
    return out
