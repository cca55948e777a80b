"""Host liveness: a table-driven state machine per host, fed by per-link phi detectors.

Role: turn "which links of this host are still heard" into one host state and a log of
transitions with reasons:

- ``up``: every link is heard.
- ``link-degraded``: at least one link is silent but another is heard — the host is
  alive, its redundancy is gone. Never a reason to fail over.
- ``suspect``: every link is silent past the suspicion threshold (φ ≥ ``threshold``).
- ``dead``: every link is silent past the death threshold (φ ≥ ``dead_threshold``);
  the controller fences, then fails over.
- ``maintenance``: set by an operator; link events are recorded but never make the host
  suspect or dead ("maintenance is never failed").
- ``unknown``: not heard since the monitor started (a start-up grace applies).

``classify`` maps per-link φ values to one ``LinkEvent``; ``LivenessMachine.apply`` looks
the (state, event) pair up in ``TRANSITIONS``; a pair missing from the table raises
``IllegalTransition`` (e.g. ``up`` cannot jump to ``dead`` without passing ``suspect``,
and nothing but ``exit-maintenance`` leads out of maintenance). ``ClusterLiveness``
bundles detectors and machines for every host so a controller only feeds arrivals and
calls ``evaluate(now)``.

Must not: read clocks, sockets or the store; fence or move anything (it only reports).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from nonstop.core.ha.phi import PhiAccrualDetector, PhiConfig
from nonstop.core.spec import HaPolicy


class HostState(str, Enum):
    UNKNOWN = "unknown"
    UP = "up"
    LINK_DEGRADED = "link-degraded"
    SUSPECT = "suspect"
    DEAD = "dead"
    MAINTENANCE = "maintenance"


class LinkEvent(str, Enum):
    ALL_LINKS_UP = "all-links-up"
    SOME_LINKS_DOWN = "some-links-down"
    ALL_LINKS_SUSPECT = "all-links-suspect"
    ALL_LINKS_DEAD = "all-links-dead"
    ENTER_MAINTENANCE = "enter-maintenance"
    EXIT_MAINTENANCE = "exit-maintenance"


class IllegalTransition(Exception):
    def __init__(self, host: str, state: HostState, event: LinkEvent) -> None:
        super().__init__(f"host {host}: no transition from {state.value} on {event.value}")
        self.host, self.state, self.event = host, state, event


S, E = HostState, LinkEvent
_M = S.MAINTENANCE
TRANSITIONS: dict[HostState, dict[LinkEvent, HostState]] = {
    S.UNKNOWN: {
        E.ALL_LINKS_UP: S.UP,
        E.SOME_LINKS_DOWN: S.LINK_DEGRADED,
        E.ALL_LINKS_SUSPECT: S.SUSPECT,  # never heard within the start-up grace
        E.ENTER_MAINTENANCE: _M,
    },
    S.UP: {
        E.ALL_LINKS_UP: S.UP,
        E.SOME_LINKS_DOWN: S.LINK_DEGRADED,
        E.ALL_LINKS_SUSPECT: S.SUSPECT,
        E.ENTER_MAINTENANCE: _M,
    },
    S.LINK_DEGRADED: {
        E.ALL_LINKS_UP: S.UP,
        E.SOME_LINKS_DOWN: S.LINK_DEGRADED,
        E.ALL_LINKS_SUSPECT: S.SUSPECT,
        E.ENTER_MAINTENANCE: _M,
    },
    S.SUSPECT: {
        E.ALL_LINKS_UP: S.UP,
        E.SOME_LINKS_DOWN: S.LINK_DEGRADED,
        E.ALL_LINKS_SUSPECT: S.SUSPECT,
        E.ALL_LINKS_DEAD: S.DEAD,
        E.ENTER_MAINTENANCE: _M,
    },
    S.DEAD: {
        # A dead host stays dead until it is heard again (it was fenced and came back).
        E.ALL_LINKS_UP: S.UP,
        E.SOME_LINKS_DOWN: S.LINK_DEGRADED,
        E.ALL_LINKS_SUSPECT: S.DEAD,
        E.ALL_LINKS_DEAD: S.DEAD,
        E.ENTER_MAINTENANCE: _M,
    },
    _M: {
        E.ALL_LINKS_UP: _M,
        E.SOME_LINKS_DOWN: _M,
        E.ALL_LINKS_SUSPECT: _M,
        E.ENTER_MAINTENANCE: _M,
        E.EXIT_MAINTENANCE: S.UNKNOWN,
        # ALL_LINKS_DEAD is absent on purpose: classify() never emits it for a host in
        # maintenance, and if a caller does, that is a bug worth an exception.
    },
}
del S, E, _M


@dataclass(frozen=True)
class Transition:
    """One state change (or a change of which links are down), for the event log."""

    host: str
    before: HostState
    after: HostState
    event: LinkEvent
    at: float
    down_links: frozenset[str]
    reason: str


@dataclass(frozen=True)
class LivenessConfig:
    phi: PhiConfig = field(default_factory=PhiConfig)
    dead_threshold: float = 12.0
    """φ every link must reach for ``dead``; must be ≥ ``phi.threshold``."""
    startup_grace: float = 2.0
    """A link never heard for this long after the monitor started counts as suspect, and
    for twice as long as dead (a controller that starts while a host is down must still
    fence it)."""

    def __post_init__(self) -> None:
        if self.dead_threshold < self.phi.threshold:
            raise ValueError("dead_threshold must be >= phi.threshold")


def liveness_config(policy: HaPolicy) -> LivenessConfig:
    """Detector settings from the spec's ``policies.ha``, scaled to its heartbeat interval.

    At the default 100 ms this is exactly ``LivenessConfig()``: floor = interval/4, acceptable
    pause = 2 intervals, so detection stays at ~4.3 intervals for any interval.
    """
    interval = policy.heartbeat_interval
    phi = PhiConfig(
        threshold=policy.phi_threshold,
        expected_interval=interval,
        min_std_dev=interval / 4,
        acceptable_pause=2 * interval,
        max_sample=max(2.0, 20 * interval),
    )
    return LivenessConfig(phi=phi, dead_threshold=max(12.0, 1.5 * policy.phi_threshold), startup_grace=max(2.0, 20 * interval))


def classify(phis: Mapping[str, float], threshold: float, dead_threshold: float) -> tuple[LinkEvent, frozenset[str]]:
    """The event for a host whose links have these φ values, and the set of links down."""
    if not phis:
        raise ValueError("a host needs at least one link")
    down = frozenset(link for link, phi in phis.items() if phi >= threshold)
    if len(down) < len(phis):
        return (LinkEvent.ALL_LINKS_UP if not down else LinkEvent.SOME_LINKS_DOWN), down
    if all(phi >= dead_threshold for phi in phis.values()):
        return LinkEvent.ALL_LINKS_DEAD, down
    return LinkEvent.ALL_LINKS_SUSPECT, down


class LivenessMachine:
    """The state of one host; ``apply`` returns a ``Transition`` when anything changed."""

    def __init__(self, host: str, state: HostState = HostState.UNKNOWN) -> None:
        self.host = host
        self.state = state
        self.down_links: frozenset[str] = frozenset()
        self.since = 0.0

    def apply(self, event: LinkEvent, now: float, down_links: frozenset[str] = frozenset(), reason: str = "") -> Transition | None:
        after = TRANSITIONS[self.state].get(event)
        if after is None:
            raise IllegalTransition(self.host, self.state, event)
        if after == self.state and down_links == self.down_links:
            return None
        transition = Transition(self.host, self.state, after, event, now, down_links, reason)
        if after != self.state:
            self.since = now
        self.state, self.down_links = after, down_links
        return transition


class ClusterLiveness:
    """Detectors for every (host, link) and a machine per host.

    The controller calls ``heartbeat(host, link, now)`` for every accepted datagram and
    ``evaluate(now)`` on a short tick (e.g. every 20 ms); the returned transitions are
    what it acts on.
    """

    def __init__(self, links: Mapping[str, Iterable[str]], config: LivenessConfig | None = None, started_at: float = 0.0) -> None:
        self.config = config or LivenessConfig()
        self.started_at = started_at
        self.detectors: dict[str, dict[str, PhiAccrualDetector]] = {
            host: {link: PhiAccrualDetector(self.config.phi) for link in host_links} for host, host_links in links.items()
        }
        for host, detectors in self.detectors.items():
            if not detectors:
                raise ValueError(f"host {host} has no links")
        self.machines = {host: LivenessMachine(host) for host in self.detectors}
        self.known_since = {host: started_at for host in self.detectors}

    def state(self, host: str) -> HostState:
        return self.machines[host].state

    def set_links(self, host: str, links: Iterable[str], now: float | None = None) -> None:
        """Add a host, or change its links (kept links keep their history). A new host's
        start-up grace counts from ``now`` (default: when the monitor started)."""
        wanted = list(links)
        if not wanted:
            raise ValueError(f"host {host} has no links")
        current = self.detectors.setdefault(host, {})
        for link in list(current):
            if link not in wanted:
                del current[link]
        for link in wanted:
            current.setdefault(link, PhiAccrualDetector(self.config.phi))
        if host not in self.machines:
            self.machines[host] = LivenessMachine(host)
            self.known_since[host] = self.started_at if now is None else now

    def remove_host(self, host: str) -> None:
        self.detectors.pop(host, None)
        self.machines.pop(host, None)
        self.known_since.pop(host, None)

    def heartbeat(self, host: str, link: str, now: float) -> bool:
        """Record an arrival; False (and ignored) for an unknown host or link."""
        detector = self.detectors.get(host, {}).get(link)
        if detector is None:
            return False
        detector.heartbeat(now)
        return True

    def phis(self, host: str, now: float) -> dict[str, float]:
        since_start = now - self.known_since[host]
        grace = self.config.startup_grace
        never_heard = 0.0
        if since_start >= 2 * grace:
            never_heard = self.config.dead_threshold
        elif since_start >= grace:
            never_heard = self.config.phi.threshold
        return {
            link: never_heard if detector.last_arrival is None else detector.phi(now)
            for link, detector in self.detectors[host].items()
        }

    def evaluate(self, now: float) -> list[Transition]:
        out: list[Transition] = []
        for host, machine in self.machines.items():
            in_grace = now - self.known_since[host] < self.config.startup_grace
            if in_grace and all(d.last_arrival is None for d in self.detectors[host].values()):
                continue  # nothing known yet: stay unknown rather than claim "up"
            phis = self.phis(host, now)
            event, down = classify(phis, self.config.phi.threshold, self.config.dead_threshold)
            if machine.state is HostState.MAINTENANCE and event is LinkEvent.ALL_LINKS_DEAD:
                event = LinkEvent.ALL_LINKS_SUSPECT  # maintenance is never failed
            reason = "phi " + ", ".join(f"{link}={phi:.1f}" for link, phi in sorted(phis.items()))
            if event is LinkEvent.ALL_LINKS_DEAD and machine.state not in (HostState.SUSPECT, HostState.DEAD):
                # A late tick can see a host go from up to dead at once; the table wants it
                # to pass through suspect, so it does, in two logged steps.
                step = machine.apply(LinkEvent.ALL_LINKS_SUSPECT, now, down, reason)
                if step is not None:
                    out.append(step)
            transition = machine.apply(event, now, down, reason)
            if transition is not None:
                out.append(transition)
        return out

    def set_maintenance(self, host: str, enabled: bool, now: float, reason: str = "operator") -> Transition | None:
        event = LinkEvent.ENTER_MAINTENANCE if enabled else LinkEvent.EXIT_MAINTENANCE
        return self.machines[host].apply(event, now, self.machines[host].down_links, reason)
