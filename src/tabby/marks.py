"""Ownership marks: how tabby recognises, in a shared kernel, what is its own.

Every reconciler adopts and sweeps only what carries one of these marks, and
leaves everything else alone (another agent's routes, a user's nft table, a
veth the runtime made). They are the contract between a running agent and the
next one (which adopts the state in place), so changing one is a migration.

- Interfaces: host-side pod veths are ``tab`` + 12 hex digits (a hash of the
  container and interface), VXLAN devices have fixed names; pod veths waiting
  to be deleted are in link group ``RETIRED_GROUP``.
- Routes: kernel route protocol 77 (``ip route show proto 77``).
- nftables: everything lives in the ``inet tabby`` table.
- Packet marks: bits 0x10000 (policy allow) and 0x20000 (policy pass) are
  set and cleared inside the table, as is 0x40000 (flow log: within the log's rate
  limit); bit 0x4000 (kube-proxy's) asks for
  masquerade.
- nft comments and log prefixes name the object that made a rule; flow log rules
  send to NFLOG group ``FLOWLOG_GROUP`` with prefix ``tf:<flow id>``; policy rules
  count into the named counter ``pc-<flow id>``.
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
# Pod veths a CNI DEL has taken down, waiting to be deleted: every link in this group
# is tabby's to delete (in one request, one kernel RCU wait for the lot), also after a
# restart (tabby.dataplane.reaper).
RETIRED_GROUP = 0x7AB1

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
# Set on a packet the flow log's rate limit let through (tabby.policy.flowlog): the log
# rules of the policy chains only fire on packets that carry it; cleared again before
# the packet leaves the hook chain.
MARK_FLOWLOG = 0x40000

# -- flow logs ----------------------------------------------------------------------------
FLOWLOG_GROUP = 7  # the NFLOG group of the policy log rules (nft ``log group``)
FLOW_PREFIX = "tf:"  # NFLOG prefix of a flow log rule: FLOW_PREFIX + the rule's flow id
FLOW_ID_LEN = 10  # hex digits of a flow id (tabby.policy.flowids)


def policy_log_prefix(policy_key: str, direction: str, index: int) -> str:
    """The nft ``log prefix`` of a policy rule with ``action: Log``."""
    return f"tabby {policy_key} {direction} {index}: "


def policy_rule_comment(display: str, direction: str, index: int, peer: int | None) -> str:
    """The nft comment of a rendered policy rule: which policy, which rule of it."""
    suffix = f" peer {peer}" if peer is not None else ""
    return f"{display} {direction} rule {index}{suffix}"


def flow_log_prefix(flow_id: str) -> str:
    """The NFLOG prefix of the flow log rule for ``flow_id`` (``tf:1a2b3c4d5e``)."""
    return FLOW_PREFIX + flow_id


# Per-rule counters: every policy rule with a verdict counts into the named counter
# ``pc-<flow id>`` (tabby.policy.flowids names what the id means).
POLICY_COUNTER_PREFIX = "pc-"


def policy_counter_name(flow_id: str) -> str:
    """The nft named counter of the policy rule with ``flow_id``."""
    return POLICY_COUNTER_PREFIX + flow_id


def flow_id_of_counter(name: str) -> str | None:
    """The flow id a named counter counts for, or None if it is not a policy counter."""
    if not name.startswith(POLICY_COUNTER_PREFIX):
        return None
    got = name[len(POLICY_COUNTER_PREFIX):]
    return got if len(got) == FLOW_ID_LEN else None


def flow_id_of_prefix(prefix: str) -> str | None:
    """The flow id an NFLOG prefix names, or None if it is not a flow log rule's."""
    if not prefix.startswith(FLOW_PREFIX):
        return None
    got = prefix[len(FLOW_PREFIX):]
    return got if len(got) == FLOW_ID_LEN else None


# -- IPAM handles -------------------------------------------------------------------------
def tunnel_handle(node: str, version: int) -> str:
    """The IPAM handle holding ``node``'s VXLAN tunnel address of that family."""
    return f"vxlan-tunnel-addr-{node}" if version == 4 else f"vxlan-v6-tunnel-addr-{node}"
