"""The share cache: any sequence of updates ends where a from-scratch computation does."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import random

from tabby.model import EndpointSlice, ObjectMeta, Service
from tabby.model.service import SERVICE_NAME_LABEL, Endpoint, EndpointPort, ServicePort, ServiceSpec
from tabby.services import nft
from tabby.services.shares import Inputs, ShareCache, merge


def service(i: int, external: str = "") -> Service:
    spec = ServiceSpec(cluster_ips=(ipaddress.ip_address(f"198.18.128.{i + 1}"),),
                       ip_families=(4,), ports=(ServicePort(80, target_port=8080),),
                       external_ips=(ipaddress.ip_address(external),) if external else ())
    return Service(ObjectMeta(f"s{i}", "default"), spec)


def endpoints(i: int, count: int, node: str) -> EndpointSlice:
    eps = tuple(Endpoint((ipaddress.ip_address(f"198.19.{i}.{j + 1}"),), node_name=node)
                for j in range(count))
    return EndpointSlice(ObjectMeta(f"s{i}-x", "default", labels={SERVICE_NAME_LABEL: f"s{i}"}),
                         4, eps, (EndpointPort(8080),))


def test_replayed_updates_match_a_fresh_computation() -> None:
    rng = random.Random(7)
    compute = functools.partial(nft.service_share, node="node-1")
    cache = ShareCache(compute, buckets=4)
    state: dict[int, Inputs] = {}
    for _ in range(300):
        i = rng.randrange(12)
        action = rng.choice(["set", "set", "drop", "endpoints"])
        if action == "drop":
            state.pop(i, None)
        elif action == "set" or i not in state:
            # a shared external IP now and then: clashes between buckets
            state[i] = (service(i, "198.18.150.1" if rng.random() < 0.3 else ""),
                        (endpoints(i, rng.randrange(4), rng.choice(["node-1", "node-2"])),))
        else:
            svc, _ = state[i]
            state[i] = (svc, (endpoints(i, rng.randrange(4), "node-1"),))
        inputs = [state[k] for k in sorted(state)]
        assert cache.merged(inputs) == ShareCache(compute, buckets=4).merged(inputs)
        assert cache.merged(inputs) == ShareCache(compute, buckets=4).merged(inputs)


def test_one_bucket_is_a_plain_merge_with_the_first_winning() -> None:
    compute = functools.partial(nft.service_share, node="node-1")
    inputs = [(service(1, "198.18.150.1"), (endpoints(1, 1, "node-2"),)),
              (service(2, "198.18.150.1"), (endpoints(2, 2, "node-2"),))]
    one = ShareCache(compute, buckets=1).merged(inputs)
    assert one == merge([compute(*x) for x in inputs])
    assert ("198.18.150.1 . tcp . 80", "goto svc-n1") in one.elements("svc-ips-v4")
    fresh = dataclasses.replace(inputs[0][0])  # an equal but new object: recomputed, same answer
    assert ShareCache(compute, buckets=1).merged([(fresh, inputs[0][1]), inputs[1]]) == one
