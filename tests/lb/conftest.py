"""Fixtures for the balancer's integration tests (helpers live in helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from .helpers import BackendProcess


@pytest.fixture(scope="session")
def event_loop_policy() -> uvloop.EventLoopPolicy:
    """The balancer runs on uvloop in production; its tests do too."""
    return uvloop.EventLoopPolicy()


@pytest.fixture
def backends() -> Iterator[Any]:
    started: list[BackendProcess] = []

    def make(*names: str) -> list[BackendProcess]:
        out = [BackendProcess(n).start() for n in names]
        started.extend(out)
        return out

    yield make
    for b in started:
        b.kill()
