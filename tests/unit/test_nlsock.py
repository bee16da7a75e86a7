"""The netlink framing every raw reader and writer shares, without root: headers,
attributes, error messages (tabby.dataplane.nlsock), on hand-built bytes laid out as
the kernel lays them (linux/netlink.h). The socket itself runs in tests/netns/test_nlsock.py.
"""

from __future__ import annotations

import errno
import struct

from tabby.dataplane import nlsock
from tabby.dataplane.nlsock import HDR, attr, attr_text, attr_u32, attrs, error, messages, text_of


def test_attributes_are_padded_to_four_bytes_and_walked_back() -> None:
    packed = attr_text(3, "eth0") + attr(1, b"\x02\x00\x00\x00\x00\x01") + attr_u32(4, 1500)
    assert packed == (struct.pack("=HH", 9, 3) + b"eth0\0" + b"\0" * 3
                      + struct.pack("=HH", 10, 1) + b"\x02\0\0\0\0\x01" + b"\0" * 2
                      + struct.pack("=HHI", 8, 4, 1500))
    got = [(kind, bytes(value)) for kind, value in attrs(packed)]
    assert got == [(3, b"eth0\0"), (1, b"\x02\0\0\0\0\x01"), (4, struct.pack("=I", 1500))]
    assert text_of(dict(attrs(packed))[3]) == "eth0"


def test_nested_attributes_lose_their_flag_and_open_in_place() -> None:
    inner = attr_text(1, "veth")
    packed = attr(18 | nlsock.NLA_F_NESTED, inner)
    ((kind, value),) = attrs(packed)
    assert kind == 18
    assert [(k, text_of(v)) for k, v in attrs(value)] == [(1, "veth")]


def test_a_truncated_attribute_ends_the_walk() -> None:
    whole = attr_u32(4, 1500)
    cut = struct.pack("=HH", 12, 5) + b"\x01\x02"  # says 12 bytes, has 6
    assert [k for k, _ in attrs(whole + cut)] == [4]
    assert list(attrs(struct.pack("=HH", 2, 1) + whole)) == []  # shorter than its header
    assert [k for k, _ in attrs(b"\0" * 4 + whole, offset=4)] == [4]


def test_messages_of_one_datagram_each_with_its_sequence_number() -> None:
    first, second = b"\x01\x02\x03", b"\x04" * 8
    data = (HDR.pack(16 + len(first), 24, 0x2, 7, 0) + first + b"\0"
            + HDR.pack(16 + len(second), 3, 0x2, 8, 0) + second)
    got = [(kind, flags, seq, bytes(body)) for kind, flags, seq, body in messages(data)]
    assert got == [(24, 0x2, 7, first), (3, 0x2, 8, second)]
    assert [m[2] for m in messages(data[:-1])] == [7]  # the second one is cut short
    assert list(messages(b"\x01\x02")) == []


def test_an_error_carries_its_errno_and_the_kernels_message() -> None:
    echoed = HDR.pack(36, 24, 0x1, 5, 0)  # NETLINK_CAP_ACK: the request's header only
    body = (struct.pack("=i", -errno.ENETUNREACH) + echoed
            + attr_text(1, "Nexthop has invalid gateway") + attr_u32(3, 40))
    assert error(body, 0x200) == (errno.ENETUNREACH, "Nexthop has invalid gateway")
    assert error(body, 0) == (errno.ENETUNREACH, "")  # no NLM_F_ACK_TLVS: no attributes
    assert error(struct.pack("=i", 0) + echoed, 0x100) == (0, "")  # an ack
