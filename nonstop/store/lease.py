"""Keeping a lease alive: the presence keys of agents and the controller's leadership hang on it.

Role: ``LeaseKeeper`` grants a lease and renews it every third of its TTL in a background task
until it is closed (then it revokes the lease, so its keys vanish at once instead of after the
TTL). If renewal fails — the lease is gone, or the store has not answered for a whole TTL — it
sets ``lost`` and stops: whoever held something under the lease must assume it no longer does.

Must not: re-grant a lost lease on its own (the owner decides what losing it means), or hide
that it was lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType

from nonstop.store.base import Store, StoreError


class LeaseKeeper:
    """``async with LeaseKeeper(store, ttl) as lease: await store.put(key, v, lease=lease.id)``."""

    def __init__(self, store: Store, ttl_seconds: int) -> None:
        self.store = store
        self.ttl = ttl_seconds
        self.id = 0
        self.lost = asyncio.Event()
        """Set when the lease could not be renewed; the keeper stops renewing then."""
        self.reason = ""
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        self.id = await self.store.grant_lease(self.ttl)
        self._task = asyncio.create_task(self._renew(), name=f"nonstop-lease-{self.id}")
        return self.id

    async def _renew(self) -> None:
        last_success = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                alive = await asyncio.wait_for(self.store.keepalive(self.id), self.ttl / 3)
            except (StoreError, TimeoutError) as exc:
                if time.monotonic() - last_success < self.ttl:
                    continue  # the store may come back before the lease runs out
                self._lose(f"no renewal for {self.ttl} s: {exc}")
                return
            if not alive:
                self._lose("the lease expired or was revoked")
                return
            last_success = time.monotonic()

    def _lose(self, reason: str) -> None:
        self.reason = reason
        self.lost.set()

    async def close(self) -> None:
        """Stop renewing and revoke the lease (its keys are deleted now); idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            if not self.lost.is_set():
                with contextlib.suppress(StoreError):
                    await self.store.revoke(self.id)

    async def __aenter__(self) -> LeaseKeeper:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
