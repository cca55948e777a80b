"""What to do about a host whose hardware redundancy changed: a table-driven machine (pure).

Role: one ``PolicyState`` per host, moved by the host's health (redundancy.py) through the
``TRANSITIONS`` table, and the actions each move implies under the configured policy
(``policies.components.on_degraded`` in the spec):

| policy | on degraded |
|---|---|
| ``alert`` | an alert event; the host keeps its guests and takes new ones |
| ``no-new-guests`` | alert + restrict: placement skips the host (HostStateFilter) |
| ``evacuate`` | alert + restrict + evacuate: the controller's maintenance evacuation moves the guests away (VMs live) before a second failure takes the host down |

States: ``normal`` → ``acting`` (the response is in force) → ``settling`` (repaired, waiting
for ``stability_window`` without a new fault) → ``normal`` with ``release`` (eligible again).
A host that fails outright (powered off, a group lost) goes to ``down`` with ``hand-over``:
whatever this policy held (a maintenance request) is dropped so the normal HA path (fence,
fail over) takes the host; maintenance would otherwise shield a dead host from failover.
``unknown`` health (BMC unreadable) moves nothing: no news is neither a fault nor a repair.

Must not: touch the store or the controller (nonstop/components/watcher.py applies actions),
read a clock (``now`` is a parameter).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from nonstop.core.components.redundancy import HostHealth


class PolicyState(str, Enum):
    NORMAL = "normal"
    ACTING = "acting"
    SETTLING = "settling"
    DOWN = "down"


class OnDegraded(str, Enum):
    ALERT = "alert"
    NO_NEW_GUESTS = "no-new-guests"
    EVACUATE = "evacuate"


class Action(str, Enum):
    ALERT = "alert"
    RESTRICT = "restrict"
    """No new guests on the host."""
    EVACUATE = "evacuate"
    RELEASE = "release"
    """Lift whatever this policy imposed: the host is eligible again."""
    HAND_OVER = "hand-over"
    """The host failed: drop this policy's hold (maintenance) so HA fails it over."""


class IllegalTransition(Exception):
    def __init__(self, state: PolicyState, health: HostHealth) -> None:
        super().__init__(f"no transition from {state.value} on health {health.value}")
        self.state, self.health = state, health


S, H = PolicyState, HostHealth

TRANSITIONS: dict[tuple[PolicyState, HostHealth], PolicyState] = {
    (S.NORMAL, H.HEALTHY): S.NORMAL,
    (S.NORMAL, H.DEGRADED): S.ACTING,
    (S.NORMAL, H.FAILED): S.DOWN,
    (S.ACTING, H.DEGRADED): S.ACTING,
    (S.ACTING, H.HEALTHY): S.SETTLING,
    (S.ACTING, H.FAILED): S.DOWN,
    (S.SETTLING, H.HEALTHY): S.SETTLING,
    (S.SETTLING, H.DEGRADED): S.ACTING,
    (S.SETTLING, H.FAILED): S.DOWN,
    (S.DOWN, H.FAILED): S.DOWN,
    (S.DOWN, H.DEGRADED): S.ACTING,
    (S.DOWN, H.HEALTHY): S.SETTLING,
}

RESPONSE: dict[OnDegraded, tuple[Action, ...]] = {
    OnDegraded.ALERT: (Action.ALERT,),
    OnDegraded.NO_NEW_GUESTS: (Action.ALERT, Action.RESTRICT),
    OnDegraded.EVACUATE: (Action.ALERT, Action.RESTRICT, Action.EVACUATE),
}


@dataclass(frozen=True)
class HostPolicy:
    state: PolicyState = PolicyState.NORMAL
    since: float = 0.0
    """When the current state was entered (settling: when the last fault was repaired)."""


@dataclass(frozen=True)
class PolicyStep:
    policy: HostPolicy
    actions: tuple[Action, ...] = ()
    reason: str = ""


def step(current: HostPolicy, health: HostHealth, now: float, on_degraded: OnDegraded,
         stability_window: float) -> PolicyStep:
    """The next policy state for one health reading, and what to do."""
    if health is HostHealth.UNKNOWN:
        return PolicyStep(current)
    try:
        target = TRANSITIONS[(current.state, health)]
    except KeyError:
        raise IllegalTransition(current.state, health) from None
    if target is current.state:
        if target is S.SETTLING and now - current.since >= stability_window:
            return PolicyStep(HostPolicy(S.NORMAL, now), (Action.RELEASE,),
                              f"no fault for {stability_window:g} s: eligible again")
        return PolicyStep(current)
    moved = HostPolicy(target, now)
    if target is S.ACTING:
        return PolicyStep(moved, RESPONSE[on_degraded], f"degraded: {on_degraded.value}")
    if target is S.DOWN:
        return PolicyStep(moved, (Action.HAND_OVER,), "host failed: the HA path takes over")
    if target is S.SETTLING:
        if stability_window <= 0:
            return PolicyStep(HostPolicy(S.NORMAL, now), (Action.RELEASE,), "repaired")
        return PolicyStep(moved, (), f"repaired: eligible again after {stability_window:g} s without a fault")
    return PolicyStep(moved)
