"""Every kind of persisted operation and its machine (pure): the one table of kinds.

Role: readers that list operations of every kind (the API's status, metrics, the dashboard) ask
here whether an operation is finished, instead of keeping their own list of final step names —
which went stale when a kind's steps changed (a finished rollout is ``complete``, a rolled-back
update ``rolled-back``).

Must not: know anything of a kind beyond its ``Machine``.
"""

from __future__ import annotations

from nonstop.core.controller.ops import FAILOVER
from nonstop.core.guests.migration import MIGRATION
from nonstop.core.operations import Machine
from nonstop.core.patching.steps import ROLLOUT
from nonstop.core.patching.update import UPDATE

MACHINES: dict[str, Machine] = {m.kind: m for m in (FAILOVER, MIGRATION, ROLLOUT, UPDATE)}


def is_final(kind: str, step: str) -> bool:
    """True when an operation of ``kind`` in ``step`` is finished (unknown kinds: never)."""
    machine = MACHINES.get(kind)
    return machine is not None and machine.is_final(step)
