"""Labs shared by several netns test modules, booted once per session.

Booting a policy lab costs more than most of the tests on it, and several modules
want the very same one (tests/netns/policy_matrix.py: three nodes, dual stack,
namespaces x, y, z with pods a, b, c serving TCP and UDP on 80 and 81):

    policy_lab       lab ``tpm`` (SQLite): test_policy_conformance, test_policy_extended,
                     test_policy_tiers, and test_cnp_lab's SQLite tests
    kube_policy_lab  lab ``tpk`` (a real API server, objects written with kubectl, a
                     ClusterIP Service per pod): test_kube_conformance and test_cnp_lab's
                     kubectl test

A test gets the lab through one of those function fixtures, which resets it after
the test (``reset``: what the test applied is deleted, policies before tiers, labels
restored, full connectivity probed), so each test finds the lab as the one before it
found it. Only tests whose topology and options match share: test_rsv_features (two
nodes, IP reservations over the lowest addresses) and test_policy_dataplane keep
their own labs.

The tests on one shared lab are run one after the other (at the place of the first
of them), and the lab is torn down after the last of them, not at the end of the
session: it does not idle, with its agents and BIRDs, under unrelated tests. If that
test never runs (deselected, skipped), the session's end tears it down.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import pytest

from tabby.lab import builder, system
from tabby.lab.state import load
from tests.netns.kube_lab import kube_lab
from tests.netns.policy_matrix import PolicyLab, Reachability

if TYPE_CHECKING:
    from tests.netns.test_kube_conformance import KubePolicyLab

POLICY_LAB = "tpm"
KUBE_POLICY_LAB = "tpk"
SHARED = ("policy_cluster", "kube_policy_cluster")  # the session fixtures below
LAST = pytest.StashKey[dict[str, str]]()  # shared fixture -> node id of its last test

L = TypeVar("L", bound=PolicyLab)


@dataclass
class Shared(Generic[L]):
    """A lab shared by a session's tests; ``close`` tears it down (once)."""

    name: str
    stack: contextlib.ExitStack[bool | None]
    lab: L | None = None
    closed_after: str = field(default="")

    def get(self) -> L:
        if self.lab is None or self.closed_after:
            raise AssertionError(
                f"the shared lab {self.name} was torn down after {self.closed_after}, the"
                " last test pytest had planned for it; was the order of the tests changed"
                " after collection (a plugin that shuffles them)?")
        return self.lab

    def close(self, after: str) -> None:
        self.closed_after = after
        self.stack.close()


def _leftovers(name: str) -> list[str]:
    return sorted(ns for ns in system.netns_list() if ns.startswith((f"{name}-", f"{name}_")))


@contextlib.contextmanager
def _sqlite_policy_lab() -> Iterator[PolicyLab]:
    """The SQLite policy lab, probed in full (every port and protocol on IPv4, TCP/80 on
    IPv6) before any test uses it; down at the end with every process and namespace."""
    if load(POLICY_LAB) is not None:
        builder.down(POLICY_LAB)
    net = PolicyLab(POLICY_LAB)
    try:
        net.tabby("lab", "up", "--name", POLICY_LAB, "--nodes", "3", "--stack", "dual")
        net.setup()
        net.check(Reachability(net.pods))
        net.check(Reachability(net.pods), family="ipv6", ports=(80,), protocols=("tcp",))
        yield net
    finally:
        state = load(POLICY_LAB)
        if state is not None:
            net.tabby("lab", "down", "--name", POLICY_LAB)
            assert [p for p in state.all_procs() if system.alive(p)] == []
        assert _leftovers(POLICY_LAB) == []


@contextlib.contextmanager
def _kube_policy_lab() -> Iterator[KubePolicyLab]:
    """The Kubernetes-mode policy lab, probed in full like the SQLite one (at the pods'
    addresses and at their Services'); kube_lab checks it is torn down."""
    from tests.netns.test_kube_conformance import KubePolicyLab
    with kube_lab(KUBE_POLICY_LAB, "--nodes", "3", "--stack", "dual") as (_, kubectl):
        net = KubePolicyLab(KUBE_POLICY_LAB, kubectl=kubectl)
        net.setup()
        net.check(Reachability(net.pods))
        net.check(Reachability(net.pods), family="ipv6", ports=(80,), protocols=("tcp",))
        yield net


def _share(name: str, up: contextlib.AbstractContextManager[L]) -> Iterator[Shared[L]]:
    with contextlib.ExitStack() as stack:
        shared: Shared[L] = Shared(name, stack)
        shared.lab = stack.enter_context(up)
        yield shared


@pytest.fixture(scope="session")
def policy_cluster() -> Iterator[Shared[PolicyLab]]:
    yield from _share(POLICY_LAB, _sqlite_policy_lab())


@pytest.fixture(scope="session")
def kube_policy_cluster() -> Iterator[Shared[KubePolicyLab]]:
    yield from _share(KUBE_POLICY_LAB, _kube_policy_lab())


def _lend(shared: Shared[L], fixture: str, request: pytest.FixtureRequest) -> Iterator[L]:
    """The shared lab for one test: reset after it, torn down after the last one."""
    lab = shared.get()
    try:
        yield lab
    finally:
        try:
            lab.reset()
        finally:
            if request.config.stash.get(LAST, {}).get(fixture) == request.node.nodeid:
                shared.close(request.node.nodeid)


@pytest.fixture
def policy_lab(policy_cluster: Shared[PolicyLab],
               request: pytest.FixtureRequest) -> Iterator[PolicyLab]:
    """The shared SQLite policy lab (``tpm``), reset after the test."""
    yield from _lend(policy_cluster, "policy_cluster", request)


@pytest.fixture
def kube_policy_lab(kube_policy_cluster: Shared[KubePolicyLab],
                    request: pytest.FixtureRequest) -> Iterator[KubePolicyLab]:
    """The shared Kubernetes-mode policy lab (``tpk``), reset after the test."""
    yield from _lend(kube_policy_cluster, "kube_policy_cluster", request)


def _uses(item: pytest.Item) -> str:
    names = getattr(item, "fixturenames", ())
    return next((name for name in SHARED if name in names), "")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of each shared lab one after the other, where the first of them was."""
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        if _uses(item):
            groups.setdefault(_uses(item), []).append(item)
    ordered: list[pytest.Item] = []
    for item in items:
        shared = _uses(item)
        if not shared:
            ordered.append(item)
        elif item is groups[shared][0]:
            ordered += groups[shared]
    items[:] = ordered


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note the last test of each shared lab, once every plugin has (de)selected."""
    last = {_uses(item): item.nodeid for item in session.items if _uses(item)}
    session.config.stash[LAST] = last
