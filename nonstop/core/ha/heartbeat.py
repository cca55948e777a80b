"""Heartbeat datagrams: the wire codec and the receiver's anti-replay state (sans-IO).

Role: turn a ``Heartbeat`` into authenticated bytes and back, and decide for every
received datagram whether it is accepted, forged, replayed, stale or malformed — with a
counter for each outcome. A datagram is HMAC-SHA256 over everything before the tag,
under the cluster key, so a host that does not hold the key cannot speak for any host.

Why an ``incarnation``: the sequence number restarts at 0 when an agent restarts, and a
receiver that only remembered the highest sequence would then drop every heartbeat of
the restarted agent as a replay. The sender picks a new, larger incarnation at start (its
wall-clock start time in ns); the receiver orders datagrams by (incarnation, sequence),
so old datagrams of an earlier life are still replays.

Why staleness is measured against a learned offset: the sender's ``sent_ns`` comes from
*its* monotonic clock, which a receiver on another machine does not share. The receiver
learns the smallest observed (arrival − send) per (host, link, incarnation) — transit
plus clock offset — and calls a datagram stale when it arrives more than ``max_age``
later than that best case. On one machine (the lab) the offset is simply the transit time.

Must not: open sockets, read clocks or files; ``now`` is always a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum

MAGIC = b"NSHB"
VERSION = 1
TAG_BYTES = 32
KEY_BYTES = 32
MAX_TEXT = 255
_FIXED = struct.Struct("!QQQ")  # incarnation, sequence, sent_ns
_HEADER = struct.Struct("!4sB")


class HeartbeatError(Exception):
    """Base of every reason a datagram is refused."""


class MalformedHeartbeat(HeartbeatError):
    """Bytes that do not parse as a heartbeat of this version."""


class ForgedHeartbeat(HeartbeatError):
    """The MAC does not verify under the cluster key."""


@dataclass(frozen=True)
class Heartbeat:
    """One heartbeat, as the agent of ``host`` sends it on ``link``."""

    cluster: str
    host: str
    link: str
    incarnation: int
    sequence: int
    sent_ns: int
    """The sender's monotonic clock at send time, in nanoseconds."""
    agent_state: str
    guests_digest: bytes
    """``guests_digest()`` of the agent's guests: changes whenever any guest's state does."""

    @property
    def sent_at(self) -> float:
        return self.sent_ns / 1e9


def guests_digest(states: Mapping[str, str]) -> bytes:
    """A 16-byte digest of guest name → state, independent of mapping order."""
    h = hashlib.sha256()
    for name in sorted(states):
        h.update(name.encode())
        h.update(b"\0")
        h.update(states[name].encode())
        h.update(b"\n")
    return h.digest()[:16]


def _text(value: str, what: str) -> bytes:
    raw = value.encode()
    if len(raw) > MAX_TEXT:
        raise ValueError(f"{what} is {len(raw)} bytes; at most {MAX_TEXT}")
    return bytes([len(raw)]) + raw


def encode(heartbeat: Heartbeat, key: bytes) -> bytes:
    """The datagram for ``heartbeat``, tagged with HMAC-SHA256 under ``key``."""
    if len(heartbeat.guests_digest) > MAX_TEXT:
        raise ValueError("guests_digest too long")
    body = b"".join(
        (
            _HEADER.pack(MAGIC, VERSION),
            _text(heartbeat.cluster, "cluster"),
            _text(heartbeat.host, "host"),
            _text(heartbeat.link, "link"),
            _FIXED.pack(heartbeat.incarnation, heartbeat.sequence, heartbeat.sent_ns),
            _text(heartbeat.agent_state, "agent_state"),
            bytes([len(heartbeat.guests_digest)]) + heartbeat.guests_digest,
        )
    )
    return body + hmac.new(key, body, hashlib.sha256).digest()


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedHeartbeat("truncated datagram")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def blob(self) -> bytes:
        return self.take(self.take(1)[0])

    def text(self) -> str:
        try:
            return self.blob().decode()
        except UnicodeDecodeError as exc:
            raise MalformedHeartbeat("text field is not UTF-8") from exc


