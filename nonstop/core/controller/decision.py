"""One decision pass in the making (pure): the working state the rules of ``decide`` share.

Role: ``Pass`` collects the commands of one ``decide`` call and keeps the invariants that span
its rules:
- a guest moves at most once per pass (``moved``), so no pass gives one guest two hosts;
- ``assignments`` is updated as moves are decided, so a later rule places against the
  cluster as it will be (two rules never fill the same free slot twice);
- ``move`` is the one way a rule moves a running guest: VMs live (``RequestMigration``, same
  epoch) when asked and possible, everything else cold (``MoveGuest``: drained from its
  services' balancers, then a bumped epoch);
- ``note`` reports an event only when its text for that topic changed (memory ``reported``);
- new operation ids are ``<kind>-<seed>-<n>``: the seed is drawn by the shell each pass.

Must not: read a clock or the store; decide policy (the rule modules do).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nonstop.core.controller.commands import Command, Emit, MoveGuest, RequestMigration
from nonstop.core.controller.memory import ControllerMemory
from nonstop.core.controller.view import ClusterView


@dataclass(frozen=True)
class Decision:
    commands: tuple[Command, ...]
    memory: ControllerMemory


@dataclass
class Pass:
    view: ClusterView
    memory: ControllerMemory
    commands: list[Command] = field(default_factory=list)
    moved: set[str] = field(default_factory=set)
    assignments: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, str] = field(default_factory=dict)
    busy: frozenset[str] = frozenset()
    _ids: int = 0

    @classmethod
    def start(cls, view: ClusterView, memory: ControllerMemory) -> Pass:
        return cls(view, memory, assignments=view.assignments(), conditions=view.conditions(), busy=view.busy())

    # ------------------------------------------------------------------ output

    def add(self, command: Command) -> None:
        self.commands.append(command)

    def emit(self, kind: str, subject: str, reason: str, **data: Any) -> None:
        self.commands.append(Emit(kind, subject, reason, data))

    def note(self, topic: str, text: str, kind: str, subject: str, reason: str | None = None, **data: Any) -> None:
        """Emit once per change of ``text`` under ``topic``."""
        if self.memory.reported.get(topic) == text:
            return
        self.memory = self.memory.with_changes(reported={**self.memory.reported, topic: text})
        self.emit(kind, subject, reason if reason is not None else text, **data)

    def forget(self, topic: str) -> None:
        if topic in self.memory.reported:
            self.memory = self.memory.with_changes(
                reported={k: v for k, v in self.memory.reported.items() if k != topic})

    def remember(self, **changes: Mapping[str, Any] | frozenset[str]) -> None:
        self.memory = self.memory.with_changes(**changes)

    def new_id(self, kind: str) -> str:
        self._ids += 1
        return f"{kind}-{self.view.id_seed}-{self._ids}"

    def finish(self) -> Decision:
        return Decision(tuple(self.commands), self.memory)

    # ------------------------------------------------------------------ moves

    def may_move(self, guest: str) -> bool:
        return guest not in self.moved and guest not in self.busy

    def drain_services(self, group: str | None) -> tuple[str, ...]:
        return tuple(s.name for s in self.view.spec.services
                     if s.backends is not None and group is not None and s.backends.group == group)

    def move(self, guest: str, target: str, why: str, *, live: bool, changes: Mapping[str, Any] | None = None,
             drain: bool = True) -> Command | None:
        """Move a placed guest to ``target``: the command, or None when a live migration of it is
        already under way (the agents finish that one first)."""
        v = self.view.guests[guest]
        d = v.desired
        if d is None or guest in self.moved:
            return None
        if d.migrate_to is not None:
            return None
        command: Command
        if live and d.kind == "vm" and not changes:
            command = RequestMigration(guest, d.host, target, self.new_id("migration"), v.desired_revision,
                                       f"live migration {d.host} -> {target}: {why}")
            self.emit("guest-migrating", guest, command.reason, source=d.host, target=target)
        else:
            epoch = max(v.epoch, d.fencing_epoch) + 1
            command = MoveGuest(guest, d.host, target, epoch, f"{d.host} -> {target}: {why}",
                                drain=self.drain_services(d.group) if drain else (), changes=dict(changes or {}))
            self.emit("guest-moved", guest, command.reason, source=d.host, target=target, epoch=epoch)
        self.add(command)
        self.moved.add(guest)
        self.assignments[guest] = target
        return command
