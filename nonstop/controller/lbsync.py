"""Service → balancer backend sync (level-triggered).

Role: for every service, the controller computes the backends it wants (the pure
``desired_backends``), stores them in ``services/<svc>/backends`` and makes each running
balancer match through its admin API (docs/lb.md): read ``GET /services/<svc>/backends``,
``POST`` what is missing, ``DELETE`` what should not be there. Level-triggered: it compares
with what the balancer *reports* every pass, so a restarted balancer or a lost request is
repaired on the next pass. A tiny HTTP/1.1 client (one request per connection, bounded by a
timeout) keeps the controller free of HTTP libraries.

Must not: decide which replicas are healthy (the core does) or hold state between passes
beyond "what I stored last" (to skip identical store writes).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from nonstop.core.controller.backends import Backend, lb_changes
from nonstop.store import keys
from nonstop.store.base import Store, encode_json

log = logging.getLogger("nonstop.controller.lb")


class AdminError(Exception):
    pass


async def http_json(address: str, method: str, path: str, body: Any = None, timeout: float = 2.0) -> tuple[int, Any]:
    """One JSON request to ``address`` (``ip:port``); (status, decoded body)."""
    host, _, port = address.rpartition(":")
    payload = b"" if body is None else json.dumps(body).encode()
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode()

    async def go() -> tuple[int, Any]:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + payload)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        header, _, rest = raw.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        if b"transfer-encoding: chunked" in header.lower():
            rest = _dechunk(rest)
        return status, json.loads(rest) if rest.strip() else None

    try:
        return await asyncio.wait_for(go(), timeout)
    except (TimeoutError, OSError, ValueError, IndexError) as exc:
        raise AdminError(f"{method} http://{address}{path}: {exc or type(exc).__name__}") from exc


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2:]
    return out


class LbSync:
    def __init__(self, store: Store, cluster: str, balancers: Mapping[str, str]) -> None:
        self.store, self.cluster = store, cluster
        self.balancers = dict(balancers)
        """service → admin address (``ip:port``) of its balancer."""
        self._stored: dict[str, list[dict[str, object]]] = {}
        self.errors: dict[str, str] = {}

    async def store_backends(self, service: str, want: tuple[Backend, ...]) -> bool:
        doc = [b.to_dict() for b in want]
        if self._stored.get(service) == doc:
            return False
        await self.store.put(keys.service_backends(self.cluster, service), encode_json({"backends": doc}))
        self._stored[service] = doc
        return True

    async def remove(self, service: str, name: str) -> bool:
        """Take one backend out of the service's balancer now (before its guest is moved)."""
        admin = self.balancers.get(service)
        if admin is None:
            return False
        try:
            status, _ = await http_json(admin, "DELETE", f"/services/{service}/backends/{name}")
        except AdminError as exc:
            log.warning("balancer of %s: %s", service, exc)
            return False
        return status == 200

    async def apply(self, service: str, want: tuple[Backend, ...]) -> list[str]:
        """Make the service's balancer hold exactly ``want``; returns what was done."""
        admin = self.balancers.get(service)
        if admin is None:
            return []
        done = []
        try:
            status, have_doc = await http_json(admin, "GET", f"/services/{service}/backends")
            if status != 200:
                raise AdminError(f"GET backends of {service}: HTTP {status}")
            have = {str(b["name"]): str(b["address"]) for b in have_doc or []}
            changes = lb_changes(want, have)
            for backend in changes.add:
                await http_json(admin, "POST", f"/services/{service}/backends",
                                {"name": backend.name, "address": backend.address, "weight": backend.weight})
                done.append(f"+{backend.name}")
            for name in changes.remove:
                await http_json(admin, "DELETE", f"/services/{service}/backends/{name}")
                done.append(f"-{name}")
            for backend in changes.readdress:
                await http_json(admin, "DELETE", f"/services/{service}/backends/{backend.name}")
                await http_json(admin, "POST", f"/services/{service}/backends",
                                {"name": backend.name, "address": backend.address, "weight": backend.weight})
                done.append(f"~{backend.name}")
            self.errors.pop(service, None)
        except AdminError as exc:
            if self.errors.get(service) != str(exc):
                log.warning("balancer of %s: %s", service, exc)
            self.errors[service] = str(exc)
        return done
