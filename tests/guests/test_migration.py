"""The live-migration operation (nonstop/core/guests/migration.py) and the reconcile's decisions
on both hosts in every step of it — above all the window between ``done`` and the controller's
rewrite of the desired record, when the record still names the source."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.guests import migration as mig
from nonstop.core.guests.model import Capabilities, GuestDefinition, GuestState, GuestStatus
from nonstop.core.guests.reconcile import (
    Action,
    Destroy,
    DropIncoming,
    FailMigration,
    FinishIncoming,
    GuestView,
    Hold,
    Migrate,
    PrepareIncoming,
    RefuseStale,
    Respawn,
    RetryPolicy,
    SetVcpus,
    Spawn,
    Start,
    decide,
)
from nonstop.core.operations import IllegalTransition, start, transition

S = GuestState
MiB = 2**20
ALL = Capabilities(live_migration=True, hotplug_vcpu=True, unplug_vcpu=True, hotplug_memory=True,
                   unplug_memory=True, hotplug_nic=True)
POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=8.0)
T = POLICY.stop_timeout


def gdef(host: str = "h1", **kw: object) -> GuestDefinition:
    base: dict[str, object] = {"vcpus": 1, "max_vcpus": 4, "memory": 64 * MiB, "max_memory": 256 * MiB,
                               "fencing_epoch": 3}
    base.update(kw)
    return GuestDefinition(name="g", cluster="c", host=host, **base)  # type: ignore[arg-type]


REQ = gdef(migrate_to="h2", migration_id="m1")
"""The controller's request: host h1, migrate_to h2, migration m1."""
ON_B = gdef(host="h2")
"""The record once the controller rewrote it (``handed_over``)."""


def op(step: str, source: str = "h1", destination: str = "h2", op_id: str = "m1") -> mig.MigrationView:
    return mig.MigrationView(id=op_id, step=step, source=source, destination=destination)


def running(**kw: object) -> GuestStatus:
    return GuestStatus(name="g", state=S.RUNNING, vcpus=1, memory=64 * MiB, **kw)  # type: ignore[arg-type]


def state(s: GuestState) -> GuestStatus:
    return running() if s is S.RUNNING else GuestStatus(name="g", state=s)


# ------------------------------------------------------------------------ the machine


@pytest.mark.parametrize(("step", "event", "after"), [
    ("requested", "prepared", "ready"), ("requested", "fail", "failed"), ("ready", "migrated", "done"),
    ("ready", "fail", "failed"), ("done", "finished", "finished"),
])
def test_legal_steps(step: str, event: str, after: str) -> None:
    assert mig.MIGRATION.next(step, event) == after


@pytest.mark.parametrize(("step", "event"), [
    ("requested", "migrated"), ("ready", "finished"), ("done", "fail"), ("finished", "fail"), ("failed", "prepared"),
])
def test_illegal_steps_raise_the_one_error(step: str, event: str) -> None:
    with pytest.raises(IllegalTransition):
        mig.MIGRATION.next(step, event)


def test_final_steps_and_progress() -> None:
    assert mig.MIGRATION.final == {"finished", "failed"} and mig.OPEN | mig.MIGRATION.final == set(mig.MIGRATION.table)
    header = start("m1", mig.MIGRATION, mig.REQUESTED, 1.0)
    for event, now in (("prepared", 2.0), ("migrated", 3.0), ("finished", 4.0)):
        header = transition(mig.MIGRATION, header, event, now)
    assert header.step == "finished" and header.progress == {"requested": 1.0, "ready": 2.0, "done": 3.0,
                                                            "finished": 4.0}


def test_body_round_trips_and_rejects_other_kinds() -> None:
    body = mig.MigrationBody(guest="g", source="h1", destination="h2", definition=mig.handed_over(REQ),
                             endpoint={"guest": "g", "host": "h2", "uri": "tcp:x:1"}, lease=7)
    assert mig.MigrationBody.from_json(body.to_json()) == body and body.fencing_epoch == 3
    with pytest.raises(ValueError):
        mig.MigrationBody.from_json({"host": "h1"})


