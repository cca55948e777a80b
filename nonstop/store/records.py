"""The typed records of the store: one versioned model per key family (docs/store.md's table).

Role: every value nonstop keeps under ``/nonstop/<cluster>/`` is read and written through a model
here or beside it — the spec (``ClusterSpec``, nonstop/store/state.py), operations
(``OperationRecord``), intents (``IntentRequest`` / ``IntentOutcome``) and the controller's memory
(``ControllerMemory``) have theirs already; this module holds the rest:

    hosts/<h>/desired       HostDesired          the controller (from maintenance intents)
    hosts/<h>/observed      HostObserved         the host's agent, merged field by field (open report)
    hosts/<h>/alive         HostAlive            the host's agent, on its lease
    hosts/<h>/components    HostComponents       the hardware watcher
    hosts/<h>/patch         HostPatch            the patch executor's request, the agent's answer
    guests/<g>/desired      GuestDesired         ``GuestDefinition`` with its schema (the controller)
    guests/<g>/observed     ObservedGuestRecord  the agent running the guest (open report)
    guests/<g>/runner       RunnerLock           the agent running the guest, on its lease
    epoch/<g>               EpochRecord          the controller
    services/<s>/backends   ServiceBackends      the controller
    leader                  LeaderRecord         the leading controller, on its lease
    events/<seq>            EventRecord          every shell (nonstop/store/events.py; open: extra data)
    ipam/<net>/<ip>         IpamRecord           whoever claims the address (nonstop/net/ipam_store.py)
    op-control/<id>/lock    PatcherLock          the patcher running a rollout, on its lease
    op-control/<id>/abort   AbortRequest         whoever asks the rollout to stop

Each has ``schema`` (nonstop/store/record.py: old values without it read as version 1, newer
versions are refused); open reports keep fields they do not name (``extra="allow"``), the others
refuse them. ``model_for(key)`` says which model a key's value is.

Must not: talk to a store (nonstop/store/record.py's helpers do) or decide anything.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from nonstop.core.controller.view import ObservedGuest
from nonstop.core.guests.model import GuestDefinition
from nonstop.store import keys
from nonstop.store.base import encode_json
from nonstop.store.record import SCHEMA, Record, RecordError, check_version
from nonstop.store.record import put as put
from nonstop.store.record import put_op as put_op
from nonstop.store.record import read as read
from nonstop.store.record import read_or_none as read_or_none
from nonstop.store.record import read_prefix as read_prefix

__all__ = [
    "AbortRequest", "BackendEntry", "ComponentGroupRecord", "EpochRecord", "EventRecord", "GuestDesired",
    "HeartbeatEndpoint", "HostAlive", "HostComponents", "HostDesired", "HostObserved", "HostPatch", "IpamRecord",
    "LeaderRecord", "NicReport", "ObservedGuestRecord", "PatcherLock", "Record", "RecordError", "RunnerLock",
    "ServiceBackends", "TeamMemberReport", "TeamReport", "model_for", "put", "put_op", "read", "read_or_none",
    "read_prefix",
]


class _Part(BaseModel):
    """A nested part of a record (no version of its own)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# ----------------------------------------------------------------------------- hosts


class HostDesired(Record):
    """``hosts/<h>/desired``: written by the controller from maintenance intents."""

    model_config = ConfigDict(extra="allow")
    FAMILY: ClassVar[str] = "hosts/<host>/desired"

    state: str = "up"
    evacuate: bool = True
    reason: str = ""
    by: str | None = None


class HostAlive(Record):
    """``hosts/<h>/alive``: the agent's presence, on its lease."""

    FAMILY: ClassVar[str] = "hosts/<host>/alive"

    host: str
    pid: int | None = None
    started_at: float | None = None
    drivers: tuple[str, ...] = ()


class NicReport(_Part):
    model_config = ConfigDict(extra="allow")

    state: str = "unknown"
    carrier: bool | None = None
    team: str | None = None


class TeamMemberReport(_Part):
    model_config = ConfigDict(extra="allow")

    state: str = "unknown"
    machine: str | None = None
    carrier: bool | None = None


class TeamReport(_Part):
    """One team as the host's team daemon sees it (nonstop/agent/team_report.py ``team_view``)."""

    model_config = ConfigDict(extra="allow")

    mode: str | None = None
    state: str | None = None
    active: str | None = None
    transmit: tuple[str, ...] = ()
    failovers: int | None = None
    last_failover_at: float | None = None
    members: dict[str, TeamMemberReport] = Field(default_factory=dict)


