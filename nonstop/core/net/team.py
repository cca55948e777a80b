"""NIC team member selection: a pure state machine, shared by every team data path.

Role: decide, from link observations and the clock the caller passes in, which members
of a team are up, which one is active (active-backup) and which ones transmit and
receive (all modes), following Linux bonding's semantics:

* each member is ``down``, ``going-up`` (link back, waiting ``updelay``), ``up`` or
  ``going-down`` (link lost, waiting ``downdelay``); the member machine is the table
  :data:`MEMBER_TRANSITIONS` and any other transition raises
  :class:`IllegalMemberTransition`;
* a member in ``going-down`` keeps being used until its delay expires (that is what a
  down-delay is for); a member in ``going-up`` is not used yet, except that when no
  member is usable at all the one closest to the end of its up-delay is promoted at
  once (bonding: "making interface the new active one N ms earlier");
* the active member is chosen like ``bond_choose_primary_or_current``: the primary when
  it is up and ``primary_reselect`` allows (always: at once; better: only when the
  primary is faster than the current active; failure: only when the current active
  fails), else the current one while usable, else the first up member in spec order.

Every step returns a frozen :class:`TeamDecision`: the new state, the events to emit
and whether the data path must be rewritten and a gratuitous ARP sent.

Must NOT: do I/O, read a clock, sleep, or know how the data path is installed (nft,
bonding driver); that is the shell's job (``nonstop.net.team_daemon``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum

from nonstop.core.spec import HashPolicy, PrimaryReselect, TeamMode, TeamSpec


class MemberState(str, Enum):
    DOWN = "down"
    GOING_UP = "going-up"
    UP = "up"
    GOING_DOWN = "going-down"


class LinkSignal(str, Enum):
    LINK_OK = "link-ok"
    LINK_FAIL = "link-fail"
    DELAY_EXPIRED = "delay-expired"
    PROMOTE = "promote"
    """No member is usable: end a member's up-delay early."""


MEMBER_TRANSITIONS: dict[MemberState, dict[LinkSignal, MemberState]] = {
    MemberState.DOWN: {LinkSignal.LINK_OK: MemberState.GOING_UP, LinkSignal.LINK_FAIL: MemberState.DOWN},
    MemberState.GOING_UP: {
        LinkSignal.LINK_OK: MemberState.GOING_UP,
        LinkSignal.LINK_FAIL: MemberState.DOWN,
        LinkSignal.DELAY_EXPIRED: MemberState.UP,
        LinkSignal.PROMOTE: MemberState.UP,
    },
    MemberState.UP: {LinkSignal.LINK_OK: MemberState.UP, LinkSignal.LINK_FAIL: MemberState.GOING_DOWN},
    MemberState.GOING_DOWN: {
        LinkSignal.LINK_OK: MemberState.UP,
        LinkSignal.LINK_FAIL: MemberState.GOING_DOWN,
        LinkSignal.DELAY_EXPIRED: MemberState.DOWN,
    },
}

USABLE = frozenset({MemberState.UP, MemberState.GOING_DOWN})


class TeamError(Exception):
    """Base of the team state machine's typed errors."""


class IllegalMemberTransition(TeamError):
    def __init__(self, state: MemberState, signal: LinkSignal) -> None:
        super().__init__(f"member in state {state.value} cannot take signal {signal.value}")
        self.state = state
        self.signal = signal


class UnknownMember(TeamError):
    pass


def member_transition(state: MemberState, signal: LinkSignal) -> MemberState:
    """One step of the member table; raises :class:`IllegalMemberTransition`."""
    try:
        return MEMBER_TRANSITIONS[state][signal]
    except KeyError:
        raise IllegalMemberTransition(state, signal) from None


# ------------------------------------------------------------------ configuration


