"""The label index answers selectors exactly as ``Selector.matches`` does, before and
after evolving by difference; selector rewriting for namespace and service-account scopes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tabby import selector as sel
from tabby.policy.index import NAMESPACE, Entity, LabelIndex, bits, namespace_scope, prefixed

KEYS = ("app", "tier", "env")
VALUES = ("a", "b", "prod-eu")

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=3)
leaf_st = st.one_of(
    st.just(sel.All()),
    st.builds(sel.Has, st.sampled_from(KEYS)),
    st.builds(sel.Compare, st.sampled_from(KEYS),
              st.sampled_from(("==", "!=", "contains", "starts with", "ends with")),
              st.sampled_from((*VALUES, "pro", "eu", ""))),
    st.builds(sel.In, st.sampled_from(KEYS), st.frozensets(st.sampled_from(VALUES), max_size=2),
              st.booleans()),
)
selector_st = st.recursive(leaf_st, lambda inner: st.one_of(
    st.builds(sel.Not, inner),
    st.builds(lambda ps: sel.And(tuple(ps)), st.lists(inner, min_size=2, max_size=3)),
    st.builds(lambda ps: sel.Or(tuple(ps)), st.lists(inner, min_size=2, max_size=3)),
), max_leaves=6)


def entity(i: int, labels: dict[str, str]) -> Entity:
    return Entity("wep", f"default/p{i}", labels)


def matching(index: LabelIndex, s: sel.Selector) -> set[str]:
    return {e.key for e in index.members(index.mask(s))}


@settings(max_examples=150, deadline=None)
@given(st.lists(labels_st, max_size=12), st.lists(selector_st, min_size=1, max_size=4),
       st.lists(labels_st, max_size=4), st.sets(st.integers(0, 11), max_size=4))
def test_masks_agree_with_matches_before_and_after_evolve(
        population: list[dict[str, str]], selectors: list[sel.Selector],
        newcomers: list[dict[str, str]], leaving: set[int]) -> None:
    ents = tuple(entity(i, labels) for i, labels in enumerate(population))
    index = LabelIndex(ents)
    for s in selectors:
        assert matching(index, s) == {e.key for e in ents if s.matches(e.labels)}
    later = tuple(e for i, e in enumerate(ents) if i not in leaving) + tuple(
        entity(100 + i, labels) for i, labels in enumerate(newcomers))
    evolved = index.evolve(later)
    for s in selectors:  # memoised masks were patched; fresh ones computed
        assert matching(evolved, s) == {e.key for e in later if s.matches(e.labels)}
    assert {e.key for e in evolved.entities} == {e.key for e in later}


def test_bits_dense_and_sparse() -> None:
    assert bits(0) == []
    assert bits(0b1011) == [0, 1, 3]
    dense = sum(1 << i for i in range(0, 300, 3))
    assert bits(dense) == list(range(0, 300, 3))


def test_scoped_selectors() -> None:
    assert str(prefixed(sel.parse("tier == 'back' && !has(x)"), "pcns.")) == \
        "pcns.tier == 'back' && !has(pcns.x)"
    assert namespace_scope("global()") == sel.Not(sel.Has(NAMESPACE))
    scope = namespace_scope("tier in {'back'}")
    assert scope.matches({NAMESPACE: "team", "pcns.tier": "back"})
    assert not scope.matches({"pcns.tier": "back"})  # not namespaced
