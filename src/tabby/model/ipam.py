"""IPAM's own records (internal kinds, shaped like Calico's).

- IPAMBlock: one block of a pool (``/26`` by default). ``allocations[i]`` is
  the index into ``attributes`` of the allocation owning ordinal ``i`` (or
  None); ``unallocated`` lists free ordinals in the order they are handed out
  (released ones go to the back, so an address is not reused at once);
  ``affinity`` is ``host:<node>`` for the node that claimed it.
- BlockAffinity: ``<node>-<block>``: node N has claimed block B. Written
  ``pending`` before the block is created and ``confirmed`` after, so a crash
  between the two is visible and repairable.
- IPAMHandle: one allocation owner (``<container id>.<interface>``) and how
  many addresses it holds in which block: release by handle needs no scan.
- IPAMConfiguration ``default``: strictAffinity, maxBlocksPerHost.

The IPAM engine (``tabby.ipam``) owns all writes; these are its data.

Names (``block_name``, ``affinity_name``, ``handle_name``) are always valid Kubernetes
object names and one-to-one (``tabby.model.names``): the readable form above while it is
a valid name, else a readable stem and a digest. What changed for stores written before
(SQLite, etcd): handles whose id was not a valid name (upper case, '_', other
characters) are now written under a hashed name; the old one is still read
(``legacy_handle_name``), so their addresses are found and released. Block and
affinity names did not change, except affinities whose ``<node>-<block>`` exceeded 253
characters or was not a valid name (the API server could not have stored those) and
blocks of ``::/n`` ranges (a name starting with '-').
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from tabby.model.base import CALICO_API, TABBY_GROUP, KindInfo, ObjectMeta, Resource, register
from tabby.model.fields import Fields
from tabby.model.names import name_prefix, object_name
from tabby.model.schema import (
    Column,
    KindSchema,
    array,
    boolean,
    integer,
    map_of,
    obj,
    string,
    string_map,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_ANY_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
AFFINITY_STATES = ("pending", "confirmed", "pendingDeletion")


def _dashed(cidr: IPNetwork) -> str:
    return str(cidr).replace(".", "-").replace(":", "-").replace("/", "-")


def block_name(cidr: IPNetwork) -> str:
    """``198.19.0.64/26`` -> ``198-19-0-64-26``; ``fd7a:bb1e::/122`` -> ``fd7a-bb1e---122``.
    (A block starting ``::`` would start with '-': it gets a hashed name, see ``names``.)"""
    return object_name(_dashed(cidr), fallback="block")


@dataclass(frozen=True, slots=True)
class AllocationAttribute:
    handle_id: str
    secondary: tuple[tuple[str, str], ...] = ()  # node, pod, namespace, ...

    def to_dict(self) -> dict[str, Any]:
        return {"handle_id": self.handle_id, "secondary": dict(self.secondary)}


@dataclass(frozen=True, slots=True)
class IPAMBlockSpec:
    cidr: IPNetwork
    affinity: str | None
    allocations: tuple[int | None, ...]
    unallocated: tuple[int, ...]
    attributes: tuple[AllocationAttribute, ...]
    strict_affinity: bool = False
    deleted: bool = False


@register
@dataclass(frozen=True, slots=True)
class IPAMBlock(Resource):
    KIND = KindInfo("IPAMBlock", TABBY_GROUP, "v1", "ipamblocks", namespaced=False,
                    aliases=(CALICO_API,), short_names=("block", "blocks"))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "cidr": string("The block's range."),
        "affinity": string("host:<node> of the node that claimed it; null if none.",
                           nullable=True),
        "allocations": array(integer(minimum=0, nullable=True),
                             "Per ordinal: index into attributes, or null if free."),
        "unallocated": array(integer(minimum=0), "Free ordinals, in the order handed out."),
        "attributes": array(obj({
            "handle_id": string("The owning handle.", nullable=True),
            "secondary": string_map("node, pod, namespace, ..."),
        }), "One per allocation owner."),
        "strictAffinity": boolean("Only the affine node allocates from it."),
        "deleted": boolean("Being deleted."),
    }, required=["cidr"]), columns=(Column("CIDR", ".spec.cidr"),
                                    Column("Affinity", ".spec.affinity")))
    meta: ObjectMeta
    spec: IPAMBlockSpec

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        text = f.str("cidr", required=True)
        try:
            cidr: IPNetwork = ipaddress.ip_network(text)
        except ValueError:
            f.error("cidr", f"{text!r} is not a CIDR")
            cidr = ipaddress.ip_network("0.0.0.0/32")
        size = cidr.num_addresses
        allocations = tuple(a if type(a) is int else None for a in _list(f, "allocations"))
        if len(allocations) != size:
            f.error("allocations", f"has {len(allocations)} entries, the block has {size}")
        unallocated = _ints(f, "unallocated")
        attributes = []
        for path, item in f.list("attributes"):
            fast = _attribute(item)  # blocks are read on every allocation: skip Fields if sound
            if fast is not None:
                attributes.append(fast)
                continue
            a = Fields(item, path, f.errors)
            attributes.append(AllocationAttribute(
                a.str("handle_id"), tuple(sorted(a.str_map("secondary").items()))))
            a.finish()
        spec = IPAMBlockSpec(
            cidr=cidr,
            affinity=f.str("affinity") or None,
            allocations=allocations,
            unallocated=unallocated,
            attributes=tuple(attributes),
            strict_affinity=f.bool("strictAffinity"),
            deleted=f.bool("deleted"),
        )
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        return {"spec": {
            "cidr": str(s.cidr),
            "affinity": s.affinity,
            "allocations": list(s.allocations),
            "unallocated": list(s.unallocated),
            "attributes": [a.to_dict() for a in s.attributes],
            "strictAffinity": s.strict_affinity,
            "deleted": s.deleted,
        }}

    @property
    def node(self) -> str | None:
        aff = self.spec.affinity
        return aff[5:] if aff and aff.startswith("host:") else None

    def used(self) -> int:
        return sum(1 for a in self.spec.allocations if a is not None)


def _attribute(item: object) -> AllocationAttribute | None:
    """A well-formed attribute without the per-field bookkeeping; None if anything is off."""
    if not isinstance(item, dict) or not set(item) <= {"handle_id", "secondary"}:
        return None
    handle_id, secondary = item.get("handle_id", ""), item.get("secondary") or {}
    if not isinstance(handle_id, str) or not isinstance(secondary, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in secondary.items()):
        return None
    return AllocationAttribute(handle_id, tuple(sorted(secondary.items())))


@dataclass(frozen=True, slots=True)
class BlockAffinitySpec:
    node: str
    cidr: IPNetwork
    state: str = "confirmed"  # pending | confirmed | pendingDeletion


@register
@dataclass(frozen=True, slots=True)
class BlockAffinity(Resource):
    KIND = KindInfo("BlockAffinity", TABBY_GROUP, "v1", "blockaffinities", namespaced=False,
                    aliases=(CALICO_API,), short_names=("affinity", "affinities"))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "node": string("The node that claimed the block."),
        "cidr": string("The block's range."),
        "state": string("Claim state.", enum=AFFINITY_STATES),
        # Calico's type: a string ("true"/"false"); the model accepts and ignores it.
        "deleted": string("Accepted for Calico compatibility; not used."),
    }, required=["node", "cidr"]), columns=(Column("Node", ".spec.node"),
                                            Column("CIDR", ".spec.cidr"),
                                            Column("State", ".spec.state")))
    meta: ObjectMeta
    spec: BlockAffinitySpec

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        text = f.str("cidr", required=True)
        try:
            cidr: IPNetwork = ipaddress.ip_network(text)
        except ValueError:
            f.error("cidr", f"{text!r} is not a CIDR")
            cidr = ipaddress.ip_network("0.0.0.0/32")
        spec = BlockAffinitySpec(
            node=f.str("node", required=True), cidr=cidr,
            state=f.choice("state", AFFINITY_STATES, "confirmed"))
        f.raw("deleted")
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        return {"spec": {"node": s.node, "cidr": str(s.cidr), "state": s.state}}


def affinity_name(node: str, cidr: IPNetwork) -> str:
    """``<node>-<block>`` (Calico's name) while that is a valid name of at most 253
    characters; else a readable stem and the digest of (node, cidr). Names that read two
    ways (node ``a-1`` + ``fd7a::/122`` and node ``a`` + ``1:fd7a::/122``) are kept as they
    always were, for existing stores: ``tabby.ipam.records`` checks an affinity's node and
    CIDR before taking it for its own."""
    return object_name(f"{node}-{_dashed(cidr)}", identity=json.dumps([node, str(cidr)]),
                       fallback="affinity")


def affinity_prefix(node: str) -> str:
    """A name prefix of all of ``node``'s affinities (list by it, then check spec.node)."""
    return name_prefix(f"{node}-")


@dataclass(frozen=True, slots=True)
class IPAMHandleSpec:
    handle_id: str
    blocks: tuple[tuple[str, int], ...] = ()  # (block cidr, count)


@register
@dataclass(frozen=True, slots=True)
class IPAMHandle(Resource):
    KIND = KindInfo("IPAMHandle", TABBY_GROUP, "v1", "ipamhandles", namespaced=False,
                    aliases=(CALICO_API,), short_names=("handle", "handles"))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "handleID": string("The allocation owner (<container id>.<interface>)."),
        "block": map_of(integer(minimum=0),
                        "Block CIDR -> how many addresses the handle holds there."),
        "deleted": boolean("Accepted for Calico compatibility; not used."),
    }, required=["handleID"]), columns=(Column("Handle", ".spec.handleID"),))
    meta: ObjectMeta
    spec: IPAMHandleSpec

    @classmethod
    def name_pattern(cls) -> re.Pattern[str]:
        return _ANY_NAME

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        raw = f.raw("block") or {}
        try:
            blocks = tuple(sorted((str(k), _int(v)) for k, v in dict(raw).items()))
        except (TypeError, ValueError):
            f.error("block", "must map block CIDRs to allocation counts (integers)")
            blocks = ()
        spec = IPAMHandleSpec(handle_id=f.str("handleID", required=True), blocks=blocks)
        f.raw("deleted")
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        return {"spec": {"handleID": self.spec.handle_id, "block": dict(self.spec.blocks)}}


