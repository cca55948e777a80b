"""Store fixtures: every conformance test runs against SQLite and against a real etcd 3.4.

The etcd server is started once per test session on 127.0.0.1 with free ports and a temporary
data dir, waited for until healthy, and stopped by its PID at the end. Each test gets its own
key prefix, so tests sharing the etcd server never see each other's keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from nonstop.store import Store

from .etcd_process import ETCD, EtcdProcess, running_etcd
from .helpers import Backend


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdProcess]:
    """One etcd for the session's conformance tests."""
    if ETCD is None:
        pytest.skip("etcd is not installed (apt-get install etcd-server)")
    with running_etcd() as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        backend = Backend("sqlite", f"sqlite://{tmp_path / 'state.db'}", 1, [])
    else:
        server: EtcdProcess = request.getfixturevalue("etcd_server")
        backend = Backend("etcd", server.url, 2, [])
    try:
        yield backend
    finally:
        for store in backend.opened:
            await store.close()


@pytest.fixture
async def store(backend: Backend) -> Store:
    return backend.open()


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test alone (the etcd server is shared by the session)."""
    return f"/test/{uuid.uuid4().hex[:10]}/"
