"""tests/waiting.py: the one polling helper the netns and fault tests share."""

from __future__ import annotations

import itertools

import pytest

from tests.waiting import wait_for, wait_seconds


def test_wait_for_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "found", "later"])
    assert wait_for("an answer", lambda: next(answers), 5.0, 0.001) == "found"
    assert next(answers) == "later"  # polling stopped at the first truthy value


def test_wait_for_fails_naming_what_it_waited_for_with_the_detail() -> None:
    calls = itertools.count()
    with pytest.raises(AssertionError) as failed:
        wait_for("the moon", lambda: next(calls) < 0, 0.05, 0.01,
                 detail=lambda: "; the log: nothing")
    assert str(failed.value) == "timed out after 0.05s waiting for the moon; the log: nothing"
    assert next(calls) >= 3  # it kept polling until the deadline


def test_a_check_that_holds_at_once_passes_even_with_no_time_left() -> None:
    assert wait_for("something already true", lambda: 42, 0.0) == 42


def test_wait_seconds_returns_how_long_it_took() -> None:
    answers = iter([False, False, True])
    took = wait_seconds("a third try", lambda: next(answers), 5.0, 0.02)
    assert 0.04 <= took < 5.0
