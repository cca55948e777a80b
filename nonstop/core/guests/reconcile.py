"""The agent's decision: desired guests + what the drivers observe → the actions to take now.

Role: a level-triggered, purely computational function. For each guest the store assigns to this
host (``desired``) or that the drivers still have (``observed``/``applied``), ``reconcile`` returns
frozen action records — spawn what is missing, start what is stopped, stop what should not run,
destroy what is not ours any more, hot-plug vCPUs/memory/vNICs to match, migrate when asked,
respawn what failed — honoring, in this order: fencing epochs (never start a guest whose desired
record carries an older epoch than the store's current one: the record is stale), the per-guest
lock (never start a guest another host holds), and the retry budget (exponential back-off, then
give up and report). The agent (``nonstop.agent``) applies the actions and feeds back outcomes
through ``record_failure``/``record_success``.

Live migrations (nonstop/core/guests/migration.py): a view carries the step of the migration
operation its desired record names (or, on the destination, the one it is finishing). The
record is read through ``effective_desired``: once the operation is ``done`` the guest is the
destination's although the record still names the source, so the source never restarts or
reports it and the destination finishes, runs and reports it. The destination's steps
(prepare, finish, drop an incoming copy nobody needs) are actions like any other.

Must not: do I/O, read a clock (``now`` is a parameter), or call drivers. Same input, same output.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace

from nonstop.core.guests import migration as mig
from nonstop.core.guests.model import Capabilities, GuestDefinition, GuestState, GuestStatus, VnicDefinition

# ------------------------------------------------------------------------- retry budget


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    """Failed starts allowed before giving up (the guest then stays FAILED with the last reason)."""
    base_delay: float = 0.5
    max_delay: float = 30.0
    stable_after: float = 30.0
    """A guest that has run this long gets a fresh budget (so a rare crash is always retried)."""
    stop_timeout: float = 10.0
    restart_to_apply: bool = True
    """Restart a running guest when a changed definition cannot be applied live."""


@dataclass(frozen=True)
class RetryState:
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_reason: str | None = None
    gave_up: bool = False
    fingerprint: str = ""
    """Of the definition the attempts were for; a new definition starts a fresh budget."""


def fingerprint(definition: GuestDefinition) -> str:
    """Identity of what would be started: any change to the definition resets the retry budget."""
    data = definition.to_dict()
    # Not part of what runs: power intent, migration request, fencing token, driver-chosen names.
    for live in ("running", "migrate_to", "migration_id", "fencing_epoch"):
        data.pop(live, None)
    for vnic in data["vnics"]:
        vnic.pop("host_ifname", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def attempt_key(definition: GuestDefinition) -> str:
    """What a retry budget is for: the definition *and* its fencing epoch — a guest placed here again
    (new epoch) or changed gets a fresh budget, even after the agent gave up on it."""
    return f"{fingerprint(definition)}@{definition.fencing_epoch}"


def backoff_delay(attempts: int, policy: RetryPolicy) -> float:
    """Delay before attempt ``attempts + 1``: base × 2^(attempts-1), capped."""
    if attempts <= 0:
        return 0.0
    return float(min(policy.max_delay, policy.base_delay * 2 ** (attempts - 1)))


def record_failure(
    retry: RetryState, *, now: float, reason: str, fp: str, policy: RetryPolicy, permanent: bool = False
) -> RetryState:
    """The budget after a failed attempt; ``permanent`` (bad input) gives up at once."""
    base = retry if retry.fingerprint == fp else RetryState(fingerprint=fp)
    attempts = base.attempts + 1
    gave_up = permanent or attempts >= policy.max_attempts
    return replace(
        base,
        attempts=attempts,
        next_attempt_at=now + backoff_delay(attempts, policy),
        last_reason=reason,
        gave_up=gave_up,
        fingerprint=fp,
    )


def record_success(retry: RetryState, *, running_for: float, policy: RetryPolicy) -> RetryState:
    """Forget past failures once the guest has been running for ``stable_after`` seconds."""
    if retry.attempts and running_for >= policy.stable_after:
        return RetryState(fingerprint=retry.fingerprint)
    return retry


def may_attempt(retry: RetryState, *, now: float, fp: str) -> bool:
    if retry.fingerprint != fp:
        return True
    return not retry.gave_up and now >= retry.next_attempt_at


# ----------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Spawn:
    definition: GuestDefinition
    reason: str = "assigned to this host and not present"


@dataclass(frozen=True)
class Start:
    definition: GuestDefinition
    reason: str = "stopped but desired running"


@dataclass(frozen=True)
class Respawn:
    """Destroy the guest's current incarnation and spawn the desired definition."""

    definition: GuestDefinition
    reason: str


@dataclass(frozen=True)
class Stop:
    name: str
    timeout: float
    reason: str = "desired stopped"


@dataclass(frozen=True)
class Destroy:
    name: str
    timeout: float
    reason: str = "no longer assigned to this host"


@dataclass(frozen=True)
class SetVcpus:
    name: str
    vcpus: int


@dataclass(frozen=True)
class SetMemory:
    name: str
    memory: int


@dataclass(frozen=True)
class AttachVnic:
    name: str
    vnic: VnicDefinition


@dataclass(frozen=True)
class DetachVnic:
    name: str
    mac: str


@dataclass(frozen=True)
class Migrate:
    """Source: create (or resume) migration ``migration_id`` and carry it out."""

    definition: GuestDefinition
    destination: str
    migration_id: str


@dataclass(frozen=True)
class PrepareIncoming:
    """Destination, migration at ``requested``: create the incoming copy (of the operation's
    definition, ``migration.handed_over`` of the request), then ``ready``."""

    name: str
    migration_id: str


@dataclass(frozen=True)
class FinishIncoming:
    """Destination, migration ``done``: run the copy, re-bind the runner lock, then ``finished``."""

    name: str
    migration_id: str


@dataclass(frozen=True)
class FailMigration:
    """Move the migration to ``failed``: the destination cannot receive the guest, or the
    source's guest stopped or failed while no copy was under way."""

    name: str
    migration_id: str
    reason: str


@dataclass(frozen=True)
class DropIncoming:
    """An incoming copy that no migration into this host needs any more (it never ran)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Hold:
    """Do nothing on purpose; ``reason`` says why (reported, logged)."""

    name: str
    reason: str


@dataclass(frozen=True)
class RefuseStale:
    """The desired record's fencing epoch is older than the store's: do not start from it."""

    name: str
    record_epoch: int
    current_epoch: int


@dataclass(frozen=True)
class Blocked:
    """Another host holds the guest's lock: starting here could run it twice."""

    name: str
    holder: str


@dataclass(frozen=True)
class GiveUp:
    """The retry budget is spent (or the input is bad): report FAILED and stop trying."""

    name: str
    reason: str


@dataclass(frozen=True)
class Wait:
    """Backing off after a failure; nothing to do before ``until``."""

    name: str
    until: float
    reason: str


@dataclass(frozen=True)
class Unsupported:
    name: str
    operation: str


Action = (
    Spawn | Start | Respawn | Stop | Destroy | SetVcpus | SetMemory | AttachVnic | DetachVnic | Migrate
    | PrepareIncoming | FinishIncoming | FailMigration | DropIncoming
    | RefuseStale | Blocked | GiveUp | Wait | Unsupported | Hold
)

STARTING_ACTIONS = (Spawn, Start, Respawn)
"""Actions that make a guest run: the agent takes the guest's lock before applying them."""


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class GuestView:
    """Everything the agent knows about one guest name on its host."""

    name: str
    desired: GuestDefinition | None = None
    observed: GuestStatus | None = None
    applied: GuestDefinition | None = None
    """The definition the driver currently runs (after hot-plugs); None when unknown."""
    retry: RetryState = RetryState()
    current_epoch: int | None = None
    """The guest's fencing epoch in the store (None: never fenced)."""
    lock_holder: str | None = None
    migration: mig.MigrationView | None = None
    """The migration operation the desired record names (``migration_id``), or the one into this
    host the agent is finishing after the controller already rewrote the record; None: none."""


_IN_FLIGHT = frozenset({GuestState.STARTING, GuestState.STOPPING, GuestState.MIGRATING})


