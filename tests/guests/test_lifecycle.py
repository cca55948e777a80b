"""The guest lifecycle table and the pure reconcile decision: table-driven cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.core.guests.lifecycle import (
    TRANSITIONS,
    GuestEvent,
    IllegalTransition,
    observed_event,
    transition,
)
from nonstop.core.guests.model import Capabilities, GuestDefinition, GuestState, GuestStatus, VnicDefinition
from nonstop.core.guests.reconcile import (
    AttachVnic,
    Blocked,
    Destroy,
    DetachVnic,
    DropIncoming,
    GiveUp,
    GuestView,
    Migrate,
    RefuseStale,
    Respawn,
    RetryPolicy,
    RetryState,
    SetMemory,
    SetVcpus,
    Spawn,
    Start,
    Stop,
    Unsupported,
    Wait,
    attempt_key,
    backoff_delay,
    decide,
    fingerprint,
    may_attempt,
    reconcile,
    record_failure,
    record_success,
)
from nonstop.core.spec import GuestGroupSpec, VnicSpec

S, E = GuestState, GuestEvent
MiB = 2**20
ALL = Capabilities(
    live_migration=True, hotplug_vcpu=True, unplug_vcpu=True, hotplug_memory=True, unplug_memory=True,
    hotplug_nic=True,
)
NONE = Capabilities()
POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=8.0, stable_after=30.0)


def gdef(name: str = "g", host: str = "h1", **kw: object) -> GuestDefinition:
    base: dict[str, object] = {"vcpus": 1, "max_vcpus": 4, "memory": 64 * MiB, "max_memory": 256 * MiB}
    base.update(kw)
    return GuestDefinition(name=name, cluster="c", host=host, **base)  # type: ignore[arg-type]


def status(state: GuestState, name: str = "g", **kw: object) -> GuestStatus:
    return GuestStatus(name=name, state=state, **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize(
    ("state", "event", "after"),
    [
        (S.PENDING, E.START, S.STARTING),
        (S.STARTING, E.STARTED, S.RUNNING),
        (S.STARTING, E.FAIL, S.FAILED),
        (S.RUNNING, E.STOP, S.STOPPING),
        (S.STOPPING, E.STOPPED, S.STOPPED),
        (S.RUNNING, E.DIED, S.FAILED),
        (S.RUNNING, E.MIGRATE, S.MIGRATING),
        (S.MIGRATING, E.MIGRATED, S.STOPPED),
        (S.MIGRATING, E.MIGRATION_FAILED, S.RUNNING),
        (S.PENDING, E.PREPARE_INCOMING, S.INCOMING),
        (S.INCOMING, E.STARTED, S.RUNNING),
        (S.FAILED, E.START, S.STARTING),
        (S.STOPPED, E.START, S.STARTING),
    ],
)
def test_legal_transitions(state: GuestState, event: GuestEvent, after: GuestState) -> None:
    assert transition(state, event) is after


@pytest.mark.parametrize(
    ("state", "event"),
    [(S.STOPPED, E.MIGRATE), (S.PENDING, E.STARTED), (S.FAILED, E.MIGRATED), (S.STOPPING, E.START),
     (S.INCOMING, E.MIGRATE), (S.MIGRATING, E.START)],
)
def test_illegal_transitions_raise(state: GuestState, event: GuestEvent) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(state, event)
    assert info.value.state is state and info.value.event is event


def test_every_state_has_a_row_and_running_is_reachable_from_pending() -> None:
    assert set(TRANSITIONS) == set(GuestState)
    seen, frontier = {S.PENDING}, [S.PENDING]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    assert seen == set(GuestState)


@given(st.sampled_from(list(GuestState)), st.lists(st.sampled_from(list(GuestEvent)), max_size=30))
def test_random_event_sequences_stay_inside_the_table(state: GuestState, events: list[GuestEvent]) -> None:
    for event in events:
        if event in TRANSITIONS[state]:
            after = transition(state, event)
            assert observed_event(state, after) is not None or after == state
            state = after
        else:
            with pytest.raises(IllegalTransition):
                transition(state, event)


# --------------------------------------------------------------------------- retries


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_delay(n, POLICY) for n in range(6)] == [0, 1, 2, 4, 8, 8]


def test_budget_gives_up_after_max_attempts_and_resets_on_new_definition() -> None:
    fp = fingerprint(gdef())
    r = RetryState()
    for i in range(POLICY.max_attempts):
        assert may_attempt(r, now=r.next_attempt_at, fp=fp)
        r = record_failure(r, now=100.0 + i, reason="boom", fp=fp, policy=POLICY)
    assert r.gave_up and not may_attempt(r, now=1e9, fp=fp)
    assert may_attempt(r, now=0, fp=fingerprint(gdef(vcpus=2)))


def test_permanent_failure_gives_up_at_once_and_success_resets_only_when_stable() -> None:
    fp = fingerprint(gdef())
    r = record_failure(RetryState(), now=0, reason="bad image", fp=fp, policy=POLICY, permanent=True)
    assert r.gave_up and r.attempts == 1
    r2 = record_failure(RetryState(), now=0, reason="x", fp=fp, policy=POLICY)
    assert record_success(r2, running_for=5, policy=POLICY) == r2
    assert record_success(r2, running_for=31, policy=POLICY).attempts == 0


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=20))
def test_next_attempt_never_before_failure_time(times: list[float]) -> None:
    fp, r = "x", RetryState()
    for t in sorted(times):
        r = record_failure(r, now=t, reason="e", fp=fp, policy=POLICY)
        assert r.next_attempt_at >= t
    assert r.attempts == len(times) and r.gave_up == (len(times) >= POLICY.max_attempts)


# -------------------------------------------------------------------------- reconcile


def one(view: GuestView, caps: Capabilities | None = ALL, now: float = 0.0, host: str = "h1") -> list[object]:
    return list(decide(host, view, caps, now=now, policy=POLICY))


CASES = [
    ("missing → spawn", GuestView("g", desired=gdef()), [Spawn(gdef())]),
    ("stopped → start", GuestView("g", desired=gdef(), observed=status(S.STOPPED)), [Start(gdef())]),
    ("running, fine → nothing", GuestView("g", desired=gdef(), observed=status(S.RUNNING, vcpus=1, memory=64 * MiB)), []),
    ("not desired → destroy", GuestView("g", observed=status(S.RUNNING)), [Destroy("g", POLICY.stop_timeout)]),
    ("assigned elsewhere → destroy", GuestView("g", desired=gdef(host="h2"), observed=status(S.STOPPED)),
     [Destroy("g", POLICY.stop_timeout)]),
    ("incoming copy no migration needs → dropped", GuestView("g", observed=status(S.INCOMING)),
     [DropIncoming("g", "no migration into this host needs it")]),
    ("desired stopped → stop", GuestView("g", desired=gdef(running=False), observed=status(S.RUNNING)),
     [Stop("g", POLICY.stop_timeout)]),
    ("desired stopped, absent → nothing", GuestView("g", desired=gdef(running=False)), []),
    ("starting → wait for it", GuestView("g", desired=gdef(), observed=status(S.STARTING)), []),
    ("stale epoch → refuse", GuestView("g", desired=gdef(fencing_epoch=3), current_epoch=4), [RefuseStale("g", 3, 4)]),
    ("same epoch → spawn", GuestView("g", desired=gdef(fencing_epoch=4), current_epoch=4), [Spawn(gdef(fencing_epoch=4))]),
    ("locked by another host → blocked", GuestView("g", desired=gdef(), lock_holder="h2"), [Blocked("g", "h2")]),
    ("own lock → spawn", GuestView("g", desired=gdef(), lock_holder="h1"), [Spawn(gdef())]),
    ("vcpus up → hot-plug", GuestView("g", desired=gdef(vcpus=2), observed=status(S.RUNNING), applied=gdef()),
     [SetVcpus("g", 2)]),
    ("memory up → hot-plug", GuestView("g", desired=gdef(memory=128 * MiB), observed=status(S.RUNNING), applied=gdef()),
     [SetMemory("g", 128 * MiB)]),
    ("migrate when asked", GuestView("g", desired=gdef(migrate_to="h2", migration_id="m1"), observed=status(S.RUNNING)),
     [Migrate(gdef(migrate_to="h2", migration_id="m1"), "h2", "m1")]),
]


@pytest.mark.parametrize(("label", "view", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide_table(label: str, view: GuestView, expected: list[object]) -> None:
    assert one(view) == expected


def test_failed_guest_is_respawned_then_given_up() -> None:
    d = gdef()
    view = GuestView("g", desired=d, observed=status(S.FAILED, failure_reason="oom"))
    (action,) = one(view)
    assert isinstance(action, Respawn) and "oom" in action.reason
    r = record_failure(RetryState(), now=10, reason="oom", fp=attempt_key(d), policy=POLICY)
    assert one(GuestView("g", desired=d, observed=view.observed, retry=r), now=10.5) == [Wait("g", 11.0, "oom")]
    r = RetryState(attempts=3, gave_up=True, last_reason="oom", fingerprint=attempt_key(d))
    (give_up,) = one(GuestView("g", desired=d, observed=view.observed, retry=r), now=1e6)
    assert isinstance(give_up, GiveUp) and "oom" in give_up.reason
    # Placed here again under a new fencing epoch: a fresh budget.
    again = one(GuestView("g", desired=gdef(fencing_epoch=1), observed=view.observed, retry=r), now=1e6)
    assert isinstance(again[0], Respawn)


def test_hotplug_not_possible_means_restart_or_report() -> None:
    view = GuestView("g", desired=gdef(vcpus=2), observed=status(S.RUNNING), applied=gdef())
    (action,) = one(view, caps=NONE)
    assert isinstance(action, Respawn) and "vcpus" in action.reason
    no_restart = RetryPolicy(restart_to_apply=False)
    assert decide("h1", view, NONE, now=0, policy=no_restart) == [Unsupported("g", "live change of vcpus 1→2")]
    above_max = GuestView("g", desired=gdef(vcpus=8, max_vcpus=8), observed=status(S.RUNNING), applied=gdef())
    assert isinstance(one(above_max)[0], Respawn)


def test_vnic_diff_by_mac() -> None:
    a, b = VnicDefinition(network="n", mac="02:00:00:00:00:01"), VnicDefinition(network="n", mac="02:00:00:00:00:02")
    view = GuestView("g", desired=gdef(vnics=(b,)), observed=status(S.RUNNING), applied=gdef(vnics=(a,)))
    assert one(view) == [DetachVnic("g", a.mac), AttachVnic("g", b)]


def test_no_live_migration_is_reported_not_attempted() -> None:
    view = GuestView("g", desired=gdef(migrate_to="h2", migration_id="m1"), observed=status(S.RUNNING))
    assert one(view, caps=NONE) == [Unsupported("g", "live migration")]


def test_unknown_kind_gives_up() -> None:
    (action,) = one(GuestView("g", desired=gdef()), caps=None)
    assert isinstance(action, GiveUp)


def test_reconcile_orders_by_name_and_uses_kind_capabilities() -> None:
    views = {n: GuestView(n, desired=gdef(n)) for n in ("b", "a")}
    assert [a.definition.name for a in reconcile("h1", views, {"process": ALL}, now=0)] == ["a", "b"]  # type: ignore[attr-defined]


def test_definition_round_trips_and_from_group() -> None:
    group = GuestGroupSpec(name="web", nics=[VnicSpec(network="n1", bandwidth="10Mbit")], max_vcpus=4, vcpus=2)
    d = GuestDefinition.from_group(group, name="web-0", cluster="c", host="h1", addresses=["198.18.0.5/24"])
    assert d.max_vcpus == 4 and d.vnics[0].bandwidth == 10_000_000 and d.address == "198.18.0.5"
    assert GuestDefinition.from_dict(d.to_dict()) == d
    assert GuestDefinition.from_dict({**d.to_dict(), "future_field": 1}) == d


hyp_state = st.sampled_from(list(GuestState))


@settings(max_examples=300)
@given(
    desired=st.one_of(st.none(), st.builds(lambda v, r, e: gdef(vcpus=v, running=r, fencing_epoch=e),
                                           st.integers(1, 4), st.booleans(), st.integers(0, 5))),
    observed=st.one_of(st.none(), hyp_state.map(status)),
    epoch=st.one_of(st.none(), st.integers(0, 5)),
    holder=st.sampled_from([None, "h1", "h2"]),
)
def test_properties_of_decide(desired: GuestDefinition | None, observed: GuestStatus | None, epoch: int | None,
                              holder: str | None) -> None:
    view = GuestView("g", desired=desired, observed=observed, current_epoch=epoch, lock_holder=holder)
    actions = one(view)
    starts = [a for a in actions if isinstance(a, Spawn | Start | Respawn)]
    if starts:
        assert desired is not None and desired.running
        assert epoch is None or epoch <= desired.fencing_epoch  # never start from a stale record
        assert holder in (None, "h1")  # never start a guest another host holds
        assert observed is None or observed.state in (S.STOPPED, S.FAILED, S.PENDING, S.RUNNING)
    if desired is None:
        assert all(isinstance(a, Destroy | DropIncoming) for a in actions)
    assert one(view) == actions  # deterministic
