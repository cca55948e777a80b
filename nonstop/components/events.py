"""Redfish events for the hardware watcher: a listener, and subscriptions on each BMC.

Role: where a BMC offers an EventService, the watcher subscribes (``Destination`` =
``http://<listen address>:<port>/events/<host>``, ``Context`` = ``nonstop-watcher-<cluster>``)
and this small HTTP listener wakes that host's poll loop the moment an Event arrives — the
event says *that* something changed; the watcher then reads the BMC as usual, so an event
never replaces a reading (a lost or reordered event costs at most one polling interval).
A BMC without an EventService (sushy-emulator) is simply polled.

- ``EventListener``: asyncio server on a socket the caller made (the watcher makes it in the
  BMCs' namespace, so a BMC there can reach it); ``POST /events/<host>`` → ``on_event(host,
  payload)``, answered 204. Anything else is 404; bodies over 64 KiB are refused.
- ``subscribe`` / ``subscription_alive`` / ``unsubscribe``: blocking Redfish calls (run in the
  watcher's per-host thread). ``subscribe`` first deletes subscriptions with our Context — a
  previous watcher's, whose listener is gone — so restarts do not pile them up.

Must not: interpret events as state (the reading does), or listen beyond the given address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

log = logging.getLogger("nonstop.components")

MAX_BODY = 64 * 1024


def listening_socket(address: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound, listening TCP socket (call it in the namespace the BMCs live in)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(64)
    sock.setblocking(False)
    return sock


class EventListener:
    def __init__(self, sock: socket.socket, on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.sock, self.on_event = sock, on_event
        self.server: asyncio.AbstractServer | None = None
        self.received = 0

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return str(host), int(port)

    def destination(self, host: str) -> str:
        address, port = self.address
        return f"http://{address}:{port}/events/{host}"

    async def start(self) -> EventListener:
        self.server = await asyncio.start_server(self._handle, sock=self.sock)
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status = "404 Not Found"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            lines = head.decode("latin-1").split("\r\n")
            method, path = (lines[0].split(" ") + ["", ""])[:2]
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                status = "413 Payload Too Large"
            elif method == "POST" and path.startswith("/events/"):
                raw = await asyncio.wait_for(reader.readexactly(length), 5.0) if length else b"{}"
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = {}
                self.received += 1
                self.on_event(path.removeprefix("/events/"), payload if isinstance(payload, dict) else {})
                status = "204 No Content"
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, OSError):
            status = "400 Bad Request"
        with contextlib.suppress(OSError):
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            writer.close()


# ---------------------------------------------------------------- subscriptions (blocking)


def _session(username: str, password: str) -> Any:
    import requests

    s = requests.Session()
    s.auth = (username, password)
    s.headers["Content-Type"] = "application/json"
    return s


def subscribe(url: str, username: str, password: str, destination: str, context: str,
              timeout: float = 2.0) -> str | None:
    """Subscribe ``destination`` to the BMC's events; the subscription's URI, or None when the
    BMC has no EventService (or refuses): then the watcher polls."""
    with _session(username, password) as s:
        root = s.get(f"{url}/redfish/v1/", timeout=timeout)
        service = (root.json() if root.ok else {}).get("EventService", {}).get("@odata.id")
        if not service:
            return None
        events = s.get(f"{url}{service}", timeout=timeout)
        collection = (events.json() if events.ok else {}).get("Subscriptions", {}).get("@odata.id")
        if not collection or (events.ok and events.json().get("ServiceEnabled") is False):
            return None
        listing = s.get(f"{url}{collection}", timeout=timeout)
        for member in (listing.json() if listing.ok else {}).get("Members", []):
            uri = member.get("@odata.id")
            got = s.get(f"{url}{uri}", timeout=timeout) if uri else None
            if got is not None and got.ok and got.json().get("Context") == context:
                s.delete(f"{url}{uri}", timeout=timeout)
        made = s.post(f"{url}{collection}", timeout=timeout,
                      data=json.dumps({"Destination": destination, "Protocol": "Redfish", "Context": context}))
        if made.status_code not in (200, 201):
            log.info("BMC %s refused an event subscription: %s %s", url, made.status_code, made.text[:200])
            return None
        location = made.headers.get("Location") or made.json().get("@odata.id")
        return str(location).removeprefix(url) if location else None


def subscription_alive(url: str, username: str, password: str, uri: str, timeout: float = 2.0) -> bool:
    with _session(username, password) as s:
        return bool(s.get(f"{url}{uri}", timeout=timeout).ok)


def unsubscribe(url: str, username: str, password: str, uri: str, timeout: float = 1.0) -> None:
    with contextlib.suppress(Exception), _session(username, password) as s:
        s.delete(f"{url}{uri}", timeout=timeout)
