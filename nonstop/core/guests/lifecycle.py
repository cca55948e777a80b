"""The guest lifecycle as a table: which event moves a guest from which state to which.

Role: ``TRANSITIONS[state][event] -> state`` for every legal move, ``transition()`` which applies
one event and raises ``IllegalTransition`` for anything else, and ``observed_event()`` which says
which event explains a driver observation (so the agent can record a guest's history as events).

    pending --start--> starting --started--> running --stop--> stopping --stopped--> stopped
    starting/stopping/running/migrating/incoming --fail/died--> failed
    running --migrate--> migrating --migrated--> stopped (gone from the source)
                                   --migration_failed--> running
    (new host) pending --prepare_incoming--> incoming --started--> running
    stopped/failed --start--> starting;  failed --stop--> stopped (acknowledged, cleaned up)

Must not: do I/O, read a clock, or know drivers; it is data plus two small functions.
"""

from __future__ import annotations

from enum import Enum

from nonstop.core.guests.model import GuestState


class GuestEvent(str, Enum):
    START = "start"
    STARTED = "started"
    FAIL = "fail"
    """A start or stop attempt failed."""
    DIED = "died"
    """The guest went away on its own (crash, OOM kill)."""
    STOP = "stop"
    STOPPED = "stopped"
    MIGRATE = "migrate"
    MIGRATED = "migrated"
    MIGRATION_FAILED = "migration_failed"
    PREPARE_INCOMING = "prepare_incoming"


class IllegalTransition(Exception):
    def __init__(self, state: GuestState, event: GuestEvent) -> None:
        super().__init__(f"event {event.value} is not allowed in state {state.value}")
        self.state = state
        self.event = event


S = GuestState
E = GuestEvent

TRANSITIONS: dict[GuestState, dict[GuestEvent, GuestState]] = {
    S.PENDING: {E.START: S.STARTING, E.FAIL: S.FAILED, E.PREPARE_INCOMING: S.INCOMING, E.STOP: S.STOPPED},
    S.STARTING: {E.STARTED: S.RUNNING, E.FAIL: S.FAILED, E.DIED: S.FAILED, E.STOP: S.STOPPING},
    S.RUNNING: {E.STOP: S.STOPPING, E.DIED: S.FAILED, E.MIGRATE: S.MIGRATING, E.STOPPED: S.STOPPED},
    S.STOPPING: {E.STOPPED: S.STOPPED, E.FAIL: S.FAILED, E.DIED: S.STOPPED},
    S.STOPPED: {E.START: S.STARTING, E.STOP: S.STOPPED},
    S.FAILED: {E.START: S.STARTING, E.STOP: S.STOPPED},
    S.MIGRATING: {E.MIGRATED: S.STOPPED, E.MIGRATION_FAILED: S.RUNNING, E.DIED: S.FAILED},
    S.INCOMING: {E.STARTED: S.RUNNING, E.FAIL: S.FAILED, E.DIED: S.FAILED, E.STOP: S.STOPPED},
}
"""Every legal move. A state missing an event means the event is illegal there."""

ACTIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING, S.MIGRATING, S.INCOMING})
"""States in which the guest holds (or is acquiring) resources on its host."""

SETTLED_STATES = frozenset({S.RUNNING, S.STOPPED, S.FAILED, S.PENDING})
"""States with no operation in flight."""


def transition(state: GuestState, event: GuestEvent) -> GuestState:
    """The state after ``event``; raises ``IllegalTransition`` when the table has no such move."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalTransition(state, event) from None


def allowed_events(state: GuestState) -> frozenset[GuestEvent]:
    return frozenset(TRANSITIONS[state])


def observed_event(before: GuestState, after: GuestState) -> GuestEvent | None:
    """The single event that explains seeing ``after`` where ``before`` was recorded, or None
    when nothing changed or no single legal event explains it (the caller re-reads the guest)."""
    if before == after:
        return None
    for event, target in TRANSITIONS[before].items():
        if target == after:
            return event
    return None
