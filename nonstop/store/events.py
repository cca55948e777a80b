"""The cluster's event log in the store: every decision with its reason and timing.

Role: append ``events/<seq>`` records (``seq`` = wall-clock nanoseconds, strictly increasing
within the process, so keys sort in time order across restarts of the writer) with
an ``EventRecord`` (nonstop/store/records.py: ``seq, at, kind, subject, reason`` and the event's
data), and read them back in order. Writers: the
controller (kinds listed in docs/controller.md: ``host-state``, ``host-dead``, ``fence``,
``failover-moved``, ``guest-placed``, ``guest-moved``, ``guest-serving``, ``unplaceable``,
``backends``, ``failback``, ``maintenance`` ...), the patcher, the hardware watcher and the
mirror reconciler (docs/components.md); readers: the API, the dashboard, the demo, tests.
``EventLog`` also keeps the last events in memory for tests and status.

It lives beside the store (not in the controller) because every shell writes or reads it:
a shell that logs an event depends on the store, never on the controller.

Must not: decide anything, or import any shell; a failed write is logged and dropped (the
log never blocks a failover).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any

from nonstop.store import keys
from nonstop.store.base import Op, Store, StoreError
from nonstop.store.record import decode_kvs, put, put_op
from nonstop.store.records import EventRecord

log = logging.getLogger("nonstop.controller.events")
"""The name these log lines have always had (log filters and readers rely on it)."""


class EventLog:
    def __init__(self, store: Store, cluster: str, keep: int = 1000) -> None:
        self.store, self.cluster = store, cluster
        self.recent: deque[EventRecord] = deque(maxlen=keep)
        self._last_seq = 0

    def _seq(self) -> int:
        seq = max(time.time_ns(), self._last_seq + 1)
        self._last_seq = seq
        return seq

    async def emit(self, kind: str, subject: str, reason: str, **data: Any) -> EventRecord:
        record = new_event(self._seq(), kind, subject, reason, **data)
        self.recent.append(record)
        log.info("%s %s: %s", kind, subject, reason)
        try:
            await put(self.store, keys.event(self.cluster, record.seq), record)
        except StoreError as exc:
            log.warning("event not stored (%s): %s", exc, record.data())
        return record


def new_event(seq: int, kind: str, subject: str, reason: str, **data: Any) -> EventRecord:
    """The record of event ``seq`` (wall-clock nanoseconds: ``at`` is the same instant in seconds)."""
    return EventRecord(seq=seq, at=seq / 1e9, kind=kind, subject=subject, reason=reason, **data)


def event_op(cluster: str, record: EventRecord) -> Op:
    """The put of ``record`` into the log (for writers that log an event with other writes)."""
    return put_op(keys.event(cluster, record.seq), record)


async def read_events(store: Store, cluster: str, since_seq: int = 0) -> list[EventRecord]:
    """Every stored event with ``seq > since_seq``, in order (for tests, the API, the dashboard);
    a value that is not an event is skipped."""
    prefix = keys.events_prefix(cluster)
    found = decode_kvs(await store.list(prefix), prefix, EventRecord).values()
    return sorted((e for e in found if e.seq > since_seq), key=lambda e: e.seq)