def decode(data: bytes, key: bytes) -> Heartbeat:
    """Parse and authenticate a datagram; raises ``MalformedHeartbeat`` or ``ForgedHeartbeat``."""
    if len(data) < _HEADER.size + TAG_BYTES:
        raise MalformedHeartbeat("datagram too short")
    body, tag = data[:-TAG_BYTES], data[-TAG_BYTES:]
    # Authenticate before parsing so a forger learns nothing from parse errors.
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), tag):
        raise ForgedHeartbeat("MAC does not verify")
    reader = _Reader(body)
    magic, version = _HEADER.unpack(reader.take(_HEADER.size))
    if magic != MAGIC or version != VERSION:
        raise MalformedHeartbeat(f"not a version-{VERSION} heartbeat")
    cluster, host, link = reader.text(), reader.text(), reader.text()
    incarnation, sequence, sent_ns = _FIXED.unpack(reader.take(_FIXED.size))
    agent_state = reader.text()
    digest = reader.blob()
    if reader.pos != len(body):
        raise MalformedHeartbeat("trailing bytes")
    return Heartbeat(cluster, host, link, incarnation, sequence, sent_ns, agent_state, digest)


# ------------------------------------------------------------------ the receiver side


class Verdict(str, Enum):
    ACCEPTED = "accepted"
    FORGED = "forged"
    REPLAYED = "replayed"
    STALE = "stale"
    MALFORMED = "malformed"
    FOREIGN = "foreign"
    """Authentic, but for another cluster (the key is shared by mistake)."""


@dataclass(frozen=True)
class Reception:
    """What the receiver decided about one datagram."""

    verdict: Verdict
    heartbeat: Heartbeat | None
    reason: str = ""


@dataclass
class _LinkWindow:
    incarnation: int
    highest: int
    seen: int  # bit i set: sequence (highest - i) was accepted
    offset: float  # smallest (arrival - send) seen in this incarnation, seconds


@dataclass
class HeartbeatVerifier:
    """The receiver's pure state: MAC check, per-(host, link) anti-replay window, counters.

    ``receive(data, now)`` is the only entry point; ``now`` is the receiver's monotonic
    time in seconds at arrival. A window of ``window`` sequences tolerates reordering
    (two links, different paths) while refusing any sequence already accepted.
    """

    cluster: str
    key: bytes
    max_age: float = 1.0
    window: int = 64
    counters: dict[Verdict, int] = field(default_factory=lambda: {v: 0 for v in Verdict})
    _links: dict[tuple[str, str], _LinkWindow] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.key) < 16:
            raise ValueError("cluster key must be at least 16 bytes")

    def _refuse(self, verdict: Verdict, reason: str, heartbeat: Heartbeat | None = None) -> Reception:
        self.counters[verdict] += 1
        return Reception(verdict, heartbeat, reason)

    def receive(self, data: bytes, now: float) -> Reception:
        try:
            hb = decode(data, self.key)
        except ForgedHeartbeat as exc:
            return self._refuse(Verdict.FORGED, str(exc))
        except MalformedHeartbeat as exc:
            return self._refuse(Verdict.MALFORMED, str(exc))
        if hb.cluster != self.cluster:
            return self._refuse(Verdict.FOREIGN, f"cluster {hb.cluster!r}", hb)
        return self._check_order(hb, now)

    def _check_order(self, hb: Heartbeat, now: float) -> Reception:
        key = (hb.host, hb.link)
        delay = now - hb.sent_at
        state = self._links.get(key)
        if state is None or hb.incarnation > state.incarnation:
            # A new life of the agent: start a fresh window and offset.
            self._links[key] = _LinkWindow(hb.incarnation, hb.sequence, 1, delay)
            self.counters[Verdict.ACCEPTED] += 1
            return Reception(Verdict.ACCEPTED, hb)
        if hb.incarnation < state.incarnation:
            return self._refuse(Verdict.REPLAYED, "earlier incarnation", hb)
        if delay - state.offset > self.max_age:
            return self._refuse(Verdict.STALE, f"{delay - state.offset:.3f}s late", hb)
        if hb.sequence > state.highest:
            shift = hb.sequence - state.highest
            state.seen = ((state.seen << shift) | 1) & ((1 << self.window) - 1) if shift < self.window else 1
            state.highest = hb.sequence
        else:
            back = state.highest - hb.sequence
            if back >= self.window:
                return self._refuse(Verdict.REPLAYED, "sequence older than the window", hb)
            if state.seen & (1 << back):
                return self._refuse(Verdict.REPLAYED, f"sequence {hb.sequence} already seen", hb)
            state.seen |= 1 << back
        state.offset = min(state.offset, delay)
        self.counters[Verdict.ACCEPTED] += 1
        return Reception(Verdict.ACCEPTED, hb)

    def forget(self, host: str) -> None:
        """Drop every window of ``host`` (it was removed from the cluster)."""
        for key in [k for k in self._links if k[0] == host]:
            del self._links[key]