@dataclass(frozen=True)
class TeamConfig:
    """What the machine needs from a :class:`TeamSpec` (also used for switch LAGs)."""

    name: str
    mode: TeamMode
    members: tuple[str, ...]
    primary: str | None = None
    primary_reselect: PrimaryReselect = PrimaryReselect.ALWAYS
    hash_policy: HashPolicy = HashPolicy.LAYER2_3
    updelay: float = 0.0
    downdelay: float = 0.0
    speeds: tuple[tuple[str, int], ...] = ()
    """Member link speeds (bit/s) for ``primary_reselect: better``; unknown = 0."""

    @classmethod
    def from_spec(cls, team: TeamSpec, speeds: Mapping[str, int | None] | None = None) -> TeamConfig:
        known = {m: s for m, s in (speeds or {}).items() if s is not None and m in team.members}
        return cls(
            name=team.name,
            mode=team.mode,
            members=tuple(team.members),
            primary=team.primary,
            primary_reselect=team.primary_reselect,
            hash_policy=team.hash_policy,
            updelay=team.updelay,
            downdelay=team.downdelay,
            speeds=tuple(sorted(known.items())),
        )

    def speed(self, member: str) -> int:
        return dict(self.speeds).get(member, 0)


# ------------------------------------------------------------------------- state


@dataclass(frozen=True)
class MemberStatus:
    name: str
    state: MemberState
    link_ok: bool
    changed_at: float
    deadline: float | None = None
    """When the current going-up/going-down delay ends."""


@dataclass(frozen=True)
class TeamState:
    members: tuple[MemberStatus, ...]
    active: str | None
    failovers: int = 0

    def member(self, name: str) -> MemberStatus:
        for status in self.members:
            if status.name == name:
                return status
        raise UnknownMember(f"{name!r} is not a member of this team")

    def usable(self) -> tuple[str, ...]:
        """Members that may carry traffic, in spec order."""
        return tuple(m.name for m in self.members if m.state in USABLE)

    def next_deadline(self) -> float | None:
        deadlines = [m.deadline for m in self.members if m.deadline is not None]
        return min(deadlines) if deadlines else None


# ------------------------------------------------------------------------ events


@dataclass(frozen=True)
class MemberStateChanged:
    team: str
    member: str
    old: MemberState
    new: MemberState
    at: float
    kind: str = "member-state"


@dataclass(frozen=True)
class ActiveChanged:
    team: str
    old: str | None
    new: str | None
    reason: str
    at: float
    kind: str = "active-changed"


@dataclass(frozen=True)
class TransmitSetChanged:
    team: str
    members: tuple[str, ...]
    at: float
    kind: str = "transmit-set"


TeamEvent = MemberStateChanged | ActiveChanged | TransmitSetChanged


@dataclass(frozen=True)
class TeamDecision:
    state: TeamState
    events: tuple[TeamEvent, ...]
    rewrite: bool
    """The set of transmitting/receiving members changed: rewrite the data path."""
    announce_on: str | None = None
    """Send a gratuitous ARP out of this member (active-backup failover)."""


def transmit_members(config: TeamConfig, state: TeamState) -> tuple[str, ...]:
    """Members frames leave by; also the ones whose received frames reach the team."""
    if config.mode is TeamMode.ACTIVE_BACKUP:
        return (state.active,) if state.active is not None else ()
    return state.usable()


# ------------------------------------------------------------------------- steps


def _apply(
    config: TeamConfig, status: MemberStatus, signal: LinkSignal, now: float, events: list[TeamEvent]
) -> MemberStatus:
    new = member_transition(status.state, signal)
    if new is MemberState.GOING_UP and status.state is not MemberState.GOING_UP:
        if config.updelay <= 0:
            new = member_transition(new, LinkSignal.DELAY_EXPIRED)
        else:
            status = replace(status, deadline=now + config.updelay)
    if new is MemberState.GOING_DOWN and status.state is not MemberState.GOING_DOWN:
        if config.downdelay <= 0:
            new = member_transition(new, LinkSignal.DELAY_EXPIRED)
        else:
            status = replace(status, deadline=now + config.downdelay)
    if new is status.state:
        return status
    events.append(MemberStateChanged(config.name, status.name, status.state, new, now))
    deadline = status.deadline if new in (MemberState.GOING_UP, MemberState.GOING_DOWN) else None
    return replace(status, state=new, changed_at=now, deadline=deadline)


