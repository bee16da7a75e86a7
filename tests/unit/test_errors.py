"""The error tree: every exception class in tabby, found by importing every module,
derives from TabbyError, lives in tabby.errors, and is drawn in its docstring where
it hangs."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
import re

import pytest

import tabby
from tabby import errors
from tabby.errors import FieldError, TabbyError, ValidationError

# Exceptions that steer control flow inside their module and never reach a caller, so
# they stay outside the tree (errors.py's docstring names them too). By class name, so
# that a module may move without this list.
CONTROL_FLOW = {
    # tabby.nft.render: a set or map changed its declaration, render the whole table.
    "TypeChanged",
    # tabby.store.etcd: a watch could not reach its endpoint, move on to the next one.
    "_NotConnected",
    # tabby.ipam.fastpath: not tabby-ipam's steady state, leave the request to the engine.
    "_Decline",
}
# TabbyErrors defined outside errors.py (drawn in the tree all the same).
DEFINED_ELSEWHERE = {
    # tabby.store: carries the Kubernetes API server's answer, kept beside its client.
    "APIError",
}
_BRANCH = re.compile(r"^(?P<indent>[ │]*)[├└]── (?P<name>\w+)")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a tabby module, by qualified name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(tabby.__path__, "tabby."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseException)
                    and value.__module__.startswith("tabby.")):
                found[_qualname(value)] = value
    return found


def drawn_tree() -> dict[str, str]:
    """errors.py's docstring as {class name: parent name}."""
    assert errors.__doc__ is not None
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = [(-1, "TabbyError")]
    for line in errors.__doc__.splitlines():
        if not (match := _BRANCH.match(line)):
            continue
        depth = len(match["indent"])
        while stack[-1][0] >= depth:
            stack.pop()
        parents[match["name"]] = stack[-1][1]
        stack.append((depth, match["name"]))
    return parents


@pytest.fixture(scope="module")
def classes() -> dict[str, type[BaseException]]:
    return exception_classes()


def test_every_exception_is_a_tabby_error(classes: dict[str, type[BaseException]]) -> None:
    outside = {cls.__qualname__ for cls in classes.values() if not issubclass(cls, TabbyError)}
    assert outside == CONTROL_FLOW


def test_every_tabby_error_lives_in_errors_py(classes: dict[str, type[BaseException]]) -> None:
    elsewhere = {cls.__qualname__ for cls in classes.values()
                 if issubclass(cls, TabbyError) and cls.__module__ != "tabby.errors"}
    assert elsewhere == DEFINED_ELSEWHERE


def test_the_docstring_draws_the_whole_tree(classes: dict[str, type[BaseException]]) -> None:
    tree = drawn_tree()
    actual = {cls.__name__: cls.__base__.__name__ for cls in classes.values()
              if issubclass(cls, TabbyError) and cls is not TabbyError}
    assert len(actual) == len({c for c in classes.values() if issubclass(c, TabbyError)}) - 1, \
        "two error classes share a name"
    assert tree == actual
    assert errors.__doc__ is not None
    for name in CONTROL_FLOW:
        assert f".{name}``" in errors.__doc__, f"{name} is not named among those left out"


def test_moved_classes_are_still_importable_where_they_were() -> None:
    from tabby.bgp.control import BirdError
    from tabby.cni.protocol import CNIError
    from tabby.cni.runtime import PluginFailed
    from tabby.cni.wire import FrameError
    from tabby.ipam.drill import DrillError
    from tabby.selector import SelectorError
    assert (BirdError, CNIError, PluginFailed, FrameError, DrillError, SelectorError) == (
        errors.BirdError, errors.CNIError, errors.PluginFailed, errors.FrameError,
        errors.DrillError, errors.SelectorError)


def test_field_error_is_a_small_frozen_value() -> None:
    error = FieldError("spec.cidr", "is not a network")
    assert error == FieldError("spec.cidr", "is not a network") != FieldError("spec", "x")
    assert len({error, FieldError("spec.cidr", "is not a network")}) == 1
    assert pickle.loads(pickle.dumps(error)) == error
    assert repr(error) == "FieldError(path='spec.cidr', message='is not a network')"
    assert str(error) == "spec.cidr: is not a network" and str(FieldError("", "bad")) == "bad"
    with pytest.raises(AttributeError):
        error.path = "other"  # type: ignore[misc]
    assert str(ValidationError("IPPool/a", [error])) == "IPPool/a: spec.cidr: is not a network"
