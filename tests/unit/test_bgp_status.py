"""BIRD's control protocol and ``show protocols all``, read from BIRD 2.0.12's own output."""

from __future__ import annotations

from pathlib import Path

from tabby.bgp.control import Reply, parse_line, parse_reply, protocols
from tabby.bgp.status import parse_status, peer_status

TRANSCRIPT = Path(__file__).parent / "data" / "bird-show-protocols-all.txt"


def test_reply_lines_codes_and_continuations() -> None:
    assert parse_line("0001 BIRD 2.0.12 ready.", 0) == (Reply(1, "BIRD 2.0.12 ready."), True)
    assert parse_line("1002-device1    Device", 2002) == (Reply(1002, "device1    Device"), False)
    assert parse_line("     Neighbor AS:      64512", 1006) == (
        Reply(1006, "    Neighbor AS:      64512"), False)
    assert not Reply(8002, "syntax error").ok and Reply(3, "Reconfigured").ok


def test_show_protocols_all_as_values() -> None:
    replies = parse_reply(TRANSCRIPT.read_text())
    assert replies[-1] == Reply(0, "")
    found = protocols(replies)
    assert [(p.name, p.proto, p.state) for p in found] == [
        ("device1", "Device", "up"), ("direct1", "Direct", "up"),
        ("kernel4", "Kernel", "up"), ("tabby_origin4", "Static", "up"),
        ("kernel6", "Kernel", "up"), ("tabby_origin6", "Static", "up"),
        ("Mesh_198_18_0_12", "BGP", "up"), ("Global_198_18_0_99", "BGP", "start"),
        ("Mesh_fd7a_bb1e__12", "BGP", "up")]
    mesh, down, mesh6 = (peer_status(p) for p in found if p.proto == "BGP")
    assert mesh.to_dict() == {
        "name": "Mesh_198_18_0_12", "address": "198.18.0.12", "family": "ipv4",
        "type": "node-to-node mesh", "state": "up", "since": "2026-11-26 17:42:18",
        "info": "Established", "asNumber": "64512"}
    assert mesh.established and mesh6.family == 6 and mesh6.address == "fd7a:bb1e::12"
    assert (down.type, down.state, down.info, down.established) == (
        "global", "start", "Connect", False)


def test_show_status() -> None:
    replies = parse_reply("1000-BIRD 2.0.12\n1011-Router ID is 198.18.0.11\n"
                          " Hostname is vm\n Current server time is 2026-11-26 17:42:40.101\n"
                          "0013 Daemon is up and running\n")
    assert parse_status(replies) == ("2.0.12", "198.18.0.11")


def test_since_in_birds_default_time_format() -> None:
    replies = parse_reply("2002-Name       Proto      Table      State  Since         Info\n"
                          "1002-peer       BGP        ---        up     18:03:46.277  Established\n"
                          "1002-other      BGP        ---        start  18:03:40.001  Active"
                          "        Socket: Connection refused\n"
                          "0000 \n")
    up, other = protocols(replies)
    assert (up.since, up.info, up.established) == ("18:03:46.277", "Established", True)
    assert (other.since, other.info) == ("18:03:40.001", "Active Socket: Connection refused")