def _choose_active(config: TeamConfig, state: TeamState) -> str | None:
    """``bond_choose_primary_or_current`` then the first up member."""
    by_name = {m.name: m for m in state.members}
    prim = by_name.get(config.primary) if config.primary else None
    curr = by_name.get(state.active) if state.active else None
    prim_ok = prim is not None and prim.state is MemberState.UP
    curr_ok = curr is not None and curr.state in USABLE
    if prim_ok and not curr_ok:
        return config.primary
    if prim_ok and curr_ok and curr is not None and prim is not None:
        if config.primary_reselect is PrimaryReselect.ALWAYS:
            return prim.name
        if config.primary_reselect is PrimaryReselect.BETTER:
            return prim.name if config.speed(prim.name) > config.speed(curr.name) else curr.name
        return curr.name
    if curr_ok and curr is not None:
        return curr.name
    for member in state.members:
        if member.state is MemberState.UP:
            return member.name
    return None


def _settle(config: TeamConfig, before: TeamState, state: TeamState, now: float, events: list[TeamEvent]) -> TeamDecision:
    """Promote if nothing is usable, reselect the active member, report what changed."""
    if not state.usable():
        waiting = [m for m in state.members if m.state is MemberState.GOING_UP and m.deadline is not None]
        if waiting:
            best = min(waiting, key=lambda m: (m.deadline or 0.0))
            promoted = _apply(config, best, LinkSignal.PROMOTE, now, events)
            state = replace(state, members=tuple(promoted if m.name == best.name else m for m in state.members))
    announce = None
    if config.mode is TeamMode.ACTIVE_BACKUP:
        active = _choose_active(config, state)
        if active != state.active:
            if state.active is None:
                reason = "selected"
            elif state.member(state.active).state not in USABLE:
                reason = "member-down"
            else:
                reason = "primary-reselect"
            failover = state.active is not None and active is not None
            events.append(ActiveChanged(config.name, state.active, active, reason, now))
            state = replace(state, active=active, failovers=state.failovers + int(failover))
            announce = active
    elif state.active is not None:
        state = replace(state, active=None)
    rewrite = transmit_members(config, before) != transmit_members(config, state)
    if rewrite and config.mode is not TeamMode.ACTIVE_BACKUP:
        events.append(TransmitSetChanged(config.name, transmit_members(config, state), now))
    return TeamDecision(state=state, events=tuple(events), rewrite=rewrite, announce_on=announce)


def initial_state(config: TeamConfig, links: Mapping[str, bool], now: float) -> TeamDecision:
    """Members whose link is up start ``up`` at once (as when bonding enslaves them)."""
    members = tuple(
        MemberStatus(name, MemberState.UP if links.get(name, False) else MemberState.DOWN, links.get(name, False), now)
        for name in config.members
    )
    empty = TeamState(members=members, active=None)
    none_before = TeamState(members=tuple(replace(m, state=MemberState.DOWN) for m in members), active=None)
    decision = _settle(config, none_before, empty, now, [])
    return replace(decision, rewrite=True)


def observe_link(config: TeamConfig, state: TeamState, member: str, ok: bool, now: float) -> TeamDecision:
    """A fresh observation of one member's link (carrier and, if probed, liveness)."""
    status = state.member(member)
    events: list[TeamEvent] = []
    signal = LinkSignal.LINK_OK if ok else LinkSignal.LINK_FAIL
    updated = replace(_apply(config, status, signal, now, events), link_ok=ok)
    new_state = replace(state, members=tuple(updated if m.name == member else m for m in state.members))
    return _settle(config, state, new_state, now, events)


def tick(config: TeamConfig, state: TeamState, now: float) -> TeamDecision:
    """Let time pass: end every up/down delay whose deadline is ``now`` or earlier."""
    events: list[TeamEvent] = []
    members = []
    for status in state.members:
        if status.deadline is not None and status.deadline <= now:
            status = _apply(config, status, LinkSignal.DELAY_EXPIRED, now, events)
        members.append(status)
    return _settle(config, state, replace(state, members=tuple(members)), now, events)
