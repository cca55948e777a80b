"""The runtime admin API: small JSON over HTTP/1.1 on 127.0.0.1, plus Prometheus ``/metrics``.

Role: let an operator (or, later, the cluster controller) list services and backends with
health and stats, add/remove servers, set a server's state (ready / drain / maint) and
weight, reload the config, and scrape metrics. Requests are tiny, so this is a minimal
asyncio streams handler (one request per connection, ``Connection: close``), kept off the
data planes' hot path. Routes are documented in docs/lb.md.

The balancer is seen through the ``BalancerControl`` Protocol (defined here): runtime.py
builds this server, so this module never imports it. The client side of these routes is
nonstop/lb/client.py.

Must not: block the event loop, change anything except through the balancer's methods
(which keep the pools, the nft table and worker processes in step), or import the runtime.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Protocol

from pydantic import ValidationError

from nonstop.core.lb.health import AdminState
from nonstop.core.lb.pool import UnknownBackend
from nonstop.core.spec import StaticServer
from nonstop.specfile import SpecError

log = logging.getLogger("nonstop.lb.admin")

MAX_BODY = 1024 * 1024


class AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BalancerControl(Protocol):
    """What the admin API reads and changes on the balancer (``nonstop.lb.runtime.Balancer``)."""

    generation: int

    def metrics_text(self) -> str: ...

    def stats(self) -> dict[str, Any]: ...

    def describe(self) -> list[dict[str, Any]]: ...

    async def reload(self) -> None:
        """Re-read the config file; raises SpecError when it is invalid (the running config stays)."""

    def add_server(self, service: str, server: StaticServer) -> None: ...

    def remove_server(self, service: str, name: str) -> None: ...

    def set_state(self, service: str, name: str, state: AdminState) -> None: ...

    def set_weight(self, service: str, name: str, weight: int) -> None: ...


_BACKEND = re.compile(r"^/services/([^/]+)/backends/([^/]+)$")
_BACKENDS = re.compile(r"^/services/([^/]+)/backends$")
_SERVICE = re.compile(r"^/services/([^/]+)$")


class AdminServer:
    def __init__(self, balancer: BalancerControl) -> None:
        self.balancer = balancer
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._handle, host, port, reuse_address=True)
        addr = self.server.sockets[0].getsockname()
        return addr[0], addr[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, ctype, body = 500, "application/json", b"{}"
        try:
            async with asyncio.timeout(10):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length > MAX_BODY:
                    raise AdminError(413, "body too large")
                raw = await reader.readexactly(length) if length else b""
                path = target.split("?", 1)[0].rstrip("/") or "/"
                status, payload = await self.route(method.upper(), path, raw)
                if isinstance(payload, str):
                    ctype, body = "text/plain; version=0.0.4; charset=utf-8", payload.encode()
                else:
                    body = (json.dumps(payload, indent=1, default=str) + "\n").encode()
        except AdminError as exc:
            status, body = exc.status, (json.dumps({"error": exc.message}) + "\n").encode()
        except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            status, body = 400, b'{"error": "malformed request"}\n'
        except Exception as exc:  # the admin API must outlive its own bugs
            log.exception("admin request failed")
            status, body = 500, (json.dumps({"error": str(exc)}) + "\n").encode()
        try:
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    def _json(self, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise AdminError(400, "body must be JSON") from None
        if not isinstance(data, dict):
            raise AdminError(400, "body must be a JSON object")
        return data

    async def route(self, method: str, path: str, raw: bytes) -> tuple[int, Any]:
        b = self.balancer
        if path == "/health" and method == "GET":
            return 200, {"ok": True}
        if path == "/metrics" and method == "GET":
            return 200, b.metrics_text()
        if path == "/stats" and method == "GET":
            return 200, b.stats()
        if path == "/services" and method == "GET":
            return 200, b.describe()
        if path == "/reload" and method == "POST":
            try:
                await b.reload()
            except SpecError as exc:
                raise AdminError(400, str(exc)) from None
            return 200, {"reloaded": True, "generation": b.generation}
        m = _SERVICE.match(path)
        if m and method == "GET":
            return 200, self._service(m.group(1))
        m = _BACKENDS.match(path)
        if m:
            svc = m.group(1)
            self._service(svc)
            if method == "GET":
                return 200, self._service(svc)["backends"]
            if method == "POST":
                try:
                    server = StaticServer.model_validate(self._json(raw))
                    b.add_server(svc, server)
                except ValidationError as exc:
                    raise AdminError(400, exc.errors(include_url=False)[0]["msg"]) from None
                except ValueError as exc:
                    raise AdminError(409, str(exc)) from None
                return 201, self._backend(svc, server.name)
        m = _BACKEND.match(path)
        if m:
            svc, name = m.group(1), m.group(2)
            self._service(svc)
            self._backend(svc, name)
            if method == "GET":
                return 200, self._backend(svc, name)
            if method == "DELETE":
                b.remove_server(svc, name)
                return 200, {"removed": name}
            if method in ("PUT", "PATCH", "POST"):
                data = self._json(raw)
                unknown = set(data) - {"state", "weight"}
                if unknown:
                    raise AdminError(400, f"unknown fields {sorted(unknown)}; expected state and/or weight")
                if "state" in data:
                    try:
                        state = AdminState(data["state"])
                    except ValueError:
                        raise AdminError(400, "state must be ready, drain or maint") from None
                    b.set_state(svc, name, state)
                if "weight" in data:
                    weight = data["weight"]
                    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1000:
                        raise AdminError(400, "weight must be an integer within 0..1000")
                    b.set_weight(svc, name, weight)
                return 200, self._backend(svc, name)
        raise AdminError(404 if method in ("GET", "POST", "PUT", "PATCH", "DELETE") else 405, f"no route {method} {path}")

    def _service(self, name: str) -> dict[str, Any]:
        for svc in self.balancer.describe():
            if svc["name"] == name:
                return svc
        raise AdminError(404, f'no service "{name}"')

    def _backend(self, service: str, name: str) -> dict[str, Any]:
        for backend in self._service(service)["backends"]:
            if backend["name"] == name:
                return dict(backend)
        raise AdminError(404, f'no backend "{name}" in service "{service}"')


__all__ = ["AdminError", "AdminServer", "BalancerControl", "UnknownBackend"]
