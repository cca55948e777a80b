"""Where the agent's state lives in the store (``nonstop.store.keys``), and how records read back.

Role: the agent's view of the cluster key layout (docs/store.md) — all under ``/nonstop/<cluster>/``:

    guests/<guest>/desired    GuestDefinition JSON (``host`` says where it runs) — the controller writes
    guests/<guest>/observed   GuestStatus JSON + agent notes — written by the agent running the guest
    guests/<guest>/runner     {"host": H} on that agent's lease — at most one running copy
    epoch/<guest>             the guest's fencing epoch, an integer — the controller bumps it
    hosts/<host>/alive        {"pid", "started_at", ...} on the agent's lease — agent presence
    hosts/<host>/observed     merged: the agent sets its ``guests`` and ``usage`` fields only
    ops/migrate-<guest>       the live-migration hand-off between two agents (migration.py)

``guests/<guest>/lock`` is left to operations (controller); the agent's own "who runs it" lock is
``runner`` so the two never block each other.

Must not: decide anything or talk to drivers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nonstop.core.guests.model import GuestDefinition
from nonstop.store import keys as store_keys
from nonstop.store.base import Compare, KeyValue, Op, Store, encode_json


@dataclass(frozen=True)
class AgentKeys:
    cluster: str
    host: str

    @property
    def guests_prefix(self) -> str:
        return store_keys.guests_prefix(self.cluster)

    def desired(self, guest: str) -> str:
        return store_keys.guest_desired(self.cluster, guest)

    def observed(self, guest: str) -> str:
        return store_keys.guest_observed(self.cluster, guest)

    def runner(self, guest: str) -> str:
        maker = getattr(store_keys, "guest_runner", None)
        return maker(self.cluster, guest) if maker else f"{store_keys.guests_prefix(self.cluster)}{guest}/runner"

    @property
    def epochs_prefix(self) -> str:
        return store_keys.epochs_prefix(self.cluster)

    def epoch(self, guest: str) -> str:
        return store_keys.epoch(self.cluster, guest)

    def alive(self, host: str | None = None) -> str:
        return store_keys.host_alive(self.cluster, host or self.host)

    def host_observed(self, host: str | None = None) -> str:
        return store_keys.host_observed(self.cluster, host or self.host)

    @property
    def ops_prefix(self) -> str:
        return store_keys.ops_prefix(self.cluster)

    def migration(self, guest: str) -> str:
        return store_keys.op(self.cluster, f"migrate-{guest}")


@dataclass(frozen=True)
class ClusterGuests:
    """One read of ``guests/``: desired records (all hosts), runner locks, unreadable records."""

    desired: dict[str, GuestDefinition]
    runners: dict[str, tuple[str, KeyValue]]
    unreadable: dict[str, str]
    observed_hosts: dict[str, str | None]

    def for_host(self, host: str) -> dict[str, GuestDefinition]:
        return {name: d for name, d in self.desired.items() if d.host == host}


async def read_guests(store: Store, keys: AgentKeys) -> ClusterGuests:
    desired: dict[str, GuestDefinition] = {}
    runners: dict[str, tuple[str, KeyValue]] = {}
    unreadable: dict[str, str] = {}
    observed_hosts: dict[str, str | None] = {}
    prefix = keys.guests_prefix
    for kv in await store.list(prefix):
        name, _, leaf = kv.key[len(prefix):].partition("/")
        try:
            data = kv.json()
        except ValueError as exc:
            if leaf == "desired":
                unreadable[name] = f"unreadable desired record: {exc}"
            continue
        try:
            if leaf == "desired":
                desired[name] = GuestDefinition.from_dict(data)
            elif leaf == "runner":
                runners[name] = (str(data["host"]), kv)
            elif leaf == "observed":
                observed_hosts[name] = data.get("host") if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            if leaf == "desired":
                unreadable[name] = f"unreadable desired record: {exc}"
    return ClusterGuests(desired, runners, unreadable, observed_hosts)


async def read_epochs(store: Store, keys: AgentKeys) -> dict[str, int]:
    out: dict[str, int] = {}
    for kv in await store.list(keys.epochs_prefix):
        try:
            data = kv.json()
            out[kv.key[len(keys.epochs_prefix):]] = int(data["epoch"] if isinstance(data, dict) else data)
        except (ValueError, TypeError, KeyError):
            continue
    return out


async def acquire_runner(store: Store, keys: AgentKeys, guest: str, lease: int) -> str | None:
    """Take (or re-bind to our lease) the guest's runner lock. None on success, else the holder."""
    key = keys.runner(guest)
    value = encode_json({"host": keys.host})
    for _ in range(3):
        kv = await store.get(key)
        if kv is None:
            if await store.compare_and_set(key, value, 0, lease=lease):
                return None
            continue
        try:
            holder = str(kv.json()["host"])
        except (ValueError, TypeError, KeyError):
            holder = "?"
        if holder != keys.host:
            return holder
        if kv.lease == lease:
            return None
        # Ours from before a restart (the old lease is still alive): move it to the new lease.
        if await store.compare_and_set(key, value, kv.mod_revision, lease=lease):
            return None
    return "contention"


async def release_runner(store: Store, keys: AgentKeys, guest: str) -> None:
    key = keys.runner(guest)
    await store.txn([Compare.value(key, encode_json({"host": keys.host}))], [Op.delete(key)])


async def merge_host_observed(store: Store, keys: AgentKeys, fields: dict[str, Any]) -> None:
    """Set our fields of ``hosts/<host>/observed`` without clobbering what other components wrote."""
    key = keys.host_observed()
    for _ in range(5):
        kv = await store.get(key)
        try:
            current = kv.json() if kv is not None else {}
            if not isinstance(current, dict):
                current = {}
        except ValueError:
            current = {}
        if await store.compare_and_set(key, encode_json({**current, **fields}), kv.mod_revision if kv else 0):
            return
