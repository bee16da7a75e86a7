"""Network policy: Kubernetes NetworkPolicy and tabby's (Calico's) policies.

::

    model objects --convert--> Policy --compile--> CompiledPolicy (IR rules, tabby.policy.ir)
    snapshot --program--> PolicyProgram: LabelIndex (entities, selectors as bitmasks),
                          SetBook (set members), per endpoint and stage the policy order
                              |                               |
               nftables.render_program (render.py)     explain.explain
               the node's part of ``inet tabby``       verdict + deciding policy and rule

The compiler and ``explain`` read the same IR rules, the same set members and
the same per-endpoint policy order: ``explain`` is an evaluator of what the
kernel is given, not a second implementation.

Public API (stable; the conformance suite, the lab and the benchmarks use it):

- ``tabby.policy.nftables.PolicyRules(node).part(snapshot) -> Ruleset``: the policy
  part of the node's table, pass after pass (the node calculator holds one; its
  memos are its own state); ``desired_policy(snapshot, node)`` and
  ``render_program(program)`` compute afresh; ``tabby.policy.builder.policy_chain_name``;
- ``tabby.policy.program.ProgramBuilder().build(snapshot, node | None)`` (long-lived)
  and ``build_program(snapshot, node | None) -> PolicyProgram`` (one-off);
- ``tabby.policy.explain.explain(program, source, destination, protocol, port, *,
  family=None, source_port=None, icmp=None) -> Explanation`` (``.verdict``,
  ``.egress`` / ``.ingress`` Decisions, ``.to_dict()`` = ``tabby policy explain -o json``),
  ``find_pod(program, ns, pod)``, ``evaluate(program, entity, direction, packet)``;
- ``tabby.policy.synthetic``: ``cluster(policies, endpoints, nodes)``, ``with_pod``,
  ``with_policy``, ``snapshot_of``, ``from_yaml``, ``pod_endpoint`` (test and bench data).

Readings of Calico where the brief left a choice:

- Tiers as Calico's (``tabby.policy.tiers``; the built-ins in
  ``tabby.model.tier.BUILTIN_TIERS``): tiers in order, ``Pass`` ends the tier and
  goes on to the next, a tier that decided nothing ends in its defaultAction.
  Past the last tier, the endpoint's profile. A pod's profile is its
  namespace's, which allows: a pass out of the last tier = allowed (but not by
  any later policy). Host endpoints have no profile unless they list
  ``projectcalico-default-allow``: a pass out of the last tier = denied; with
  that profile, no end-of-tier deny either (as before tiers).
- Kubernetes policies are in tier ``default`` at order 1000; policies without
  ``order`` come last in their tier; ties by kind and name (``gnp/...`` <
  ``knp/...`` < ``np/...``).
- Traffic from a pod to its own node goes through the pod's egress policy and is then
  allowed (Calico's DefaultEndpointToHostAction=Accept); it never meets host
  endpoint policy. Node to pod goes through the pod's ingress policy.
- Failsafe ports come from a ``FelixConfiguration`` resource (``default``, then
  ``node.<name>``), fields ``failsafeInboundHostPorts`` / ``failsafeOutboundHostPorts``;
  absent: Calico's defaults.
- Host endpoints: forwarded traffic meets only ``applyOnForward`` policies (none:
  open); preDNAT and doNotTrack policies have no default deny (no match: go on);
  ``interfaceName: '*'`` is refused. Replies of allowed connections pass
  (conntrack); untracked traffic is accepted by the filter chains like Calico.
- ICMPv6 neighbour discovery and MLD always pass (link-local ones even through
  anti-spoofing), or IPv6 would die under a default deny.
- Marks: bits 0x10000 (allow) and 0x20000 (pass) of the packet mark, cleared before
  and after use (the pass bit also at the start of each tier); no other feature may
  use them.
"""
