"""How people name kinds on the command line: kubectl's forms plus calicoctl's short names.

``resolve(text)`` takes what ``tabby.model.resolve_kind`` takes (``ippool``,
``pods``, ``networkpolicy.tabby.dev``) and, first, every name calicoctl gives a
kind (``ipp``, ``pol``, ``gnps``, ``bgpp``, ``netsets``, ...). Those names live
in ``CALICOCTL_NAMES``, one line per kind: a new kind registers once, there.
They come from calicoctl's ``resourcemgr/*.go`` (each ``registerResource`` call);
where calicoctl's name would shadow Kubernetes' own (``networkpolicy``, ``node``)
the bare name stays Kubernetes', as DESIGN.md says, and the group selects tabby's.

``targets(words)`` reads kubectl's positional forms: ``KIND[,KIND...] [NAME...]``
or ``KIND/NAME [KIND/NAME...]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tabby.cli.usage import UsageError
from tabby.model import Resource, resolve_kind
from tabby.model.base import TABBY_GROUP

# Kind (tabby.dev group) -> calicoctl's names for it, beyond the kind and plural
# themselves (which tabby.model.resolve_kind already knows).
CALICOCTL_NAMES: dict[str, tuple[str, ...]] = {
    "BGPConfiguration": ("bgpconfig", "bgpconfigs"),
    "BGPFilter": ("bgpf", "bgpfs", "bf", "bfs"),
    "BGPPeer": ("bgpp", "bgpps", "bp", "bps"),
    "FelixConfiguration": ("felixconfig", "felixconfigs"),
    "GlobalNetworkPolicy": ("gnp", "gnps"),
    "GlobalNetworkSet": ("gnetsets",),
    "HostEndpoint": ("hep", "heps"),
    "IPAMConfiguration": ("ipamconfig", "ipamconfigs"),
    "IPPool": ("ipp", "ipps", "pool", "pools"),
    "IPReservation": ("reservation", "reservations"),
    "NetworkPolicy": ("policy", "policies", "pol", "pols", "np"),
    "NetworkSet": ("netsets",),
    "Node": ("nos",),
    "Tier": (),
    "WorkloadEndpoint": ("wep", "weps"),
    "StagedNetworkPolicy": ("stagedpolicy", "stagedpolicies", "snp", "spol", "spols"),
    "StagedGlobalNetworkPolicy": ("sgnp", "sgnps"),
}


def _by_short_name() -> dict[str, type[Resource]]:
    from tabby.model import all_kinds
    tabby_kinds = {c.KIND.kind: c for c in all_kinds() if c.KIND.group == TABBY_GROUP}
    out: dict[str, type[Resource]] = {}
    for kind, names in CALICOCTL_NAMES.items():
        cls = tabby_kinds.get(kind)
        if cls is None:
            continue  # not modelled (yet)
        for name in names:
            out[name] = cls
    return out


def resolve(text: str) -> type[Resource]:
    """The kind ``text`` names; ValidationError (exit 1) naming the known kinds if none."""
    if not text:
        raise UsageError("a resource type is required (e.g. ippools, pods, gnp)")
    lowered = text.lower()
    base, _, group = lowered.partition(".")
    if not group or group in (TABBY_GROUP, "projectcalico.org"):
        cls = _by_short_name().get(base)
        if cls is not None:
            return cls
    return resolve_kind(text)


def display(cls: type[Resource], name: str) -> str:
    """kubectl's ``kind.group/name`` (``pod/x``, ``ippool.tabby.dev/pool-a``)."""
    info = cls.KIND
    group = f".{info.group}" if info.group else ""
    return f"{info.kind.lower()}{group}/{name}"


@dataclass(frozen=True, slots=True)
class Target:
    """One kind and the names asked for (none: every object of the kind)."""

    cls: type[Resource]
    names: tuple[str, ...] = ()


def targets(words: list[str]) -> list[Target]:
    """kubectl's positional forms; UsageError when they are mixed or empty."""
    if not words:
        raise UsageError("name a resource type (e.g. tabby get ippools), or KIND/NAME")
    if any("/" in w for w in words):
        out: list[Target] = []
        for word in words:
            kind, sep, name = word.partition("/")
            if not sep or not kind or not name or "/" in name:
                raise UsageError(f"{word!r}: there is no need to give a resource type as a"
                                 " separate argument when passing KIND/NAME; write every"
                                 " argument as KIND/NAME")
            if "," in kind:
                raise UsageError(f"{word!r}: KIND/NAME takes one kind, not a list")
            cls = resolve(kind)
            if out and out[-1].cls is cls:
                out[-1] = Target(cls, (*out[-1].names, name))
            else:
                out.append(Target(cls, (name,)))
        return out
    kinds = [k for k in words[0].split(",")]
    if any(not k for k in kinds):
        raise UsageError(f"{words[0]!r}: an empty kind in the list (write a,b without spaces"
                         " or empty entries)")
    names = tuple(words[1:])
    seen: list[type[Resource]] = []
    for k in kinds:
        cls = resolve(k)
        if cls not in seen:
            seen.append(cls)
    return [Target(cls, names) for cls in seen]
