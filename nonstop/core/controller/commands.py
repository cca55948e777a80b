"""What ``decide`` asks the shell to do: frozen commands, each with its reason (pure).

Role: the controller's whole output vocabulary. The shell applies them in order, one store
transaction per command, every write guarded by leadership; a command that finds the store
changed under it (a compare fails) is dropped — the next pass decides again from the new state.

- placement: ``PlaceGuest`` (a new guest: the shell builds its definition with IPAM),
  ``MoveGuest`` (cold: drain from ``drain`` services first, then a new host under a bumped
  epoch; ``changes`` alters the definition, for rolling updates), ``RequestMigration`` (live,
  same epoch), ``CompleteMigration`` / ``ClearMigration`` (after the agents' hand-off),
  ``RemoveGuest``;
- hosts and failover: ``SaveFailover`` (persist the operation), ``Fence`` (make sure a fence of
  that attempt runs; idempotent), ``ReleaseHost`` (revoke a fenced host's agent lease),
  ``SetHostState`` (``hosts/<h>/desired``);
- services: ``SetBackends``;
- answers and record: ``AnswerIntent``, ``Emit`` (an event).

Must not: carry behaviour; a command is data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.controller.backends import Backend
from nonstop.core.controller.ops import FailoverOp


@dataclass(frozen=True)
class PlaceGuest:
    guest: str
    host: str
    epoch: int
    reason: str


@dataclass(frozen=True)
class MoveGuest:
    guest: str
    source: str
    target: str
    epoch: int
    """The new fencing epoch (current + 1)."""
    reason: str
    drain: tuple[str, ...] = ()
    """Services whose balancers drop the guest before it moves (the old copy is still serving)."""
    changes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestMigration:
    guest: str
    source: str
    target: str
    migration_id: str
    revision: int
    """The desired record's revision this was decided on (the write is conditional on it)."""
    reason: str


@dataclass(frozen=True)
class CompleteMigration:
    guest: str
    target: str
    revision: int
    reason: str


@dataclass(frozen=True)
class ClearMigration:
    guest: str
    revision: int
    reason: str


@dataclass(frozen=True)
class RemoveGuest:
    guest: str
    reason: str


@dataclass(frozen=True)
class SaveFailover:
    op: FailoverOp
    reason: str


@dataclass(frozen=True)
class Fence:
    op_id: str
    host: str
    attempt: int
    reason: str


@dataclass(frozen=True)
class ReleaseHost:
    host: str
    reason: str


@dataclass(frozen=True)
class SetHostState:
    host: str
    state: str
    """``maintenance`` or ``up``."""
    evacuate: bool
    by: str
    reason: str


@dataclass(frozen=True)
class SetBackends:
    service: str
    backends: tuple[Backend, ...]
    reason: str


@dataclass(frozen=True)
class AnswerIntent:
    intent_id: str
    status: str
    message: str
    target: str | None = None
    source: str | None = None
    epoch: int | None = None

    @property
    def reason(self) -> str:
        return self.message


@dataclass(frozen=True)
class Emit:
    kind: str
    subject: str
    reason: str
    data: Mapping[str, Any] = field(default_factory=dict)


Command = (PlaceGuest | MoveGuest | RequestMigration | CompleteMigration | ClearMigration | RemoveGuest
           | SaveFailover | Fence | ReleaseHost | SetHostState | SetBackends | AnswerIntent | Emit)

PLACEMENT_COMMANDS = (PlaceGuest, MoveGuest, RequestMigration, CompleteMigration, ClearMigration, RemoveGuest)
