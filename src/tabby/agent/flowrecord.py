"""A flow record, its JSON form, and the filters ``tabby flows`` and ``/flows`` share.

One ``FlowRecord`` is what one node saw of one 5-tuple, decided by one rule,
in one aggregation interval: the endpoint's direction (egress: the source is
the node's endpoint; ingress: the destination), the verdict and the rule that
gave it (``tabby.policy.flowids``), packets and bytes (for an allowed
connection from conntrack when it ends; for denied packets, those the log
recorded), and the time of the first and last packet.

``FlowFilter`` is parsed once (``from_args`` for the CLI, ``from_query`` for the
agent's ``/flows?...``, one grammar) and applied by ``matches`` on both sides,
so the agent can filter before sending and the CLI after merging with the
same meaning. Bad syntax is a ``ConfigError`` naming the filter.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tabby.errors import ConfigError

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp", 136: "udplite"}
PROTOCOL_NUMBERS = {v: k for k, v in PROTOCOLS.items()}
VERDICTS = ("allow", "deny", "pass")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)?$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


@dataclass(frozen=True, slots=True)
class FlowRecord:
    node: str
    start: float  # epoch seconds
    end: float
    family: int
    src: str  # address
    dst: str
    protocol: int
    sport: int | None
    dport: int | None
    direction: str  # ingress | egress: the endpoint's side
    verdict: str  # allow | deny | pass
    reason: str  # allow | deny | pass | tier-deny | no-policy (tabby.policy.flowids)
    flow_id: str
    src_ep: str = ""  # "namespace/pod" when the address is a known endpoint
    dst_ep: str = ""
    policy_kind: str = ""
    policy_namespace: str = ""
    policy_name: str = ""
    tier: str = ""
    rule: int | None = None
    peer: int | None = None
    packets: int = 0
    bytes: int = 0
    state: str = "denied"  # denied | open | ended
    # hook (staged policies, tabby.agent.staged): what they would decide, as JSON text
    staged: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "node": self.node, "start": iso(self.start), "end": iso(self.end),
            "family": f"ipv{self.family}",
            "source": self.src_ep or self.src, "sourceAddress": self.src,
            "sourcePort": self.sport,
            "destination": self.dst_ep or self.dst, "destinationAddress": self.dst,
            "protocol": PROTOCOLS.get(self.protocol, str(self.protocol)), "port": self.dport,
            "direction": self.direction, "verdict": self.verdict, "reason": self.reason,
            "rule": self.rule, "packets": self.packets, "bytes": self.bytes,
            "state": self.state, "flowId": self.flow_id}
        if self.policy_kind:
            policy = {"kind": self.policy_kind, "name": self.policy_name, "tier": self.tier}
            if self.policy_namespace:
                policy["namespace"] = self.policy_namespace
            out["policy"] = policy
        if self.tier:
            out["tier"] = self.tier
        if self.peer is not None:
            out["peer"] = self.peer
        if self.staged:  # hook: staged policies (tabby.agent.staged)
            out["staged"] = json.loads(self.staged)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FlowRecord:
        """The inverse of ``to_json`` (the CLI reads agents' answers back)."""
        policy = d.get("policy") or {}
        proto = str(d.get("protocol", ""))
        return cls(
            node=str(d.get("node", "")), start=parse_time(d["start"]),
            end=parse_time(d["end"]), family=int(str(d.get("family", "ipv4"))[-1]),
            src=str(d["sourceAddress"]), dst=str(d["destinationAddress"]),
            protocol=PROTOCOL_NUMBERS.get(proto) or int(proto or 0),
            sport=d.get("sourcePort"), dport=d.get("port"), direction=str(d["direction"]),
            verdict=str(d["verdict"]), reason=str(d.get("reason", d["verdict"])),
            flow_id=str(d.get("flowId", "")),
            src_ep=str(d["source"]) if d["source"] != d["sourceAddress"] else "",
            dst_ep=str(d["destination"]) if d["destination"] != d["destinationAddress"] else "",
            policy_kind=str(policy.get("kind", "")),
            policy_namespace=str(policy.get("namespace", "")),
            policy_name=str(policy.get("name", "")), tier=str(d.get("tier", "")),
            rule=d.get("rule"), peer=d.get("peer"), packets=int(d.get("packets", 0)),
            bytes=int(d.get("bytes", 0)), state=str(d.get("state", "")),
            staged=json.dumps(d["staged"], sort_keys=True) if d.get("staged") else "")


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def parse_time(text: Any) -> float:
    return dt.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()


def parse_duration(text: str, what: str = "--since") -> float:
    """``90``, ``30s``, ``5m``, ``2h``, ``1d`` -> seconds; ConfigError otherwise."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"{what} {text!r}: expected a duration such as 30s, 5m, 2h or 1d")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True, slots=True)
class FlowFilter:
    namespace: str = ""  # either side's endpoint is in it
    pod: str = ""  # "pod" (within namespace, or any) or "ns/pod"; either side
    policy: str = ""  # "name" or "namespace/name"
    verdict: str = ""  # allow | deny | pass
    port: int | None = None  # destination port
    since: float = 0.0  # epoch seconds: records that ended at or after it
    limit: int = 1000
    extra: Mapping[str, str] = field(default_factory=dict)

    def matches(self, r: FlowRecord) -> bool:
        if r.end < self.since:
            return False
        if self.verdict and r.verdict != self.verdict:
            return False
        if self.port is not None and r.dport != self.port:
            return False
        eps = [e for e in (r.src_ep, r.dst_ep) if e]
        if self.namespace and not any(e.split("/", 1)[0] == self.namespace for e in eps):
            return False
        if self.pod and not any(_pod_matches(self.pod, self.namespace, e) for e in eps):
            return False
        if self.policy:
            ns, _, name = self.policy.rpartition("/")
            if r.policy_name != name or (ns and r.policy_namespace != ns):
                return False
        return True

    def to_query(self) -> dict[str, str]:
        out = {"since": f"{self.since:.3f}", "limit": str(self.limit)}
        for key in ("namespace", "pod", "policy", "verdict"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.port is not None:
            out["port"] = str(self.port)
        return out

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> FlowFilter:
        """The agent's ``/flows`` parameters (``since`` in epoch seconds)."""
        unknown = set(query) - {"namespace", "pod", "policy", "verdict", "port", "since",
                                "limit"}
        if unknown:
            raise ConfigError(f"/flows: unknown parameter(s) {', '.join(sorted(unknown))}")
        since = query.get("since", "0")
        try:
            since_value = float(since)
        except ValueError:
            raise ConfigError(f"/flows: since={since!r}: expected epoch seconds") from None
        return make_filter(namespace=query.get("namespace", ""), pod=query.get("pod", ""),
                           policy=query.get("policy", ""), verdict=query.get("verdict", ""),
                           port=query.get("port"), since=since_value,
                           limit=query.get("limit", "1000"))


def make_filter(*, namespace: str = "", pod: str = "", policy: str = "", verdict: str = "",
                port: str | int | None = None, since: float = 0.0,
                limit: str | int = 1000) -> FlowFilter:
    """A checked filter: each bad value is a ConfigError naming its flag."""
    if verdict and verdict not in VERDICTS:
        raise ConfigError(f"--verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    port_value = None
    if port is not None and str(port) != "":
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--port {port!r}: expected a port number 1..65535")
        port_value = int(port)
    if not str(limit).isdigit() or int(limit) < 1:
        raise ConfigError(f"--limit {limit!r}: expected a positive number")
    for flag, value in (("--namespace", namespace), ("--pod", pod), ("--policy", policy)):
        if value and (value.count("/") > (0 if flag == "--namespace" else 1)
                      or value.startswith("/") or value.endswith("/") or " " in value):
            raise ConfigError(f"{flag} {value!r}: expected NAME"
                              + ("" if flag == "--namespace" else " or NAMESPACE/NAME"))
    return FlowFilter(namespace, pod, policy, verdict, port_value, since, int(limit))


def _pod_matches(pod: str, namespace: str, ep: str) -> bool:
    ns, _, name = ep.partition("/")
    want_ns, _, want = pod.rpartition("/")
    want_ns = want_ns or namespace
    return name == want and (not want_ns or ns == want_ns)
