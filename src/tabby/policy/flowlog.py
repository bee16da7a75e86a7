"""The flow log's nft rules: log statements, the rate-limit gate, "no policy" rules.

When flow logging is on (a ``FlowLog``), the policy part of the table logs to
NFLOG (group ``FlowLog.group``, prefix ``tf:<flow id>``, ``tabby.policy.flowids``)::

    pol-fwd / pol-in / pol-out   (only a connection's first packets get here:
      ct state established,related,untracked return      the established return first)
      ...
      jump pol-flowlog           clear the log bit; within the rate: set it, return;
                                 over it: counted ("flow log: over the rate limit")
      iifname @pol-fl-open-e  <log "no policy" egress>    pods no egress policy selects
      oifname @pol-fl-open-i  <log "no policy" ingress>   pods no ingress policy selects
      ... the endpoint maps: in policy chains, before each Allow / Deny / Pass rule the
          same matches with <log that rule's id>; before an end-of-tier drop <log the
          tier end>
      <clear the log bit>

    <log ID> = meta mark & 0x40000 != 0 log group G prefix "tf:ID"

Only packets the gate let through carry the bit, so the kernel sends at most
``rate`` records a second (``burst`` at once) however many packets are denied;
the rest pass through policy as before, counted by the gate's counter. Allowed
connections are logged on their first packet (later ones return as
established before the gate); denied packets each time (each is a new
connection's first).
"""

from __future__ import annotations

from tabby.marks import MARK_FLOWLOG, flow_log_prefix
from tabby.nft.model import Chain, Rule
from tabby.policy.flowids import FlowLog, no_policy_id

GATE_CHAIN = "pol-flowlog"
OVER_COMMENT = "flow log: over the rate limit, not logged"
OPEN_SETS = {"ingress": "pol-fl-open-i", "egress": "pol-fl-open-e"}
GATE = f"meta mark & {MARK_FLOWLOG:#x} != 0"
UNMARK = Rule(f"meta mark set meta mark & {0xFFFFFFFF & ~MARK_FLOWLOG:#010x}",
              "flow log: clear the log bit")


def statement(fl: FlowLog, fid: str) -> str:
    """The gated log statement of flow id ``fid`` (no verdict: evaluation goes on)."""
    return f'{GATE} log group {fl.group} prefix "{flow_log_prefix(fid)}"'


def gate_chain(fl: FlowLog) -> Chain:
    """One node-wide token bucket: every hook chain jumps here, so one rule's limit."""
    return Chain(GATE_CHAIN, (
        UNMARK,
        Rule(f"limit rate {fl.rate}/second burst {fl.burst} packets"
             f" meta mark set meta mark | {MARK_FLOWLOG:#x} return",
             "flow log: within its rate limit"),
        Rule("counter", OVER_COMMENT)))


def head_rules(fl: FlowLog | None, directions: tuple[str, ...]) -> tuple[Rule, ...]:
    """What a hook chain runs before its endpoint maps: the gate, then "no policy"
    logging for pods no policy selects in ``directions`` (egress: from the pod's
    interface; ingress: to it)."""
    if fl is None:
        return ()
    rules = [Rule(f"jump {GATE_CHAIN}", "flow log: rate limit")]
    for direction in directions:
        word = "iifname" if direction == "egress" else "oifname"
        rules.append(Rule(f"{word} @{OPEN_SETS[direction]} "
                          f"{statement(fl, no_policy_id(direction))}",
                          f"flow log: no policy selects the pod for {direction}"))
    return tuple(rules)


def tail_rules(fl: FlowLog | None) -> tuple[Rule, ...]:
    return () if fl is None else (UNMARK,)