def test_handed_over_is_the_controllers_rewrite() -> None:
    assert mig.handed_over(REQ) == ON_B
    assert mig.effective_desired(REQ, op("done")) == ON_B == mig.effective_desired(REQ, op("finished"))
    for step in ("requested", "ready", "failed"):
        assert mig.effective_desired(REQ, op(step)) == REQ
    assert mig.effective_desired(REQ, op("done", op_id="m0")) == REQ  # another operation: not this request
    assert mig.effective_desired(gdef(migrate_to="h2"), op("done")) == gdef(migrate_to="h2")  # no id


# ------------------------------------------------------------------ both hosts, each step

CASES: list[tuple[str, str, GuestView, Capabilities | None, list[Action]]] = [
    # source h1
    ("src: no operation yet → migrate (creates it)", "h1", GuestView("g", REQ, running()), ALL,
     [Migrate(REQ, "h2", "m1")]),
    ("src: requested → migrate", "h1", GuestView("g", REQ, running(), migration=op("requested")), ALL,
     [Migrate(REQ, "h2", "m1")]),
    ("src: ready → migrate (resume)", "h1", GuestView("g", REQ, running(), migration=op("ready")), ALL,
     [Migrate(REQ, "h2", "m1")]),
    ("src: requested, guest gone → start it here first", "h1", GuestView("g", REQ, None, migration=op("requested")),
     ALL, [Spawn(REQ)]),
    ("src: ready, guest gone → hold (the copy may have completed)", "h1",
     GuestView("g", REQ, None, migration=op("ready")), ALL, [Hold("g", "…")]),
    ("src: ready, guest stopped → fail the operation", "h1", GuestView("g", REQ, state(S.STOPPED), migration=op("ready")),
     ALL, [FailMigration("g", "m1", "the guest is stopped on h1, the source")]),
    ("src: done, old copy stopped → remove it", "h1", GuestView("g", REQ, state(S.STOPPED), migration=op("done")), ALL,
     [Destroy("g", T, "migrated to h2 (m1)")]),
    ("src: done, old copy failed → remove it, never respawn", "h1",
     GuestView("g", REQ, state(S.FAILED), migration=op("done")), ALL, [Destroy("g", T, "migrated to h2 (m1)")]),
    ("src: done, nothing left → nothing", "h1", GuestView("g", REQ, None, migration=op("done")), ALL, []),
    ("src: finished, postmigrate copy → remove it", "h1",
     GuestView("g", REQ, state(S.MIGRATING), migration=op("finished")), ALL, [Destroy("g", T, "migrated to h2 (m1)")]),
    ("src: after the rewrite, old copy → remove it", "h1",
     GuestView("g", None, state(S.STOPPED), migration=op("finished")), ALL, [Destroy("g", T, "migrated to h2 (m1)")]),
    ("src: failed → keep running, no retry", "h1", GuestView("g", REQ, running(), migration=op("failed")), ALL, []),
    ("src: failed → ordinary changes go on", "h1",
     GuestView("g", gdef(vcpus=2, migrate_to="h2", migration_id="m1"), running(), migration=op("failed")), ALL,
     [SetVcpus("g", 2)]),
    ("src: failed, guest crashed → respawn here", "h1",
     GuestView("g", REQ, state(S.FAILED), migration=op("failed")), ALL, [Respawn(REQ, "…")]),
    ("src: no migration_id → refuse", "h1", GuestView("g", gdef(migrate_to="h2"), running()), ALL, [Hold("g", "…")]),
    ("src: operation for other hosts → refuse", "h1",
     GuestView("g", REQ, running(), migration=op("requested", destination="h3")), ALL, [Hold("g", "…")]),
    # destination h2
    ("dst: no operation yet → nothing", "h2", GuestView("g", REQ, None), ALL, []),
    ("dst: requested → prepare", "h2", GuestView("g", REQ, None, migration=op("requested")), ALL,
     [PrepareIncoming("g", "m1")]),
    ("dst: requested, no driver → fail it", "h2", GuestView("g", REQ, None, migration=op("requested")), None,
     [FailMigration("g", "m1", "h2 cannot receive process guests live")]),
    ("dst: requested, no live migration → fail it", "h2", GuestView("g", REQ, None, migration=op("requested")),
     Capabilities(), [FailMigration("g", "m1", "h2 cannot receive process guests live")]),
    ("dst: requested, prepared → wait", "h2", GuestView("g", REQ, state(S.INCOMING), migration=op("requested")), ALL,
     []),
    ("dst: requested, a leftover copy → remove it first", "h2",
     GuestView("g", REQ, state(S.STOPPED), migration=op("requested")), ALL,
     [Destroy("g", T, "a leftover copy is in the way of migration m1")]),
    ("dst: ready → wait for the copy", "h2", GuestView("g", REQ, state(S.INCOMING), migration=op("ready")), ALL, []),
    ("dst: ready, copy arrived → wait for done", "h2", GuestView("g", REQ, running(), migration=op("ready")), ALL, []),
    ("dst: done, incoming → finish", "h2", GuestView("g", REQ, state(S.INCOMING), migration=op("done")), ALL,
     [FinishIncoming("g", "m1")]),
    ("dst: done, running → finish", "h2", GuestView("g", REQ, running(), migration=op("done")), ALL,
     [FinishIncoming("g", "m1")]),
    ("dst: done, copy lost → finish (it then starts afresh)", "h2", GuestView("g", REQ, None, migration=op("done")),
     ALL, [FinishIncoming("g", "m1")]),
    ("dst: done, stale epoch → refuse", "h2",
     GuestView("g", REQ, state(S.INCOMING), migration=op("done"), current_epoch=4), ALL, [RefuseStale("g", 3, 4)]),
    ("dst: done, rewritten record, remembered operation → finish", "h2",
     GuestView("g", ON_B, state(S.INCOMING), migration=op("done")), ALL, [FinishIncoming("g", "m1")]),
    ("dst: finished, before the rewrite → steady, ours", "h2", GuestView("g", REQ, running(), migration=op("finished")),
     ALL, []),
    ("dst: finished, crashed → respawn here", "h2", GuestView("g", REQ, state(S.FAILED), migration=op("finished")), ALL,
     [Respawn(ON_B, "…")]),
    ("dst: failed → drop the incoming copy", "h2", GuestView("g", REQ, state(S.INCOMING), migration=op("failed")), ALL,
     [DropIncoming("g", "migration m1 is failed")]),
    ("dst: failed, copy ran → destroy it", "h2", GuestView("g", REQ, running(), migration=op("failed")), ALL,
     [Destroy("g", T)]),
    ("dst: request cleared by the controller → drop", "h2", GuestView("g", gdef(), state(S.INCOMING)), ALL,
     [DropIncoming("g", "no migration into this host needs it")]),
]


