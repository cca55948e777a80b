"""The heartbeat codec and the receiver's anti-replay state: pure, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.ha.heartbeat import (
    ForgedHeartbeat,
    Heartbeat,
    HeartbeatVerifier,
    MalformedHeartbeat,
    Verdict,
    decode,
    encode,
    guests_digest,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def hb(seq: int, sent: float, link: str = "eth0", inc: int = 1, host: str = "h1", cluster: str = "c1") -> Heartbeat:
    return Heartbeat(cluster, host, link, inc, seq, int(sent * 1e9), "ready", guests_digest({"web-0": "running"}))


texts = st.text(max_size=40).filter(lambda s: len(s.encode()) <= 255)


@given(
    cluster=texts, host=texts, link=texts, state=texts,
    inc=st.integers(0, 2**64 - 1), seq=st.integers(0, 2**64 - 1), sent=st.integers(0, 2**64 - 1),
    digest=st.binary(max_size=64),
)
def test_round_trip(cluster: str, host: str, link: str, state: str, inc: int, seq: int, sent: int, digest: bytes) -> None:
    beat = Heartbeat(cluster, host, link, inc, seq, sent, state, digest)
    assert decode(encode(beat, KEY), KEY) == beat


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data: bytes) -> None:
    with pytest.raises((ForgedHeartbeat, MalformedHeartbeat)):
        decode(data, KEY)


def test_every_flipped_bit_is_forged() -> None:
    data = encode(hb(1, 1.0), KEY)
    for i in range(len(data)):
        tampered = bytearray(data)
        tampered[i] ^= 0x01
        with pytest.raises(ForgedHeartbeat):
            decode(bytes(tampered), KEY)


def test_digest_is_order_independent_and_state_sensitive() -> None:
    assert guests_digest({"a": "running", "b": "stopped"}) == guests_digest({"b": "stopped", "a": "running"})
    assert guests_digest({"a": "running"}) != guests_digest({"a": "stopped"})
    assert guests_digest({"ab": "c"}) != guests_digest({"a": "bc"})


def test_forged_replayed_stale_are_dropped_and_counted() -> None:
    v = HeartbeatVerifier("c1", KEY, max_age=1.0)
    assert v.receive(encode(hb(1, 10.0), KEY), 10.001).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(2, 10.1), KEY), 10.101).verdict is Verdict.ACCEPTED
    # forged: signed with another key
    assert v.receive(encode(hb(3, 10.2), OTHER_KEY), 10.201).verdict is Verdict.FORGED
    # replayed: the exact datagram again
    again = encode(hb(2, 10.1), KEY)
    assert v.receive(again, 10.25).verdict is Verdict.REPLAYED
    # stale: a never-seen sequence, but sent 3 s before it arrives
    assert v.receive(encode(hb(3, 10.2), KEY), 13.3).verdict is Verdict.STALE
    # a foreign cluster under the same key
    assert v.receive(encode(hb(4, 13.3, cluster="c2"), KEY), 13.301).verdict is Verdict.FOREIGN
    assert v.receive(b"short", 13.4).verdict is Verdict.MALFORMED
    assert v.counters == {
        Verdict.ACCEPTED: 2, Verdict.FORGED: 1, Verdict.REPLAYED: 1, Verdict.STALE: 1,
        Verdict.FOREIGN: 1, Verdict.MALFORMED: 1,
    }


def test_reordering_within_window_is_accepted_once() -> None:
    v = HeartbeatVerifier("c1", KEY, window=8)
    for seq in (1, 3, 2, 5, 4):
        assert v.receive(encode(hb(seq, seq / 10), KEY), seq / 10 + 0.01).verdict is Verdict.ACCEPTED
    for seq in (1, 2, 3, 4, 5):
        assert v.receive(encode(hb(seq, seq / 10), KEY), 0.6).verdict is Verdict.REPLAYED
    # older than the window
    assert v.receive(encode(hb(20, 2.0), KEY), 2.01).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(11, 1.1), KEY), 2.02).verdict is Verdict.REPLAYED


def test_links_have_separate_windows() -> None:
    v = HeartbeatVerifier("c1", KEY)
    assert v.receive(encode(hb(7, 1.0, link="eth0"), KEY), 1.0).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(7, 1.0, link="eth1"), KEY), 1.0).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(7, 1.0, link="eth1"), KEY), 1.0).verdict is Verdict.REPLAYED


def test_restarted_agent_is_accepted_old_life_is_replay() -> None:
    v = HeartbeatVerifier("c1", KEY)
    assert v.receive(encode(hb(500, 50.0, inc=1), KEY), 50.0).verdict is Verdict.ACCEPTED
    # the agent restarted: sequence and monotonic clock start over, incarnation grows
    assert v.receive(encode(hb(1, 0.5, inc=2), KEY), 51.0).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(2, 0.6, inc=2), KEY), 51.1).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(501, 50.1, inc=1), KEY), 51.2).verdict is Verdict.REPLAYED


def test_clock_offset_between_hosts_is_not_staleness() -> None:
    # The sender's monotonic clock is 1000 s behind ours: only lateness relative to the
    # best observed transit counts.
    v = HeartbeatVerifier("c1", KEY, max_age=0.5)
    for seq in range(1, 20):
        assert v.receive(encode(hb(seq, seq * 0.1), KEY), 1000 + seq * 0.1 + 0.002).verdict is Verdict.ACCEPTED
    assert v.receive(encode(hb(20, 2.0), KEY), 1000 + 2.0 + 0.9).verdict is Verdict.STALE


@given(st.lists(st.integers(1, 200), max_size=300))
def test_no_sequence_is_ever_accepted_twice(seqs: list[int]) -> None:
    v = HeartbeatVerifier("c1", KEY, max_age=1e9)
    accepted: set[int] = set()
    for seq in seqs:
        verdict = v.receive(encode(hb(seq, 1.0), KEY), 1.0).verdict
        if verdict is Verdict.ACCEPTED:
            assert seq not in accepted
            accepted.add(seq)
        else:
            assert verdict is Verdict.REPLAYED
    assert v.counters[Verdict.ACCEPTED] == len(accepted)
    assert v.counters[Verdict.REPLAYED] == len(seqs) - len(accepted)


def test_short_key_refused() -> None:
    with pytest.raises(ValueError):
        HeartbeatVerifier("c1", b"short")
