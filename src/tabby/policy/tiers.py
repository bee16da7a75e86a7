"""Tiers as the compiler and ``explain`` see them: order, default action, and grouping.

Calico's evaluation, per endpoint and direction (Felix's ``PolicySorter`` and
endpoint chain renderer)::

    for each tier, lowest order first (ties by name), that has a policy selecting
    the endpoint for this direction (tiers whose policies select nothing are skipped):
        policies of the tier by order (ties by key):
            the first rule that matches decides: Allow, Deny; Log goes on;
            Pass ends the tier: on to the next tier
        no rule decided: the tier's defaultAction: Deny drops ("end of tier"),
                         Pass goes on to the next tier
    after the last tier: the endpoint's profile (pods: their namespace's, which
    allows; host endpoints: none unless they carry the default-allow profile)

Every tier that exists comes from ``tabby.model.tier.tier_specs`` (the built-ins,
then the stored ``Tier`` objects). A policy naming a tier that does not exist
(written past tabby's admission: kubectl, a tier deleted on another path) is
still enforced, as Felix does it: its tier sorts after every existing one, by
name, with defaultAction Deny.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tabby.model.tier import Tier, tier_specs


@dataclass(frozen=True, slots=True)
class TierInfo:
    name: str
    order: float | None  # None: no such tier (its policies still apply, after the rest)
    default_action: str = "Deny"  # Deny | Pass

    @property
    def exists(self) -> bool:
        return self.order is not None

    @property
    def sort_key(self) -> tuple[bool, float, str]:
        """Felix's ``TierLess``: existing tiers first, by order, then by name."""
        return (not self.exists, math.inf if self.order is None else self.order, self.name)

    @property
    def passes(self) -> bool:
        """Does the tier's end go on to the next tier (defaultAction Pass)?"""
        return self.default_action == "Pass"


@dataclass(frozen=True, slots=True)
class TierGroup:
    """The policies of one tier that apply to an endpoint, in order."""

    tier: TierInfo
    keys: tuple[str, ...]


class TierTable:
    """Every tier by name; a name that is not a tier gets Felix's stand-in."""

    __slots__ = ("items",)

    def __init__(self, tiers: Iterable[Tier] = ()) -> None:
        self.items: dict[str, TierInfo] = {
            name: TierInfo(name, spec.order, spec.default_action)
            for name, spec in tier_specs(tiers).items()}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TierTable) and self.items == other.items

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.items.items())))

    def __repr__(self) -> str:
        return f"TierTable({sorted(self.items)})"

    def info(self, name: str) -> TierInfo:
        got = self.items.get(name)
        return got if got is not None else TierInfo(name, None)


class _Tiered(Protocol):
    @property
    def tier(self) -> str: ...


def group_by_tier(keys: Iterable[str], tier_of: Mapping[str, _Tiered], table: TierTable
                  ) -> tuple[TierGroup, ...]:
    """``keys`` (already in evaluation order: tiers first) cut into runs of one tier."""
    groups: list[TierGroup] = []
    run: list[str] = []
    current = ""
    for key in keys:
        tier = tier_of[key].tier
        if run and tier != current:
            groups.append(TierGroup(table.info(current), tuple(run)))
            run = []
        current = tier
        run.append(key)
    if run:
        groups.append(TierGroup(table.info(current), tuple(run)))
    return tuple(groups)
