"""bird.conf from a ``BirdConfig``: the one renderer of BIRD's language.

    render_bird_conf(snapshot, node) -> str      = render(desired_bird(snapshot, node))

The text is a pure function of its input (sorted, no timestamps), so equal
inputs give byte-equal files: the controller reloads BIRD only when the text
changes, and golden tests compare it whole. Its shape::

    router id, logging, graceful restart wait
    protocol device; protocol direct         connected subnets: next hops resolve
    filter tabby_kernelN; protocol kernel    BGP routes in pools -> kernel (proto bird);
                                             learn (the default route), persist,
                                             graceful restart, merge paths (ECMP)
    protocol static tabby_originN            blackholes: blocks, borrowed /32 /128,
                                             service ranges (never into the kernel)
    filter tabby_exportN (tabby_reflectN)    what peers get: our origins (+ routes
                                             reflected to clients on a route reflector)
    function 'bgp_<filter>_...FilterVN'      BGPFilters the peers name (tabby.bgp.filters)
    protocol bfd tabby_bfd                   when a session runs BFD
    template bgp tabby_bgp; protocol bgp ... one per peer; names say the kind:
                                             Mesh_, Global_, Node_ + address; peers
                                             with BGPFilters get inline filters

Graceful restart: every session announces it (``graceful restart on``,
restart time 120 s unless the peer sets ``maxRestartTime``), so peers keep
our routes while BIRD restarts; the kernel protocol keeps its routes when
BIRD stops (``persist``) and, when BIRD is started with ``-R``, prunes stale
ones only after the sessions have come back (``graceful restart``), at most
``graceful restart wait`` seconds later.
"""

from __future__ import annotations

from collections.abc import Iterable

from tabby.bgp import filters
from tabby.calc.bird import BirdConfig, Origin, Peer, desired_bird
from tabby.model.bgpfields import Community
from tabby.snapshot import Snapshot

GR_WAIT = 20  # seconds a restarted BIRD waits for its sessions before syncing the kernel
SCAN_TIME = 10  # seconds between interface scans (changes arrive by netlink anyway)
KERNEL_SCAN_TIME = 5  # kernel table scans: learned routes, and the sync after a recovery
LOG_CLASSES = {
    "Debug": "all",
    "Info": "{ info, remote, warning, error, auth, fatal, bug }",
    "Warning": "{ warning, error, auth, fatal, bug }",
    "Error": "{ error, auth, fatal, bug }",
    "Fatal": "{ fatal, bug }",
}
DEBUG = {"Debug": "all", "Info": "{ states }"}  # other levels: debug off

__all__ = ["render", "render_bird_conf"]


def render_bird_conf(snapshot: Snapshot, node: str) -> str:
    return render(desired_bird(snapshot, node))


def render(c: BirdConfig) -> str:
    lines = [f"# BIRD 2 configuration of node {c.node}, written by tabby; do not edit.", ""]
    if c.notes:
        lines += [*(f"# note: {n}" for n in c.notes), ""]
    lines += [f"router id {c.router_id};",
              f"log stderr {LOG_CLASSES[c.log_severity]};",
              f"debug protocols {DEBUG.get(c.log_severity, 'off')};",
              f"graceful restart wait {GR_WAIT};",
              "timeformat protocol iso long;", ""]
    lines += _interfaces(c)
    for v in c.families:
        lines += _kernel(c, v)
        lines += _statics(c, v)
        lines += _exports(c, v)
        lines += filters.functions(c, v)
    if any(p.bfd is not None for p in c.peers):
        lines += ["# BFD: sessions with bfd set ask it to watch their neighbours.",
                  "protocol bfd tabby_bfd {", "}", ""]
    if c.peers:
        lines += _template(c)
    for peer in c.peers:
        lines += _peer(c, peer)
    return "\n".join(lines).rstrip("\n") + "\n"


def _interfaces(c: BirdConfig) -> list[str]:
    lines = ["# Interfaces and connected subnets: BGP next hops resolve through them.",
             "protocol device {", f"  scan time {SCAN_TIME};", "}", ""]
    if c.families:
        lines += ["protocol direct {", *(f"  ipv{v};" for v in c.families),
                  '  interface -"tab*", "*";  # pods\' veths carry no addresses', "}", ""]
    return lines


def _kernel(c: BirdConfig, v: int) -> list[str]:
    pools = [p for p in c.kernel_pools if p.version == v]
    lines = [f"# IPv{v} routes learned over BGP within the pools go into the kernel"
             " (proto bird);", "# kernel routes are learned for next-hop resolution."]
    if pools:
        lines += [f"filter tabby_kernel{v} {{",
                  f"  if source = RTS_BGP && net ~ [ {_prefix_set(pools)} ] then accept;",
                  "  reject;", "}"]
        export = f"export filter tabby_kernel{v};"
    else:
        export = "export none;  # no pool of this family"
    return [*lines, f"protocol kernel kernel{v} {{",
            f"  ipv{v} {{", "    import all;", f"    {export}", "  };",
            "  learn;", "  persist;", "  graceful restart on;", "  merge paths on;",
            f"  scan time {KERNEL_SCAN_TIME};", "}", ""]


