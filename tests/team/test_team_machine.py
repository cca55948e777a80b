"""The member-selection machine: its table, delays, primary_reselect and failover counting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nonstop.core.net.team import (
    MEMBER_TRANSITIONS,
    ActiveChanged,
    IllegalMemberTransition,
    LinkSignal,
    MemberState,
    MemberStateChanged,
    TeamConfig,
    TeamDecision,
    TransmitSetChanged,
    UnknownMember,
    initial_state,
    member_transition,
    observe_link,
    tick,
    transmit_members,
)
from nonstop.core.spec import PrimaryReselect, TeamMode, TeamSpec

S, L = MemberState, LinkSignal

LEGAL = [
    (S.DOWN, L.LINK_OK, S.GOING_UP),
    (S.DOWN, L.LINK_FAIL, S.DOWN),
    (S.GOING_UP, L.LINK_OK, S.GOING_UP),
    (S.GOING_UP, L.LINK_FAIL, S.DOWN),
    (S.GOING_UP, L.DELAY_EXPIRED, S.UP),
    (S.GOING_UP, L.PROMOTE, S.UP),
    (S.UP, L.LINK_OK, S.UP),
    (S.UP, L.LINK_FAIL, S.GOING_DOWN),
    (S.GOING_DOWN, L.LINK_OK, S.UP),
    (S.GOING_DOWN, L.LINK_FAIL, S.GOING_DOWN),
    (S.GOING_DOWN, L.DELAY_EXPIRED, S.DOWN),
]
ILLEGAL = [
    (S.DOWN, L.DELAY_EXPIRED),
    (S.DOWN, L.PROMOTE),
    (S.UP, L.DELAY_EXPIRED),
    (S.UP, L.PROMOTE),
    (S.GOING_DOWN, L.PROMOTE),
]


@pytest.mark.parametrize(("state", "signal", "new"), LEGAL)
def test_legal_transitions(state: MemberState, signal: LinkSignal, new: MemberState) -> None:
    assert member_transition(state, signal) is new


@pytest.mark.parametrize(("state", "signal"), ILLEGAL)
def test_illegal_transitions_raise(state: MemberState, signal: LinkSignal) -> None:
    with pytest.raises(IllegalMemberTransition):
        member_transition(state, signal)


def test_table_is_exactly_legal_plus_illegal() -> None:
    listed = {(s, sig) for s, sig, _ in LEGAL} | set(ILLEGAL)
    assert listed == {(s, sig) for s in MemberState for sig in LinkSignal}
    assert {(s, sig, n) for s, row in MEMBER_TRANSITIONS.items() for sig, n in row.items()} == set(LEGAL)


def ab(**kw: object) -> TeamConfig:
    spec = TeamSpec(name="team0", members=["eth0", "eth1", "eth2"][: int(kw.pop("n", 2))], **kw)  # type: ignore[arg-type]
    return TeamConfig.from_spec(spec)


def up(cfg: TeamConfig, now: float = 0.0, **links: bool) -> TeamDecision:
    return initial_state(cfg, {m: links.get(m, True) for m in cfg.members}, now)


def test_initial_active_is_primary_else_first_up_member() -> None:
    assert up(ab(primary="eth1")).state.active == "eth1"
    assert up(ab()).state.active == "eth0"
    assert up(ab(primary="eth0"), eth0=False).state.active == "eth1"
    assert up(ab(), eth0=False, eth1=False).state.active is None
    assert up(ab()).rewrite


def test_failover_on_link_loss_counts_and_announces() -> None:
    cfg = ab(primary="eth0")
    d = observe_link(cfg, up(cfg).state, "eth0", False, 1.0)
    assert d.state.active == "eth1" and d.state.failovers == 1 and d.rewrite and d.announce_on == "eth1"
    kinds = [type(e) for e in d.events]
    assert kinds == [MemberStateChanged, ActiveChanged]
    change = d.events[1]
    assert isinstance(change, ActiveChanged) and change.reason == "member-down" and change.at == 1.0


def test_losing_a_backup_changes_nothing_on_the_data_path() -> None:
    cfg = ab(primary="eth0")
    d = observe_link(cfg, up(cfg).state, "eth1", False, 1.0)
    assert d.state.active == "eth0" and not d.rewrite and d.announce_on is None
    assert d.state.member("eth1").state is S.DOWN


@pytest.mark.parametrize(
    ("reselect", "speeds", "after_return"),
    [
        (PrimaryReselect.ALWAYS, {}, "eth0"),
        (PrimaryReselect.FAILURE, {}, "eth1"),
        (PrimaryReselect.BETTER, {}, "eth1"),  # equal speed: not better, stay
        (PrimaryReselect.BETTER, {"eth0": 10_000, "eth1": 1_000}, "eth0"),
        (PrimaryReselect.BETTER, {"eth0": 1_000, "eth1": 10_000}, "eth1"),
    ],
)
def test_failback_follows_primary_reselect(reselect: PrimaryReselect, speeds: dict[str, int], after_return: str) -> None:
    spec = TeamSpec(name="team0", members=["eth0", "eth1"], primary="eth0", primary_reselect=reselect)
    cfg = TeamConfig.from_spec(spec, speeds)
    state = observe_link(cfg, up(cfg).state, "eth0", False, 1.0).state
    assert state.active == "eth1"
    d = observe_link(cfg, state, "eth0", True, 2.0)
    assert d.state.active == after_return
    assert d.state.failovers == (2 if after_return == "eth0" else 1)
    if after_return == "eth0":
        assert any(isinstance(e, ActiveChanged) and e.reason == "primary-reselect" for e in d.events)


def test_failure_policy_still_fails_back_when_the_backup_dies() -> None:
    cfg = ab(primary="eth0", primary_reselect="failure")
    state = observe_link(cfg, up(cfg).state, "eth0", False, 1.0).state
    state = observe_link(cfg, state, "eth0", True, 2.0).state
    assert state.active == "eth1"
    assert observe_link(cfg, state, "eth1", False, 3.0).state.active == "eth0"


def test_downdelay_keeps_the_member_until_it_expires() -> None:
    cfg = ab(primary="eth0", downdelay=0.2)
    d = observe_link(cfg, up(cfg).state, "eth0", False, 1.0)
    assert d.state.member("eth0").state is S.GOING_DOWN and d.state.active == "eth0" and not d.rewrite
    assert d.state.next_deadline() == pytest.approx(1.2)
    assert tick(cfg, d.state, 1.19).state.active == "eth0"
    d2 = tick(cfg, d.state, 1.2)
    assert d2.state.member("eth0").state is S.DOWN and d2.state.active == "eth1" and d2.rewrite


def test_link_back_during_downdelay_cancels_it() -> None:
    cfg = ab(primary="eth0", downdelay=0.2)
    state = observe_link(cfg, up(cfg).state, "eth0", False, 1.0).state
    d = observe_link(cfg, state, "eth0", True, 1.1)
    assert d.state.member("eth0").state is S.UP and d.state.next_deadline() is None
    assert tick(cfg, d.state, 5.0).state.failovers == 0


def test_updelay_postpones_failback() -> None:
    cfg = ab(primary="eth0", updelay=0.3)
    state = observe_link(cfg, up(cfg).state, "eth0", False, 1.0).state
    d = observe_link(cfg, state, "eth0", True, 2.0)
    assert d.state.member("eth0").state is S.GOING_UP and d.state.active == "eth1"
    assert tick(cfg, d.state, 2.29).state.active == "eth1"
    assert tick(cfg, d.state, 2.3).state.active == "eth0"


def test_flapping_during_updelay_restarts_nothing_early() -> None:
    cfg = ab(primary="eth0", updelay=0.3)
    state = observe_link(cfg, up(cfg).state, "eth0", False, 1.0).state
    state = observe_link(cfg, state, "eth0", True, 2.0).state
    state = observe_link(cfg, state, "eth0", False, 2.1).state
    assert state.member("eth0").state is S.DOWN and state.next_deadline() is None
    state = observe_link(cfg, state, "eth0", True, 2.2).state
    assert state.next_deadline() == pytest.approx(2.5)


def test_no_usable_member_promotes_the_one_closest_to_up() -> None:
    cfg = ab(updelay=1.0)
    state = up(cfg, eth0=False, eth1=False).state
    state = observe_link(cfg, state, "eth1", True, 1.0).state  # would be up at 2.0: promoted at once
    assert state.member("eth1").state is S.UP and state.active == "eth1"


def test_balance_xor_transmits_on_every_usable_member() -> None:
    cfg = TeamConfig.from_spec(TeamSpec(name="t", members=["a", "b", "c"], mode=TeamMode.BALANCE_XOR))
    state = up(cfg).state
    assert transmit_members(cfg, state) == ("a", "b", "c") and state.active is None
    d = observe_link(cfg, state, "b", False, 1.0)
    assert transmit_members(cfg, d.state) == ("a", "c") and d.rewrite
    assert any(isinstance(e, TransmitSetChanged) and e.members == ("a", "c") for e in d.events)


def test_unknown_member_raises() -> None:
    cfg = ab()
    with pytest.raises(UnknownMember):
        observe_link(cfg, up(cfg).state, "eth9", True, 1.0)


steps = st.lists(st.tuples(st.sampled_from(["eth0", "eth1", "eth2"]), st.booleans(), st.floats(0, 0.5)), max_size=40)


@given(steps=steps, mode=st.sampled_from(list(TeamMode)), reselect=st.sampled_from(list(PrimaryReselect)),
       updelay=st.sampled_from([0.0, 0.2]), downdelay=st.sampled_from([0.0, 0.1]))
def test_invariants_under_any_link_history(steps: list[tuple[str, bool, float]], mode: TeamMode,
                                           reselect: PrimaryReselect, updelay: float, downdelay: float) -> None:
    spec = TeamSpec(name="t", members=["eth0", "eth1", "eth2"], mode=mode, primary="eth1",
                    primary_reselect=reselect, updelay=updelay, downdelay=downdelay)
    cfg = TeamConfig.from_spec(spec)
    state = up(cfg).state
    now = 0.0
    for member, ok, dt in steps:
        now += dt
        before = state.failovers
        state = tick(cfg, state, now).state
        state = observe_link(cfg, state, member, ok, now).state
        assert state.failovers >= before
        tx = transmit_members(cfg, state)
        assert set(tx) <= set(state.usable())
        if mode is TeamMode.ACTIVE_BACKUP:
            # someone usable exists => someone is active, and it is usable
            assert (state.active is None) == (not state.usable())
        else:
            assert tx == state.usable()
        for status in state.members:
            assert (status.deadline is not None) == (status.state in (S.GOING_UP, S.GOING_DOWN))
