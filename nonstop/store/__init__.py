"""The state store: one async interface (``Store``), two backends, and ``open_store(url)``.

``sqlite:///abs/path.db`` opens the embedded SQLite backend (the default; several processes on
one machine may share the file); ``etcd://host:port`` opens the etcd 3.4 backend. The key
layout is in ``nonstop.store.keys`` and docs/store.md.
"""

from __future__ import annotations

from urllib.parse import urlparse

from nonstop.store.base import (
    CompactedError,
    Compare,
    EventType,
    KeyValue,
    LeaseNotFound,
    Op,
    Store,
    StoreError,
    StoreUnavailable,
    TxnResult,
    Watch,
    WatchEvent,
)

__all__ = [
    "Compare",
    "CompactedError",
    "EventType",
    "KeyValue",
    "LeaseNotFound",
    "Op",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TxnResult",
    "Watch",
    "WatchEvent",
    "open_store",
]


def open_store(url: str) -> Store:
    """The store for ``url``: ``sqlite:///abs/path.db`` or ``etcd://host:port``. Close it when done."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        if parsed.netloc or not parsed.path.startswith("/") or parsed.path == "/":
            raise ValueError(f'expected sqlite:///absolute/path.db, got "{url}"')
        from nonstop.store.sqlite import SqliteStore

        return SqliteStore(parsed.path)
    if parsed.scheme == "etcd":
        if not parsed.hostname:
            raise ValueError(f'expected etcd://host:port, got "{url}"')
        from nonstop.store.etcd import EtcdStore

        return EtcdStore.from_url(url)
    raise ValueError(
        f'expected a store URL like sqlite:///var/lib/nonstop/state.db or etcd://127.0.0.1:2379, got "{url}"'
    )