def _statics(c: BirdConfig, v: int) -> list[str]:
    origins = [o for o in c.origins if o.net.version == v]
    lines = [f"# What this node originates over IPv{v} (blackholes: BIRD never puts them in"
             " the kernel).", f"protocol static tabby_origin{v} {{", f"  ipv{v};"]
    lines += [f"  route {o.net} blackhole;  # {o.why}" for o in origins]
    return [*lines, "}", ""]


def _exports(c: BirdConfig, v: int) -> list[str]:
    tagged = [o for o in c.origins if o.net.version == v and o.communities]
    lines = [f"function tabby_tag{v}() {{"]
    lines += [f"  if net = {o.net} then {{ {_community_adds(o)} }}" for o in tagged]
    lines += ["}", f"filter tabby_export{v} {{",
              f'  if proto = "tabby_origin{v}" then {{ tabby_tag{v}(); accept; }}',
              "  reject;", "}"]
    pools = [p for p in c.kernel_pools if p.version == v]
    if c.cluster_id is not None and pools:
        lines += ["# As a route reflector: our origins, and pool routes learned from peers.",
                  f"filter tabby_reflect{v} {{",
                  f'  if proto = "tabby_origin{v}" then {{ tabby_tag{v}(); accept; }}',
                  f"  if source = RTS_BGP && net ~ [ {_prefix_set(pools)} ] then accept;",
                  "  reject;", "}"]
    return [*lines, ""]


def _community_adds(o: Origin) -> str:
    return " ".join(_community_add(x) for x in o.communities)


def _community_add(x: Community) -> str:
    attr = "bgp_large_community" if x.large else "bgp_community"
    return f"{attr}.add(({', '.join(str(p) for p in x.parts)}));"


def _template(c: BirdConfig) -> list[str]:
    port = f" port {c.listen_port}" if c.listen_port != 179 else ""
    return ["# Every session: graceful restart, quick (re)connects.",
            "template bgp tabby_bgp {",
            f"  local{port} as {c.as_number};",
            "  graceful restart on;",
            "  connect delay time 1;",
            "  connect retry time 2;",
            "  error wait time 1,5;",
            "}", ""]


def _peer(c: BirdConfig, p: Peer) -> list[str]:
    port = f" port {p.port}" if p.port is not None else ""
    lines = [f"# {p.type}: {p.address} (from {p.source})",
             f"protocol bgp {p.name} from tabby_bgp {{",
             f'  description "{p.type}";',
             f"  neighbor {p.address}{port} as {p.as_number};"]
    if p.local_address is not None:
        lines.append(f"  source address {p.local_address};")
    lines.append("  direct;" if p.direct else "  multihop;")
    if p.rr_client and c.cluster_id is not None:
        lines += ["  rr client;", f"  rr cluster id {c.cluster_id};"]
    if p.password:
        lines.append(f'  password "{p.password}";')
    if p.restart_time is not None:
        lines.append(f"  graceful restart time {p.restart_time};")
    if p.allow_local_as:
        lines.append(f"  allow local as {p.allow_local_as};")
    if p.bfd is not None:
        lines.append(f"  bfd {{ min rx interval {p.bfd.min_rx_ms} ms; min tx interval"
                     f" {p.bfd.min_tx_ms} ms; multiplier {p.bfd.multiplier}; }};")
    if p.disabled:
        lines.append(f"  disabled;  # {p.disabled}")
    reflect = c.cluster_id is not None and p.as_number == c.as_number and any(
        k.version == p.version for k in c.kernel_pools)
    lines += [f"  ipv{p.version} {{", *_peer_filters(c, p, reflect), "    gateway recursive;"]
    if p.keep_next_hop:
        lines.append("    next hop keep;")
    return [*lines, "  };", "}", ""]


def _peer_filters(c: BirdConfig, p: Peer, reflect: bool) -> list[str]:
    v = p.version
    if not p.filters:
        export = f"tabby_reflect{v}" if reflect else f"tabby_export{v}"
        return ["    import all;", f"    export filter {export};"]
    defaults = [f'if proto = "tabby_origin{v}" then accept;']
    if reflect:
        pools = [k for k in c.kernel_pools if k.version == v]
        defaults.append(f"if source = RTS_BGP && net ~ [ {_prefix_set(pools)} ] then accept;")
    return ["    import filter {", *(f"      {x}" for x in filters.import_lines(c, p)), "    };",
            "    export filter {",
            *(f"      {x}" for x in filters.export_lines(c, p, f"tabby_tag{v}", defaults)),
            "    };"]


def _prefix_set(nets: Iterable[object]) -> str:
    return ", ".join(f"{n}+" for n in nets)
