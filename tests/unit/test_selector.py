"""Calico's selector language: parsing, evaluation, errors with positions."""

from __future__ import annotations

import pytest

from tabby import selector
from tabby.selector import SelectorError

LABELS = {"app": "web", "tier": "frontend", "env": "prod-eu", "k8s/role": "x"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("all()", True),
        ("global()", True),
        ("app == 'web'", True),
        ('app == "db"', False),
        ("app != 'db'", True),
        ("missing != 'x'", True),
        ("missing == 'x'", False),
        ("has(app)", True),
        ("!has(app)", False),
        ("has(missing)", False),
        ("app in {'web', 'db'}", True),
        ("app in {}", False),
        ("app not in {'web'}", False),
        ("missing not in {'web'}", True),
        ("env contains 'od-e'", True),
        ("env starts with 'prod'", True),
        ("env ends with 'eu'", True),
        ("env ends with 'us'", False),
        ("missing starts with ''", False),
        ("app == 'web' && tier == 'frontend'", True),
        ("app == 'db' || tier == 'frontend'", True),
        ("!(app == 'db' || tier == 'backend')", True),
        ("app == 'web' && (tier == 'x' || env == 'prod-eu')", True),
        ("app == 'web' && tier == 'x' || env == 'prod-eu'", True),
        ("app == 'db' || tier == 'x' && env == 'prod-eu'", False),
        ("k8s/role == 'x'", True),
        ("!!has(app)", True),
    ],
)
def test_evaluation(text: str, expected: bool) -> None:
    assert selector.parse(text).matches(LABELS) is expected


@pytest.mark.parametrize(
    ("text", "pos", "fragment"),
    [
        ("app ==", 6, "expected str"),
        ("app = 'x'", 4, "unexpected character"),
        ("app == 'x' &&", 13, "expected a label key"),
        ("(app == 'x'", 11, "expected ')'"),
        ("app in {'a' 'b'}", 12, "expected '}'"),
        ("app foo 'x'", 4, "expected an operator"),
        ("has(app", 7, "expected ')'"),
        ("app == 'x' )", 11, "unexpected ')'"),
    ],
)
def test_errors_name_the_position(text: str, pos: int, fragment: str) -> None:
    with pytest.raises(SelectorError) as err:
        selector.parse(text)
    assert err.value.pos == pos
    assert fragment in str(err.value)
    assert f"position {pos}" in str(err.value)


@pytest.mark.parametrize(
    "text",
    ["app == 'web'", "has(a) && !has(b)", "a in {'x', 'y'} || b not in {'z'}",
     "!(a == 'b' && c != 'd')", "x starts with \"it's\""],
)
def test_rendering_round_trips(text: str) -> None:
    sel = selector.parse(text)
    assert selector.parse(str(sel)) == sel


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    """A selector of a thousand '!' used to kill every agent (RecursionError); it is
    refused with its position, and up to the limit still parses and evaluates."""
    from tabby.selector import MAX_DEPTH, SelectorError, parse
    for text in ("!" * 1000 + "all()", "(" * 1000 + "all()" + ")" * 1000,
                 "!(" * 40 + "all()" + ")" * 40):
        with pytest.raises(SelectorError, match="nested more than"):
            parse(text)
    ok = parse("!" * MAX_DEPTH + "all()")
    assert ok.matches({}) is (MAX_DEPTH % 2 == 0)
