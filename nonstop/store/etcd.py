"""The etcd 3.4 state store backend, for clusters that span machines.

Role: implement ``nonstop.store.base.Store`` over etcd's v3 gRPC API with aetcd (asyncio). The
store model IS etcd's, so this is a thin translation: requests are built from aetcd's protobuf
messages and sent through its stubs (so every response's header revision is available), watches
use aetcd's multiplexed watch stream, and gRPC errors become the store's typed errors.

Must not: interpret keys or values; retry writes on its own (a caller that gets
``StoreUnavailable`` decides; a write may or may not have happened, as with any remote store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlparse

import aetcd
from aetcd import exceptions as etcd_errors
from aetcd import rpc, rtypes

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
    check_ops,
    prefix_end,
)

_TARGETS = {
    "mod_revision": (rpc.Compare.MOD, "mod_revision"),
    "create_revision": (rpc.Compare.CREATE, "create_revision"),
    "version": (rpc.Compare.VERSION, "version"),
    "value": (rpc.Compare.VALUE, "value"),
}
_RESULTS = {"==": rpc.Compare.EQUAL, "!=": rpc.Compare.NOT_EQUAL, "<": rpc.Compare.LESS, ">": rpc.Compare.GREATER}


def _error(exc: BaseException) -> StoreError:
    """The store error for a gRPC / aetcd failure."""
    if isinstance(exc, rpc.AioRpcError):
        details = exc.details() or ""
        if "lease not found" in details:
            return LeaseNotFound(details)
        return StoreUnavailable(f"etcd: {exc.code().name}: {details}")
    if isinstance(exc, etcd_errors.ClientError):
        text = str(exc)
        if "lease not found" in text:
            return LeaseNotFound(text)
        return StoreUnavailable(f"etcd: {type(exc).__name__}: {text}")
    return StoreError(str(exc))


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.version, kv.lease)


def _range(prefix: str) -> tuple[bytes, bytes]:
    start = prefix.encode()
    return (start, prefix_end(start)) if start else (b"\0", b"\0")


def _request_op(op: Op) -> Any:
    if op.kind == "put":
        return rpc.RequestOp(request_put=rpc.PutRequest(key=op.key.encode(), value=op.value, lease=op.lease or 0))
    if op.kind == "delete":
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key.encode()))
    key, end = _range(op.key)
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))


def _compare(compare: Compare) -> Any:
    target, field = _TARGETS[compare.target]
    message = rpc.Compare(key=compare.key.encode(), target=target, result=_RESULTS[compare.op])
    setattr(message, field, compare.operand)
    return message


RECONNECT_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.min_reconnect_backoff_ms": 200,  # gRPC core also takes it as the connect timeout (default 20 s)
    "grpc.max_reconnect_backoff_ms": 1000,
    # A partition black-holes the TCP connection instead of closing it: without pings the channel
    # waits on TCP's retransmission back-off, which after a 10 s cut may next try 12 s after the
    # link heals. A ping unanswered for 2 s closes the connection and the channel redials every
    # second. 5 s between pings, only while calls are active, is what etcd's default enforcement
    # (--grpc-keepalive-min-time 5s, no pings without streams) accepts.
    "grpc.keepalive_time_ms": 5000,
    "grpc.keepalive_timeout_ms": 2000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.http2.max_pings_without_data": 0,
}


class EtcdStore(Store):
    """``etcd://HOST:PORT``: one gRPC channel per store object (create it inside the event loop using it)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 2379, timeout: float = 5.0) -> None:
        self.url = f"etcd://{host}:{port}"
        self._timeout = timeout
        # gRPC's default reconnect back-off grows to 120 s: an agent cut off by a partition would
        # stay deaf for many seconds after it heals. A cluster store is worth retrying every second.
        self._client = aetcd.Client(host=host, port=port, timeout=timeout, options=RECONNECT_OPTIONS)
        self._closed = False

    @classmethod
    def from_url(cls, url: str) -> EtcdStore:
        parsed = urlparse(url)
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 2379)

    async def _call(self, stub_name: str, method: str, request: Any) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            await self._client.connect()
            stub = getattr(self._client, stub_name)
            return await getattr(stub, method)(request, timeout=self._timeout, metadata=self._client.metadata)
        except (rpc.AioRpcError, etcd_errors.ClientError) as exc:
            raise _error(exc) from exc

    async def get(self, key: str) -> KeyValue | None:
        response = await self._call("kvstub", "Range", rpc.RangeRequest(key=key.encode()))
        return _kv(response.kvs[0]) if response.kvs else None

    async def put(self, key: str, value: bytes, lease: int | None = None) -> int:
        request = rpc.PutRequest(key=key.encode(), value=value, lease=lease or 0)
        return int((await self._call("kvstub", "Put", request)).header.revision)

    async def delete(self, key: str) -> bool:
        response = await self._call("kvstub", "DeleteRange", rpc.DeleteRangeRequest(key=key.encode()))
        return bool(response.deleted)

    async def delete_prefix(self, prefix: str) -> int:
        key, end = _range(prefix)
        response = await self._call("kvstub", "DeleteRange", rpc.DeleteRangeRequest(key=key, range_end=end))
        return int(response.deleted)

    async def list(self, prefix: str) -> list[KeyValue]:
        key, end = _range(prefix)
        request = rpc.RangeRequest(
            key=key, range_end=end, sort_order=rpc.RangeRequest.ASCEND, sort_target=rpc.RangeRequest.KEY
        )
        return [_kv(kv) for kv in (await self._call("kvstub", "Range", request)).kvs]

    async def txn(self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()) -> TxnResult:
        check_ops(success)
        check_ops(failure)
        request = rpc.TxnRequest(
            compare=[_compare(c) for c in compares],
            success=[_request_op(op) for op in success],
            failure=[_request_op(op) for op in failure],
        )
        response = await self._call("kvstub", "Txn", request)
        return TxnResult(bool(response.succeeded), int(response.header.revision))

    def watch(self, prefix: str, start_revision: int | None = None) -> Watch:
        return _EtcdWatch(self, prefix, start_revision)

    async def grant_lease(self, ttl_seconds: int) -> int:
        if ttl_seconds <= 0:
            raise ValueError(f"expected a positive TTL, got {ttl_seconds}")
        response = await self._call("leasestub", "LeaseGrant", rpc.LeaseGrantRequest(TTL=ttl_seconds, ID=0))
        return int(response.ID)

    async def keepalive(self, lease_id: int) -> bool:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            reply = await self._client.refresh_lease(lease_id)
        except (rpc.AioRpcError, etcd_errors.ClientError) as exc:
            raise _error(exc) from exc
        return reply is not None and reply.TTL > 0

    async def revoke(self, lease_id: int) -> None:
        try:
            await self._call("leasestub", "LeaseRevoke", rpc.LeaseRevokeRequest(ID=lease_id))
        except LeaseNotFound:
            pass

    async def revision(self) -> int:
        response = await self._call("kvstub", "Range", rpc.RangeRequest(key=b"\0", count_only=True))
        return int(response.header.revision)

    async def compact(self, revision: int) -> None:
        revision = min(revision, await self.revision())
        try:
            await self._call("kvstub", "Compact", rpc.CompactionRequest(revision=revision, physical=False))
        except StoreUnavailable as exc:
            if "compacted" not in str(exc):
                raise

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._client.close()