def decide(host: str, view: GuestView, caps: Capabilities | None, *, now: float, policy: RetryPolicy) -> list[Action]:
    """The actions for one guest (usually zero or one; hot-plug may give several)."""
    d, o, m = mig.effective_desired(view.desired, view.migration), view.observed, view.migration
    if d is None or d.host != host:
        return _not_ours(host, view, caps, policy=policy)
    if caps is None:
        return [GiveUp(d.name, f"no driver on this host runs {d.kind} guests")]
    if m is not None and m.destination == host and m.step == mig.DONE:
        # Handed over to us: the copy here holds the guest's memory; run it (a start, so gated).
        # A copy that is gone or failed is not run: finishing closes the operation, then it starts afresh.
        return _start_gate(host, d, view, now=now) or [FinishIncoming(d.name, m.id)]
    if m is not None and mig.names(d, m) and m.step == mig.READY and (o is None or o.state in _DOWN):
        # We are the source and no copy is under way (the agent restarted mid-migration).
        if o is None:
            return [Hold(d.name, f"migration {m.id} to {m.destination} is ready and the guest is gone here: "
                                 "not restarting it (the copy may have completed); waiting for done or failed")]
        return [FailMigration(d.name, m.id, f"the guest is {o.state.value} on {host}, the source")]
    if o is not None and (o.state in _IN_FLIGHT or o.state is GuestState.INCOMING):
        return []
    if o is not None and o.state is GuestState.RUNNING:
        return _running(host, d, o, view, caps, now=now, policy=policy)
    if not d.running:
        if o is not None and o.state is GuestState.FAILED:
            return [Stop(d.name, policy.stop_timeout, "desired stopped; clearing the failed incarnation")]
        return []
    return _wants_start(host, d, o, view, now=now, policy=policy)


_DOWN = frozenset({GuestState.STOPPED, GuestState.FAILED, GuestState.PENDING})


def _not_ours(host: str, view: GuestView, caps: Capabilities | None, *, policy: RetryPolicy) -> list[Action]:
    """A guest the store does not (or no longer) assign here: an incoming migration's, or leftovers."""
    d, o, m = view.desired, view.observed, view.migration
    if d is not None and m is not None and mig.names(d, m) and m.destination == host and m.step == mig.REQUESTED:
        if o is None:
            if caps is None or not caps.live_migration:
                return [FailMigration(view.name, m.id, f"{host} cannot receive {d.kind} guests live")]
            return [PrepareIncoming(view.name, m.id)]
        if o.state is GuestState.INCOMING:
            return []  # prepared; ``ready`` follows (or the source gives up waiting for it)
        return [Destroy(view.name, policy.stop_timeout, f"a leftover copy is in the way of migration {m.id}")]
    if d is not None and m is not None and mig.names(d, m) and m.destination == host and m.step == mig.READY:
        return []  # the source is copying the guest into our incoming copy
    if o is None:
        return []
    if o.state is GuestState.INCOMING:
        why = f"migration {m.id} is {m.step}" if m is not None else "no migration into this host needs it"
        return [DropIncoming(view.name, why)]
    if m is not None and m.source == host and m.step in mig.HANDED_OVER:
        return [Destroy(view.name, policy.stop_timeout, f"migrated to {m.destination} ({m.id})")]
    return [Destroy(view.name, policy.stop_timeout)]


def _start_gate(host: str, d: GuestDefinition, view: GuestView, *, now: float) -> list[Action] | None:
    """The checks every start passes, in order; None = go ahead."""
    if view.current_epoch is not None and view.current_epoch > d.fencing_epoch:
        return [RefuseStale(d.name, d.fencing_epoch, view.current_epoch)]
    if view.lock_holder is not None and view.lock_holder != host:
        return [Blocked(d.name, view.lock_holder)]
    fp = attempt_key(d)
    if not may_attempt(view.retry, now=now, fp=fp):
        reason = view.retry.last_reason or "unknown failure"
        if view.retry.gave_up:
            return [GiveUp(d.name, f"gave up after {view.retry.attempts} attempt(s): {reason}")]
        return [Wait(d.name, view.retry.next_attempt_at, reason)]
    return None