class HostObserved(Record):
    """``hosts/<h>/observed``: what the host's agent reports, merged field by field by its parts
    (guests and usage, NICs and teams, patch level and agent version) — an open report."""

    model_config = ConfigDict(extra="allow")
    FAMILY: ClassVar[str] = "hosts/<host>/observed"

    state: str | None = None
    guests: tuple[str, ...] = ()
    usage: dict[str, Any] = Field(default_factory=dict)
    nics: dict[str, NicReport] = Field(default_factory=dict)
    teams: dict[str, TeamReport] = Field(default_factory=dict)
    teams_at: float | None = None
    patch_level: str | None = None
    agent_version: str | None = None
    agent_pid: int | None = None
    agent_started_at: float | None = None


class ComponentGroupRecord(_Part):
    state: str = "unknown"
    working: int | None = None
    total: int | None = None
    failed: tuple[str, ...] = ()


class HostComponents(Record):
    """``hosts/<h>/components``: the watcher's ``HostAssessment`` plus its policy state and
    what placement may do with the host (docs/components.md)."""

    FAMILY: ClassVar[str] = "hosts/<host>/components"

    host: str = ""
    health: str = "unknown"
    power_state: str | None = None
    reason: str = ""
    groups: dict[str, ComponentGroupRecord] = Field(default_factory=dict)
    policy: str | None = None
    policy_since: float | None = None
    on_degraded: str | None = None
    placement: str | None = None
    read_at: float | None = None
    read_seconds: float | None = None
    bmc_errors: int = 0
    events: str | None = None
    missing: tuple[str, ...] = ()


class HostPatch(Record):
    """``hosts/<h>/patch``: the executor's request to the host's agent and, in the same record,
    the agent's answer (nonstop/agent/patch.py describes the states)."""

    FAMILY: ClassVar[str] = "hosts/<host>/patch"

    type: str = "host-command"
    id: str
    host: str
    action: str
    command: str | None = None
    target: str = ""
    timeout: float | None = None
    restart_agent: bool = False
    state: str = "requested"
    requested_at: float | None = None
    started_at: float | None = None
    agent_pid: int | None = None
    agent_pid_before: int | None = None
    finished_at: float | None = None
    restarted_at: float | None = None
    exit_code: int | None = None
    output: str | None = None
    patch_level: str | None = None
    error: str | None = None
    boot_id: str | None = None
    boot_seconds: float | None = None


# ---------------------------------------------------------------------------- guests


class GuestDesired:
    """``guests/<g>/desired``: a ``GuestDefinition`` (the core's model) stored with ``schema``."""

    FAMILY = "guests/<guest>/desired"
    SCHEMA = SCHEMA

    @classmethod
    def encode(cls, definition: GuestDefinition) -> bytes:
        return encode_json({**definition.to_dict(), "schema": cls.SCHEMA})

    @classmethod
    def decode(cls, value: bytes) -> GuestDefinition:
        try:
            data = json.loads(value)
            check_version(cls.FAMILY, data, cls.SCHEMA)
            if not isinstance(data, dict):
                raise RecordError(f"{cls.FAMILY}: not an object")
            return GuestDefinition.from_dict(data)
        except RecordError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise RecordError(f"{cls.FAMILY}: {exc}") from exc


class ObservedGuestRecord(Record):
    """``guests/<g>/observed``: the agent's report (extra fields are the driver's status: ``detail("address")``,
    ``detail("pid")`` ...)."""

    model_config = ConfigDict(extra="allow")
    FAMILY: ClassVar[str] = "guests/<guest>/observed"

    host: str | None = None
    state: str | None = None
    fencing_epoch: int | None = None
    attempts: int = 0
    gave_up: bool = False
    failure_reason: str | None = None

    def core(self) -> ObservedGuest:
        return ObservedGuest(self.host, self.state, self.fencing_epoch, int(self.attempts or 0),
                             bool(self.gave_up), self.failure_reason)


class RunnerLock(Record):
    """``guests/<g>/runner``: the host whose agent runs the guest, on that agent's lease."""

    FAMILY: ClassVar[str] = "guests/<guest>/runner"

    host: str


