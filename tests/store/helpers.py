"""Helpers shared by the store tests: the backend handle and bounded waiting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from nonstop.store import Store, WatchEvent, open_store


@dataclass
class Backend:
    name: str
    url: str
    min_ttl: int
    """Shortest lease TTL the backend honours as given (etcd rounds shorter ones up to ~2 s)."""
    opened: list[Store]

    def open(self) -> Store:
        """Another client of the same store (another connection), closed at teardown."""
        store = open_store(self.url)
        self.opened.append(store)
        return store


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; fails the test after ``timeout``."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def next_events(watch: Any, count: int, timeout: float = 5.0) -> list[WatchEvent]:
    """The next ``count`` events of a watch, failing the test if they take longer than ``timeout`` each."""
    return [await asyncio.wait_for(watch.__anext__(), timeout) for _ in range(count)]