def _wants_start(
    host: str, d: GuestDefinition, o: GuestStatus | None, view: GuestView, *, now: float, policy: RetryPolicy
) -> list[Action]:
    gate = _start_gate(host, d, view, now=now)
    if gate is not None:
        return gate
    if o is None:
        return [Spawn(d)]
    if o.state is GuestState.FAILED:
        return [Respawn(d, f"restarting after failure: {o.failure_reason or 'unknown'}")]
    if view.applied is not None and fingerprint(view.applied) != fingerprint(d):
        return [Respawn(d, "definition changed while stopped")]
    return [Start(d)]


def _running(
    host: str, d: GuestDefinition, o: GuestStatus, view: GuestView, caps: Capabilities, *, now: float,
    policy: RetryPolicy,
) -> list[Action]:
    if not d.running:
        return [Stop(d.name, policy.stop_timeout)]
    if d.migrate_to and d.migrate_to != host:
        asked = _migration(host, d, view.migration, caps)
        if asked is not None:
            return asked
    actions: list[Action] = []
    blockers: list[str] = []
    applied = view.applied
    max_vcpus = applied.max_vcpus if applied else d.max_vcpus
    max_memory = applied.max_memory if applied else d.max_memory
    vcpus = applied.vcpus if applied else o.vcpus
    if vcpus is not None and vcpus != d.vcpus:
        able = caps.hotplug_vcpu if d.vcpus > vcpus else caps.unplug_vcpu
        if able and d.vcpus <= max_vcpus:
            actions.append(SetVcpus(d.name, d.vcpus))
        else:
            blockers.append(f"vcpus {vcpus}→{d.vcpus}")
    memory = applied.memory if applied else o.memory
    if memory is not None and memory != d.memory:
        able = caps.hotplug_memory if d.memory > memory else caps.unplug_memory
        if able and d.memory <= max_memory:
            actions.append(SetMemory(d.name, d.memory))
        else:
            blockers.append(f"memory {memory}→{d.memory}")
    if applied is not None:
        have = {v.mac for v in applied.vnics}
        want = {v.mac for v in d.vnics}
        if have != want:
            if caps.hotplug_nic:
                actions += [DetachVnic(d.name, v.mac) for v in applied.vnics if v.mac not in want]
                actions += [AttachVnic(d.name, v) for v in d.vnics if v.mac not in have]
            else:
                blockers.append("vNICs")
    if blockers and policy.restart_to_apply:
        gate = _start_gate(host, d, view, now=now)
        if gate is not None:
            return gate
        return [Respawn(d, f"cannot change {', '.join(blockers)} live")]
    if blockers:
        actions.append(Unsupported(d.name, f"live change of {', '.join(blockers)}"))
    return actions


def _migration(host: str, d: GuestDefinition, m: mig.MigrationView | None, caps: Capabilities) -> list[Action] | None:
    """Source, guest running here, ``migrate_to`` set: what to do about it (None: nothing, go on)."""
    assert d.migrate_to is not None
    if d.migration_id is None:
        return [Hold(d.name, f"not migrating to {d.migrate_to}: the desired record has no migration_id "
                             "(an old record; the controller sets both)")]
    if m is not None and m.id == d.migration_id:
        if m.step == mig.FAILED:
            return None  # over: the guest stays here until the controller clears the request
        if not mig.names(d, m):
            return [Hold(d.name, f"migration {m.id} goes from {m.source} to {m.destination}, "
                                 f"not from {host} to {d.migrate_to}")]
    if not caps.live_migration:
        return [Unsupported(d.name, "live migration")]
    return [Migrate(d, d.migrate_to, d.migration_id)]


def reconcile(
    host: str,
    views: Mapping[str, GuestView],
    capabilities: Mapping[str, Capabilities],
    *,
    now: float,
    policy: RetryPolicy = RetryPolicy(),
) -> list[Action]:
    """All actions for this host, guests in name order. ``capabilities`` maps guest kind → driver flags."""
    actions: list[Action] = []
    for name in sorted(views):
        view = views[name]
        kind = view.desired.kind if view.desired is not None else None
        caps = capabilities.get(kind) if kind is not None else None
        actions.extend(decide(host, view, caps, now=now, policy=policy))
    return actions
