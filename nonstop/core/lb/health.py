"""The backend health state machine, as a table (h11 style), and the admin state.

Role: decide a backend's health from events: active check results (with rise/fall
hysteresis), passive outlier ejection and its expiry. The table ``TRANSITIONS`` maps
(state, event) to the next state; events that count toward a threshold come in two kinds
(``CHECK_OK`` vs ``CHECK_OK_RISE``) and ``HealthMachine`` chooses the kind from its
counters, so every transition is visible in one table and anything not in it raises
``IllegalHealthTransition``.

States:
  UP       serving; the last check passed (or no checks are configured)
  FAILING  still serving, but 1..fall-1 consecutive checks failed
  DOWN     not serving
  RISING   not serving, 1..rise-1 consecutive checks passed
  EJECTED  not serving: passive outlier detection ejected it until a deadline

The admin state (READY / DRAIN / MAINT) is separate: an operator's wish, orthogonal to
health. A backend takes new work only when health is UP or FAILING and admin is READY.

Must not: do I/O, read a clock (times are parameters), or know about sockets.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Health(str, Enum):
    UP = "up"
    FAILING = "failing"
    DOWN = "down"
    RISING = "rising"
    EJECTED = "ejected"


class HealthEvent(str, Enum):
    CHECK_OK = "check-ok"
    CHECK_OK_RISE = "check-ok-rise"
    """A passing check that completes ``rise`` consecutive passes."""
    CHECK_FAIL = "check-fail"
    CHECK_FAIL_FALL = "check-fail-fall"
    """A failing check that completes ``fall`` consecutive failures."""
    EJECT = "eject"
    EJECTION_END = "ejection-end"
    FORCE_UP = "force-up"
    FORCE_DOWN = "force-down"


class AdminState(str, Enum):
    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


class IllegalHealthTransition(Exception):
    """An event that has no meaning in the current state (a bug in the caller)."""

    def __init__(self, state: Health, event: HealthEvent) -> None:
        super().__init__(f"health event {event.value} is illegal in state {state.value}")
        self.state = state
        self.event = event


H, E = Health, HealthEvent

TRANSITIONS: dict[Health, dict[HealthEvent, Health]] = {
    H.UP: {
        E.CHECK_OK: H.UP,
        E.CHECK_OK_RISE: H.UP,
        E.CHECK_FAIL: H.FAILING,
        E.CHECK_FAIL_FALL: H.DOWN,
        E.EJECT: H.EJECTED,
        E.FORCE_UP: H.UP,
        E.FORCE_DOWN: H.DOWN,
    },
    H.FAILING: {
        E.CHECK_OK: H.UP,
        E.CHECK_OK_RISE: H.UP,
        E.CHECK_FAIL: H.FAILING,
        E.CHECK_FAIL_FALL: H.DOWN,
        E.EJECT: H.EJECTED,
        E.FORCE_UP: H.UP,
        E.FORCE_DOWN: H.DOWN,
    },
    H.DOWN: {
        E.CHECK_OK: H.RISING,
        E.CHECK_OK_RISE: H.UP,
        E.CHECK_FAIL: H.DOWN,
        E.CHECK_FAIL_FALL: H.DOWN,
        E.EJECT: H.DOWN,  # late passive errors from in-flight work: already out
        E.FORCE_UP: H.UP,
        E.FORCE_DOWN: H.DOWN,
    },
    H.RISING: {
        E.CHECK_OK: H.RISING,
        E.CHECK_OK_RISE: H.UP,
        E.CHECK_FAIL: H.DOWN,
        E.CHECK_FAIL_FALL: H.DOWN,
        E.EJECT: H.RISING,
        E.FORCE_UP: H.UP,
        E.FORCE_DOWN: H.DOWN,
    },
    H.EJECTED: {
        # checks keep running while ejected; only a full ``fall`` streak makes it DOWN
        E.CHECK_OK: H.EJECTED,
        E.CHECK_OK_RISE: H.EJECTED,
        E.CHECK_FAIL: H.EJECTED,
        E.CHECK_FAIL_FALL: H.DOWN,
        E.EJECT: H.EJECTED,
        E.EJECTION_END: H.UP,
        E.FORCE_UP: H.UP,
        E.FORCE_DOWN: H.DOWN,
    },
}

SERVING = frozenset({Health.UP, Health.FAILING})


def next_health(state: Health, event: HealthEvent) -> Health:
    """The table lookup; raises ``IllegalHealthTransition`` for a missing cell."""
    try:
        return TRANSITIONS[state][event]
    except KeyError:
        raise IllegalHealthTransition(state, event) from None


@dataclass(frozen=True, slots=True)
class HealthChange:
    """What one event did: the shell logs it and, when ``serving`` flips, acts on it."""

    before: Health
    after: Health
    event: HealthEvent

    @property
    def became_serving(self) -> bool:
        return self.before not in SERVING and self.after in SERVING

    @property
    def stopped_serving(self) -> bool:
        return self.before in SERVING and self.after not in SERVING


class HealthMachine:
    """One backend's health with rise/fall counters; events go through the table."""

    __slots__ = ("state", "rise", "fall", "_passes", "_fails")

    def __init__(self, rise: int, fall: int, initial: Health = Health.UP) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be at least 1")
        self.state = initial
        self.rise = rise
        self.fall = fall
        self._passes = 0
        self._fails = 0

    @property
    def serving(self) -> bool:
        return self.state in SERVING

    def apply(self, event: HealthEvent) -> HealthChange:
        before = self.state
        self.state = next_health(before, event)
        if event in (HealthEvent.FORCE_UP, HealthEvent.FORCE_DOWN, HealthEvent.EJECTION_END):
            self._passes = self._fails = 0
        return HealthChange(before, self.state, event)

    def check_result(self, ok: bool) -> HealthChange:
        """Feed one active check result; the counters choose the event kind."""
        if ok:
            self._fails = 0
            self._passes += 1
            event = HealthEvent.CHECK_OK_RISE if self._passes >= self.rise else HealthEvent.CHECK_OK
        else:
            self._passes = 0
            self._fails += 1
            event = HealthEvent.CHECK_FAIL_FALL if self._fails >= self.fall else HealthEvent.CHECK_FAIL
        change = self.apply(event)
        if change.after is Health.UP and change.before is not Health.UP:
            self._passes = 0
        return change
