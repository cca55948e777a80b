"""The client of a balancer's admin API (nonstop/lb/admin.py, routes in docs/lb.md): the one every
other process uses — the controller's backend sync, the patcher's drains, the API's stats poller.

Role: ``BalancerAdminClient(address)`` speaks JSON over HTTP/1.1 (httpx) to one balancer's admin
API at ``ip:port`` with short timeouts (``DEFAULT_TIMEOUT``, 2 s, for connect, read, write and
pool wait each): read a service or its backends, add and remove backends, set a backend's
state (ready / drain / maint) or weight, or send any request with ``request_json``. Every
failure is one exception type, ``BalancerAdminError``: ``status`` is the HTTP status when the
balancer answered with an error (404 unknown service or backend, 409 a backend of that name
exists, 400 a bad value), ``None`` when it could not be reached or its answer could not be read.
Environment proxies and .netrc are ignored (``trust_env=False``): admin APIs live on
management addresses, never behind a proxy.

One client per event loop (httpx binds its connections to the loop that opened them): make it
in the loop that uses it and close it there (``aclose`` or ``async with``). A caller in another
loop (e.g. a thread inside the lab's ctl namespace) makes a client of its own there.

Must not: retry, cache, or decide anything (callers are level-triggered and try again on their
next pass); or import the balancer's runtime (this runs in other processes).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_TIMEOUT = 2.0
"""Seconds for each of connect, read, write and pool wait: an admin API answers in
milliseconds, and a stuck balancer must not hold up a controller pass."""

_httpx_log = logging.getLogger("httpx")
if _httpx_log.level == logging.NOTSET:
    # httpx logs every request at INFO: a line a second per balancer from the API's poller and
    # more from the controller's sync. Failures reach the callers as BalancerAdminError instead.
    _httpx_log.setLevel(logging.WARNING)


class BalancerAdminError(Exception):
    """A request to a balancer's admin API failed.

    ``status``: the HTTP status of an error answer (>= 400), or ``None`` when the balancer was
    not reached (refused, timed out) or its answer was not JSON. ``detail``: the balancer's
    ``error`` message when it gave one."""

    def __init__(self, message: str, *, status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def _segment(name: str) -> str:
    """A service or backend name as one path segment."""
    return quote(name, safe="")


class BalancerAdminClient:
    """The admin API of one balancer at ``address`` (``ip:port`` or ``http://ip:port``)."""

    def __init__(
        self, address: str, *, timeout: float = DEFAULT_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        """``transport``: for tests (an ``httpx.MockTransport``); the network otherwise."""
        self.address = address
        self.base_url = address if "://" in address else f"http://{address}"
        self.timeout = timeout
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # verify=False: plain HTTP only, so no CA bundle to load (about 35 ms per client)
            self._http = httpx.AsyncClient(
                base_url=self.base_url, timeout=self.timeout, trust_env=False, verify=False, transport=self._transport
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def __aenter__(self) -> BalancerAdminClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ any route

    async def request_json(self, method: str, path: str, body: Any = None) -> Any:
        """One request (``body``, when given, sent as JSON); the decoded JSON answer.

        Raises ``BalancerAdminError``: with the status for an answer >= 400, with ``None``
        when the balancer was not reached or did not answer JSON."""
        where = f"{method} {self.base_url}{path}"
        try:
            response = await self._client().request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise BalancerAdminError(f"{where}: {exc or type(exc).__name__}") from exc
        try:
            doc = response.json() if response.content.strip() else None
        except ValueError:
            if response.status_code >= 400:
                raise BalancerAdminError(f"{where}: HTTP {response.status_code}", status=response.status_code) from None
            raise BalancerAdminError(f"{where}: the answer is not JSON") from None
        if response.status_code >= 400:
            detail = str(doc.get("error", "")) if isinstance(doc, dict) else ""
            raise BalancerAdminError(
                f"{where}: HTTP {response.status_code}" + (f": {detail}" if detail else ""),
                status=response.status_code,
                detail=detail,
            )
        return doc

    # ------------------------------------------------------------------ services and backends

    async def get_service(self, service: str) -> dict[str, Any]:
        """``GET /services/<service>``: name, mode, listen, algorithm, stats and backends."""
        doc = await self.request_json("GET", f"/services/{_segment(service)}")
        if not isinstance(doc, dict):
            raise BalancerAdminError(f"GET {self.base_url}/services/{service}: not a service document")
        return doc

    async def get_backends(self, service: str) -> list[dict[str, Any]]:
        """``GET /services/<service>/backends``: each backend's name, address, weight, health,
        admin state, serving, active requests and stats."""
        doc = await self.request_json("GET", f"/services/{_segment(service)}/backends")
        if not isinstance(doc, list):
            raise BalancerAdminError(f"GET {self.base_url}/services/{service}/backends: not a list")
        return [b for b in doc if isinstance(b, dict)]

    async def add_backend(self, service: str, name: str, address: str, weight: int = 1) -> dict[str, Any]:
        """``POST /services/<service>/backends``; the new backend. 409 when ``name`` exists."""
        body = {"name": name, "address": address, "weight": weight}
        doc = await self.request_json("POST", f"/services/{_segment(service)}/backends", body)
        return doc if isinstance(doc, dict) else {}

    async def remove_backend(self, service: str, name: str) -> None:
        """``DELETE /services/<service>/backends/<name>``. 404 when there is no such backend."""
        await self.request_json("DELETE", f"/services/{_segment(service)}/backends/{_segment(name)}")

    async def set_state(self, service: str, name: str, state: str) -> dict[str, Any]:
        """``PATCH`` the backend's admin state: ``ready``, ``drain`` or ``maint``; the backend."""
        return await self._patch_backend(service, name, {"state": state})

    async def set_weight(self, service: str, name: str, weight: int) -> dict[str, Any]:
        """``PATCH`` the backend's weight (0..1000); the backend."""
        return await self._patch_backend(service, name, {"weight": weight})

    async def _patch_backend(self, service: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        doc = await self.request_json("PATCH", f"/services/{_segment(service)}/backends/{_segment(name)}", body)
        return doc if isinstance(doc, dict) else {}
