"""The store's door into the lab: etcd on this machine's 127.0.0.1:PORT, reachable at the same
127.0.0.1:PORT inside the lab's ctl and host namespaces, so one store URL works for ``up``, the
API, the controller and every agent.

Role: a relay run in a thread of ``nonstop up``. For each namespace it creates a listening socket
*inside* the namespace (a socket belongs to the namespace it was created in; nonstop.lab.probe.
socket_in) and, for each accepted connection, connects to 127.0.0.1:PORT from the relay's own
thread, which stays in the root namespace; bytes are pumped both ways. A namespace that appears
later (the lab is built after the relay starts) or is re-created gets a new listener.

Must not: listen on anything but 127.0.0.1 inside the lab's namespaces, or connect anywhere but
127.0.0.1:PORT in the root namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading

from nonstop.net import netns

CHUNK = 64 * 1024


class StoreLink:
    def __init__(self, port: int, namespaces: list[str]) -> None:
        self.port = port
        self.namespaces = list(namespaces)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: dict[str, tuple[int, asyncio.base_events.Server]] = {}
        self._stop: asyncio.Event | None = None
        self.connections = 0

    def start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            ready.set()
            self._loop.run_until_complete(self._main())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="nonstop-storelink", daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(5)

    async def _main(self) -> None:
        assert self._stop is not None
        try:
            while not self._stop.is_set():
                for ns in self.namespaces:
                    await self._ensure(ns)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), 0.1)
        finally:
            for _, server in self._servers.values():
                server.close()

    async def _ensure(self, ns: str) -> None:
        from nonstop.lab.probe import socket_in

        try:
            inode = os.stat(netns.netns_path(ns)).st_ino
        except OSError:
            return
        bound = self._servers.get(ns)
        if bound is not None and bound[0] == inode:
            return
        if bound is not None:
            bound[1].close()
        try:
            sock = await asyncio.to_thread(socket_in, ns, ("127.0.0.1", self.port), True)
        except (OSError, RuntimeError):
            # loopback not up yet, or the namespace is being torn down (entering it fails: the
            # worker's initializer raises and the pool reports itself broken): next round
            return
        sock.setblocking(False)
        server = await asyncio.start_server(self._accept, sock=sock)
        self._servers[ns] = (inode, server)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 3)
        except (OSError, TimeoutError):
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
