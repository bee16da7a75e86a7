"""Ownership marks: how tabby recognises, in a shared kernel, what is its own.

Every reconciler adopts and sweeps only what carries one of these marks, and
leaves everything else alone (another agent's routes, a user's nft table, a
veth the runtime made). They are the contract between a running agent and the
next one (which adopts the state in place), so changing one is a migration.

- Interfaces: host-side pod veths are ``tab`` + 12 hex digits (a hash of the
  container and interface), VXLAN devices have fixed names.
- Routes: kernel route protocol 77 (``ip route show proto 77``).
- nftables: everything lives in the ``inet tabby`` table.
- Packet marks: bits 0x10000 (policy allow) and 0x20000 (policy pass) are
  set and cleared inside the table; bit 0x4000 (kube-proxy's) asks for
  masquerade.
- nft comments and log prefixes name the object that made a rule.
- IPAM handles: ``vxlan-tunnel-addr-<node>`` (``vxlan-v6-...``) for VTEPs.
"""

from __future__ import annotations

import re

# -- interfaces -------------------------------------------------------------------------
VETH_PREFIX = "tab"
HOST_VETH = re.compile(rf"^{VETH_PREFIX}[0-9a-f]{{12}}$")
VETH_GLOB = f"{VETH_PREFIX}*"  # an nft interface wildcard matching every pod veth
HOST_MAC = "ee:ee:ee:ee:ee:ee"  # the host side of every pod veth (Calico's)
VXLAN_DEVICES = {4: "vxlan.tabby", 6: "vxlan-v6.tabby"}

# -- routes -------------------------------------------------------------------------------
ROUTE_PROTOCOL = 77

# -- nftables -----------------------------------------------------------------------------
NFT_TABLE = "tabby"
NFT_FAMILY = "inet"

# -- packet marks -------------------------------------------------------------------------
MARK_ALLOW = 0x10000
MARK_PASS = 0x20000
MARK_POLICY = MARK_ALLOW | MARK_PASS
MARK_MASQ = 0x4000


def policy_log_prefix(policy_key: str, direction: str, index: int) -> str:
    """The nft ``log prefix`` of a policy rule with ``action: Log``."""
    return f"tabby {policy_key} {direction} {index}: "


def policy_rule_comment(display: str, direction: str, index: int, peer: int | None) -> str:
    """The nft comment of a rendered policy rule: which policy, which rule of it."""
    suffix = f" peer {peer}" if peer is not None else ""
    return f"{display} {direction} rule {index}{suffix}"


# -- IPAM handles -------------------------------------------------------------------------
def tunnel_handle(node: str, version: int) -> str:
    """The IPAM handle holding ``node``'s VXLAN tunnel address of that family."""
    return f"vxlan-tunnel-addr-{node}" if version == 4 else f"vxlan-v6-tunnel-addr-{node}"