def handle_name(handle_id: str) -> str:
    """The IPAMHandle's name: the id itself when it is a valid name (a lowercase RFC 1123
    subdomain, as ``k8s-pod-network.<container id>.eth0`` is), else a readable stem and
    the id's digest (``tabby.ns.ABC_1.eth0`` -> ``tabby-ns-abc-1-eth0-<16 hex>``). The id
    itself is kept in spec.handleID."""
    return object_name(handle_id, fallback="handle")


def handle_prefix(prefix: str) -> str:
    """A name prefix of every handle whose id starts with ``prefix`` (list, then check the
    spec's id). Without trailing dashes, it covers the names of ``legacy_handle_name`` too
    (which strips them)."""
    return name_prefix(prefix).rstrip("-")


def legacy_handle_name(handle_id: str) -> str:
    """The name tabby gave handles before (it kept upper case and '_', which the API server
    refuses, and could give two ids one name). Still read, so that handles stored on
    SQLite or etcd under it are found and released."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", handle_id).strip("-.")[:253] or "handle"


@dataclass(frozen=True, slots=True)
class IPAMConfigSpec:
    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0  # 0 = unlimited


@register
@dataclass(frozen=True, slots=True)
class IPAMConfiguration(Resource):
    KIND = KindInfo("IPAMConfiguration", TABBY_GROUP, "v1", "ipamconfigurations",
                    namespaced=False, aliases=(CALICO_API,), short_names=("ipamconfig",))
    SCHEMA: ClassVar[KindSchema] = KindSchema(spec=obj({
        "strictAffinity": boolean("Nodes allocate only from blocks they claimed."),
        "autoAllocateBlocks": boolean("Nodes claim new blocks as needed (default true)."),
        "maxBlocksPerHost": integer("Most blocks one node may claim; 0 = no limit.", minimum=0),
    }))
    meta: ObjectMeta
    spec: IPAMConfigSpec = field(default_factory=IPAMConfigSpec)

    @classmethod
    def parse_body(cls, meta: ObjectMeta, top: Fields) -> Self:
        f = top.map("spec")
        max_blocks = f.int("maxBlocksPerHost", 0) or 0
        if max_blocks < 0:
            f.error("maxBlocksPerHost", f"{max_blocks} must not be negative")
        spec = IPAMConfigSpec(
            strict_affinity=f.bool("strictAffinity"),
            auto_allocate_blocks=f.bool("autoAllocateBlocks", True),
            max_blocks_per_host=max_blocks)
        f.finish()
        return cls(meta=meta, spec=spec)

    def body(self) -> dict[str, Any]:
        s = self.spec
        return {"spec": {"strictAffinity": s.strict_affinity,
                         "autoAllocateBlocks": s.auto_allocate_blocks,
                         "maxBlocksPerHost": s.max_blocks_per_host}}


def _list(f: Fields, name: str) -> list[Any]:
    raw = f.raw(name)
    if raw is None:
        return []
    if not isinstance(raw, list):
        f.error(name, f"must be a list, not {type(raw).__name__}")
        return []
    return raw


def _int(value: Any) -> int:
    """An integer, or its decimal text (as older writers stored them); else ValueError."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise ValueError(value)


def _ints(f: Fields, name: str) -> tuple[int, ...]:
    items = _list(f, name)
    try:
        return tuple(x if type(x) is int else _int(x) for x in items)
    except ValueError:
        f.error(name, "must be a list of integers")
        return ()
