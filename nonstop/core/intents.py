"""Intent records (typed, pure): requests to the controller and its answers.

Role: the models of ``intents/<id>/request`` and ``intents/<id>/outcome`` (the store side, and the
protocol, are in nonstop/store/intents.py): the controller's ``decide`` reads them as part of its
view, so they live in the core.

Must not: do I/O or read a clock.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

IntentKind = Literal["migrate", "replace", "maintenance"]
OutcomeStatus = Literal["accepted", "done", "refused", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"done", "refused", "failed"})
SCHEMA = 1


class IntentRequest(BaseModel):
    """One request to the controller (``intents/<id>/request``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(SCHEMA, alias="schema")
    id: str
    kind: IntentKind
    requester: str
    """Who asks: ``api:<token name>``, ``patcher``, ``guest-update``, ``components``."""
    reason: str
    created_at: float
    guest: str | None = None
    target: str | None = None
    avoid: str | None = None
    live: bool = True
    host: str | None = None
    enter: bool = True
    evacuate: bool = True
    changes: dict[str, Any] = Field(default_factory=dict)
    """``replace``: definition fields to change (``command``: list of strings, ``image``: str)."""

    def describe(self) -> str:
        if self.kind == "maintenance":
            return f"{'enter' if self.enter else 'leave'} maintenance on {self.host}"
        where = self.target or (f"any host but {self.avoid}" if self.avoid else "the best host")
        return f"{self.kind} {self.guest} to {where}"


class IntentOutcome(BaseModel):
    """The controller's answer to one intent (``intents/<id>/outcome``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = Field(SCHEMA, alias="schema")
    id: str
    status: OutcomeStatus
    message: str
    updated_at: float
    target: str | None = None
    """``migrate``/``replace``: the host chosen."""
    source: str | None = None
    """``migrate``/``replace``: the host the guest was on when the intent was accepted."""
    epoch: int | None = None
    """The fencing epoch the guest got on its new host (cold moves)."""

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES


