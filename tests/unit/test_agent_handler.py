"""The pod handler's pure decisions, and the agent's command line."""

from __future__ import annotations

from typing import Any

import pytest

from tabby.agent.handler import Families, request_families
from tabby.cli.main import build_parser
from tabby.errors import NoUsablePool
from tabby.model import IPPool


def pool(name: str, cidr: str, **spec: Any) -> IPPool:
    return IPPool.from_manifest({"apiVersion": "tabby.dev/v1", "kind": "IPPool",
                                 "metadata": {"name": name}, "spec": {"cidr": cidr, **spec}})


V4 = pool("v4", "198.19.0.0/16")
V6 = pool("v6", "fd7a:bb1e:1::/48")


def test_one_address_per_family_some_pool_serves() -> None:
    assert request_families(None, [V4, V6], {}, "n") == Families(1, 1)
    assert request_families(None, [V4], {}, "n") == Families(1, 0)
    assert request_families({}, [V6], {}, "n") == Families(0, 1)


def test_disabled_or_unselected_pools_do_not_count() -> None:
    off = pool("off", "fd7a:bb1e:1::/48", disabled=True)
    picky = pool("picky", "198.19.0.0/16", nodeSelector="rack == 'a'")
    assert request_families(None, [picky, off], {"rack": "a"}, "n") == Families(1, 0)
    with pytest.raises(NoUsablePool, match="node 'n'"):
        request_families(None, [picky, off], {"rack": "b"}, "n")


def test_calico_ipam_keys_win() -> None:
    ipam = {"assign_ipv4": "true", "assign_ipv6": "false", "ipv4_pools": ["v4"]}
    assert request_families(ipam, [V4, V6], {}, "n") == Families(1, 0, ("v4",))
    assert request_families({"assign_ipv6": "true"}, [], {}, "n") == Families(1, 1)


def test_named_pools_ask_for_their_family() -> None:
    assert request_families({"ipv6_pools": ["v6"]}, [V4], {}, "n") == Families(1, 1, (), ("v6",))


def test_agent_flags_and_defaults() -> None:
    args = build_parser().parse_args(["agent", "--node", "node-1"])
    assert args.node == "node-1"
    assert args.cni_socket == "/var/run/tabby/cni.sock"
    assert args.metrics_addr == "127.0.0.1:9099"
    assert args.mtu == 1500 and args.resync_interval == 30.0
    with pytest.raises(SystemExit):
        build_parser().parse_args(["agent"])  # --node is required