class EpochRecord(Record):
    """``epoch/<g>``: the guest's fencing token (once stored as a bare number)."""

    FAMILY: ClassVar[str] = "epoch/<guest>"

    epoch: int

    @classmethod
    def legacy(cls, data: Any) -> Any:
        return {"epoch": data} if isinstance(data, int) and not isinstance(data, bool) else data


# ---------------------------------------------------------------- services, network


class BackendEntry(_Part):
    name: str
    address: str
    """``ip:port``."""
    weight: int = 1


class ServiceBackends(Record):
    """``services/<s>/backends``: the backends the controller wants in the service's balancer."""

    FAMILY: ClassVar[str] = "services/<service>/backends"

    backends: tuple[BackendEntry, ...] = ()

    @classmethod
    def legacy(cls, data: Any) -> Any:
        return {"backends": data} if isinstance(data, list) else data

    def names(self) -> set[str]:
        return {b.name for b in self.backends}


class IpamRecord(Record):
    """``ipam/<net>/<ip>``: who holds the address (once stored as the owner's name, plain text)."""

    FAMILY: ClassVar[str] = "ipam/<network>/<ip>"

    owner: str

    @classmethod
    def load_json(cls, value: bytes) -> Any:
        try:
            return json.loads(value)
        except ValueError:
            return value.decode()

    @classmethod
    def legacy(cls, data: Any) -> Any:
        return {"owner": str(data)} if isinstance(data, str | int) and not isinstance(data, bool) else data


# ---------------------------------------------------------------- controller, events


class HeartbeatEndpoint(_Part):
    """Where the leading controller listens for heartbeats on one management link."""

    link: str
    address: str
    port: int
    prefix: int = 24


class LeaderRecord(Record):
    """``leader``: the leading controller's id on its lease (created only if absent), then its
    status, republished every second."""

    FAMILY: ClassVar[str] = "leader"

    id: str = ""
    pid: int | None = None
    started_at: float | None = None
    heartbeat: tuple[HeartbeatEndpoint, ...] = ()
    updated_at: float | None = None
    passes: int = 0
    hosts: dict[str, str] = Field(default_factory=dict)
    """host → the controller's liveness verdict."""
    maintenance: tuple[str, ...] = ()
    heartbeats: dict[str, int] = Field(default_factory=dict)
    unknown_senders: int = 0
    ops: dict[str, str] = Field(default_factory=dict)
    balancer_errors: dict[str, str] = Field(default_factory=dict)
    cache: dict[str, int] = Field(default_factory=dict)


class EventRecord(Record):
    """``events/<seq>``: one entry of the event log; the fields beyond these are the event's data
    (``detail("after")``, ``detail("down_links")`` ...)."""

    model_config = ConfigDict(extra="allow")
    FAMILY: ClassVar[str] = "events/<seq>"

    seq: int
    at: float
    kind: str
    subject: str = ""
    reason: str = ""


class PatcherLock(Record):
    """``op-control/<id>/lock``: the patcher running the rollout, on its lease."""

    FAMILY: ClassVar[str] = "op-control/<id>/lock"

    patcher: str


class AbortRequest(Record):
    """``op-control/<id>/abort``: someone asks the rollout's patcher to stop."""

    FAMILY: ClassVar[str] = "op-control/<id>/abort"

    requested_at: float


# --------------------------------------------------------------------------- lookup

_BY_KIND_LEAF: dict[tuple[str, str], type[Record]] = {
    ("hosts", "desired"): HostDesired, ("hosts", "observed"): HostObserved, ("hosts", "alive"): HostAlive,
    ("hosts", "components"): HostComponents, ("hosts", "patch"): HostPatch,
    ("guests", "observed"): ObservedGuestRecord, ("guests", "runner"): RunnerLock,
    ("services", "backends"): ServiceBackends, ("op-control", "lock"): PatcherLock,
    ("op-control", "abort"): AbortRequest,
}
_BY_KIND: dict[str, type[Record]] = {
    "epoch": EpochRecord, "leader": LeaderRecord, "events": EventRecord, "ipam": IpamRecord,
}


def model_for(key: str) -> type[Record] | None:
    """The model of the value at ``key`` (None for families with models elsewhere: spec, guest
    desired, ops, intents, controller memory)."""
    parsed = keys.parse(key)
    return _BY_KIND.get(parsed.kind) or _BY_KIND_LEAF.get((parsed.kind, parsed.leaf))