def _shape(actions: list[Action]) -> list[Action]:
    """Reasons of Hold and Respawn are prose: compare them by type and guest only."""
    return [Hold(a.name, "…") if isinstance(a, Hold) else Respawn(a.definition, "…") if isinstance(a, Respawn) else a
            for a in actions]


@pytest.mark.parametrize(("label", "host", "view", "caps", "expected"), CASES, ids=[c[0] for c in CASES])
def test_migration_table(label: str, host: str, view: GuestView, caps: Capabilities | None,
                         expected: list[Action]) -> None:
    assert _shape(decide(host, view, caps, now=0.0, policy=POLICY)) == expected


def test_hold_says_why() -> None:
    (old,) = decide("h1", GuestView("g", gdef(migrate_to="h2"), running()), ALL, now=0, policy=POLICY)
    assert isinstance(old, Hold) and "no migration_id" in old.reason
    (gone,) = decide("h1", GuestView("g", REQ, None, migration=op("ready")), ALL, now=0, policy=POLICY)
    assert isinstance(gone, Hold) and "not restarting" in gone.reason


@given(step=st.sampled_from(sorted(mig.MIGRATION.table)),
       observed=st.one_of(st.none(), st.sampled_from(list(GuestState)).map(state)),
       rewritten=st.booleans())
def test_exactly_one_host_may_run_the_guest_in_every_step(step: str, observed: GuestStatus | None,
                                                          rewritten: bool) -> None:
    """Never both: after done only the destination may start or finish it, before only the source."""
    m = op(step)
    desired = ON_B if rewritten and step in mig.HANDED_OVER else REQ
    starts = {host: any(isinstance(a, Spawn | Start | Respawn | FinishIncoming)
                        for a in decide(host, GuestView("g", desired, observed, migration=m), ALL, now=0, policy=POLICY))
              for host in ("h1", "h2")}
    assert not (starts["h1"] and starts["h2"])
    if step in mig.HANDED_OVER:
        assert not starts["h1"]
    else:
        assert not starts["h2"]
