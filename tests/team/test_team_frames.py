"""Frame codecs of the team shell: ARP probes/replies and rtnetlink link events (no root)."""

from __future__ import annotations

import struct

from nonstop.net.team_frames import (
    IFF_LOWER_UP,
    IFF_UP,
    RTM_DELLINK,
    RTM_NEWLINK,
    ArpProbe,
    arp_frame,
    parse_link_events,
    parse_probe_reply,
)

MEMBER = "02:00:00:00:00:10"


def test_probe_is_an_rfc5227_arp_probe_from_the_member_mac() -> None:
    frame = ArpProbe(MEMBER, "198.18.0.2").frame()
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == bytes.fromhex("020000000010")
    assert frame[12:14] == b"\x08\x06" and struct.unpack("!H", frame[20:22])[0] == 1
    assert frame[28:32] == b"\0\0\0\0"  # sender IP 0.0.0.0: nobody learns from it
    assert frame[38:42] == bytes([198, 18, 0, 2]) and len(frame) == 60


def _reply(sender_ip: str, to_mac: str, op: int = 2) -> bytes:
    frame = bytearray(arp_frame(op, "02:00:00:00:00:99", sender_ip, "0.0.0.0"))
    frame[32:38] = bytes.fromhex(to_mac.replace(":", ""))
    return bytes(frame)


def test_only_replies_from_targets_to_this_member_count() -> None:
    targets = ["198.18.0.2"]
    assert parse_probe_reply(_reply("198.18.0.2", MEMBER), targets, MEMBER)
    assert not parse_probe_reply(_reply("198.18.0.3", MEMBER), targets, MEMBER)
    assert not parse_probe_reply(_reply("198.18.0.2", "02:00:00:00:00:11"), targets, MEMBER)
    assert not parse_probe_reply(_reply("198.18.0.2", MEMBER, op=1), targets, MEMBER)
    assert not parse_probe_reply(b"\0" * 20, targets, MEMBER)
    assert not parse_probe_reply(_reply("198.18.0.2", MEMBER), targets, None)


def _link_msg(kind: int, index: int, flags: int, name: str) -> bytes:
    raw = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(raw), 3) + raw
    attr += b"\0" * (-len(attr) % 4)
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0) + attr
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_link_events_decode_carrier_and_name() -> None:
    data = (_link_msg(RTM_NEWLINK, 3, IFF_UP | IFF_LOWER_UP, "eth0")
            + _link_msg(RTM_NEWLINK, 4, IFF_UP, "eth1")
            + _link_msg(RTM_DELLINK, 5, IFF_UP | IFF_LOWER_UP, "eth2")
            + _link_msg(20, 6, 0, "ignored"))
    events = parse_link_events(data)
    assert [(e.name, e.index, e.carrier, e.deleted) for e in events] == [
        ("eth0", 3, True, False), ("eth1", 4, False, False), ("eth2", 5, False, True)]


def test_truncated_netlink_data_does_not_raise() -> None:
    assert parse_link_events(b"\x10\x00") == []


def test_probe_outage_runs_from_first_lost_to_next_answered() -> None:
    from nonstop.net.team_traffic import probe_result

    sent_at = [i * 0.001 for i in range(10)]
    result = probe_result(sent_at, {0, 1, 2, 6, 7, 8, 9})
    assert result.lost == 3 and result.received == 7
    assert abs(result.longest_gap - 0.003) < 1e-9  # probes 3,4,5 lost; 6 answered
    assert probe_result(sent_at, set(range(10))).longest_gap == 0.0
    assert abs(probe_result(sent_at, {0, 1}).longest_gap - 0.007) < 1e-9  # lost to the end
