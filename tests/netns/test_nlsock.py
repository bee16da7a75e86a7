"""tabby.dataplane.nlsock's socket on a real kernel: batches answered per request, dumps,
one request and its answer.

Each test runs on a thread that moves itself into a scratch network namespace of its
own (unshare: nothing named, nothing to tear down; the namespace goes with the thread
and the socket), so nothing here can touch another namespace.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from tabby.dataplane.netns import unshare_netns
from tabby.dataplane.nlsock import BATCH_BUFFERS, NLM_F_REQUEST, NetlinkSocket, Request
from tabby.dataplane.rtlinkmsg import RTM_GETLINK, RTM_NEWLINK, decode_link, ifinfo
from tabby.dataplane.rtnl import (
    RTM_GETROUTE,
    RTM_NEWROUTE,
    decode_route,
    dump_request,
    encode_route,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

T = TypeVar("T")
Results = list[tuple[int, str]]
UNREACHABLE_GW = ipaddress.IPv4Address("198.18.0.12")  # no route to it in a fresh namespace


def in_scratch_namespace(body: Callable[[NetlinkSocket], T]) -> T:
    """``body(socket)`` on a thread inside a new network namespace; its answer or error."""
    answer: list[T | BaseException] = []

    def run() -> None:
        try:
            unshare_netns()
            sock = NetlinkSocket(buffers=BATCH_BUFFERS)
            try:
                answer.append(body(sock))
            finally:
                sock.close()
        except BaseException as exc:  # handed to the test's thread
            answer.append(exc)

    thread = threading.Thread(target=run, name="nlx-scratch")
    thread.start()
    thread.join(timeout=60)
    assert answer, "the scratch thread did not answer within 60 s"
    got = answer[0]
    if isinstance(got, BaseException):
        raise got
    return got


def route(n: int, *, gateway: bool = False, delete: bool = False) -> Request:
    """A /30 of 198.19.0.0/16 as a blackhole route, or via an unreachable gateway."""
    dst = ipaddress.IPv4Network("198.19.0.0/30").network_address + 4 * n
    return encode_route(delete=delete, family=socket.AF_INET, dst=dst.packed, dst_len=30,
                        table=254, protocol=77, scope=0, type=1 if gateway else 6,
                        gateway=UNREACHABLE_GW.packed if gateway else None)


def test_each_request_of_a_batch_gets_its_own_answer() -> None:
    def body(sock: NetlinkSocket) -> tuple[Results, list[bytes]]:
        requests = [route(0), route(1, gateway=True), route(2), route(3, delete=True)]
        results = sock.batch(requests)
        got = sock.dump(RTM_GETROUTE, dump_request(socket.AF_INET))
        dumped = [decode_route(b) for k, b in got if k == RTM_NEWROUTE]
        return results, sorted(r.dst for r in dumped if r.protocol == 77)

    results, ours = in_scratch_namespace(body)
    assert [code for code, _ in results] == [0, errno.ENETUNREACH, 0, errno.ESRCH]
    assert "gateway" in results[1][1].lower()  # the kernel's extended-ack message
    assert ours == [bytes([198, 19, 0, 0]), bytes([198, 19, 0, 8])]


def test_thousands_of_requests_over_many_sends_map_back_in_order() -> None:
    count = 6000  # ~40 bytes each: several 48 KiB sends, a third of them refused

    def body(sock: NetlinkSocket) -> tuple[Results, int]:
        results = sock.batch([route(i, gateway=i % 3 == 1) for i in range(count)])
        dumped = sock.dump(RTM_GETROUTE, dump_request(socket.AF_INET))
        return results, sum(1 for k, b in dumped
                            if k == RTM_NEWROUTE and decode_route(b).protocol == 77)

    results, written = in_scratch_namespace(body)
    assert [i for i, (code, _) in enumerate(results) if code] == [
        i for i in range(count) if i % 3 == 1]
    assert {code for code, _ in results if code} == {errno.ENETUNREACH}
    assert written == count - count // 3


def test_one_request_and_its_answer() -> None:
    def body(sock: NetlinkSocket) -> tuple[list[str], int, int, int]:
        links = sock.request(RTM_GETLINK, NLM_F_REQUEST | 0x300, ifinfo())
        missing = sock.request(RTM_GETLINK, NLM_F_REQUEST, ifinfo(index=4242))
        return ([decode_link(b).name for k, b in links.messages if k == RTM_NEWLINK],
                links.code, missing.code, len(missing.messages))

    names, code, missing, got = in_scratch_namespace(body)
    assert names == ["lo"] and code == 0
    assert missing == errno.ENODEV and got == 0