class _EtcdWatch(Watch):
    def __init__(self, store: EtcdStore, prefix: str, start_revision: int | None) -> None:
        self._store = store
        self._prefix = prefix
        self._start_revision = start_revision
        self._watch: Any = None
        self._events: AsyncIterator[Any] | None = None
        self._done = False
        self._error: StoreError | None = None

    async def start(self) -> None:
        if self._watch is not None or self._done:
            return
        if self._store._closed:
            raise StoreError("the store is closed")
        key, end = _range(self._prefix)
        try:
            await self._store._client.connect()
            self._watch = await self._store._client.watch(key, range_end=end, start_revision=self._start_revision)
        except etcd_errors.RevisionCompactedError as exc:
            raise CompactedError(self._start_revision or 0, exc.compacted_revision) from exc
        except (rpc.AioRpcError, etcd_errors.ClientError) as exc:
            raise _error(exc) from exc
        self._events = self._watch.__aiter__()

    async def __anext__(self) -> WatchEvent:
        if self._error is not None:
            raise self._error  # a failed watch keeps failing the same way
        await self.start()
        if self._done or self._events is None:
            raise StopAsyncIteration
        try:
            event = await self._events.__anext__()
        except etcd_errors.RevisionCompactedError as exc:
            self._error = CompactedError(self._start_revision or 0, exc.compacted_revision)
            raise self._error from exc
        except (rpc.AioRpcError, etcd_errors.ClientError) as exc:
            self._error = _error(exc)
            raise self._error from exc
        kv = event.kv
        if event.kind == rtypes.EventKind.PUT:
            return WatchEvent(
                EventType.PUT,
                kv.key.decode(),
                bytes(kv.value),
                kv.mod_revision,
                kv.create_revision,
                kv.version,
                kv.lease,
            )
        return WatchEvent(EventType.DELETE, kv.key.decode(), b"", kv.mod_revision)

    async def aclose(self) -> None:
        if self._done:
            return
        self._done = True
        if self._watch is not None and not self._store._closed:
            try:
                await self._watch.cancel()
            except (rpc.AioRpcError, etcd_errors.ClientError):
                pass
