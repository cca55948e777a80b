"""The lab's door: a TCP forwarder from 127.0.0.1 in the root namespace into a lab namespace.

Role: the root namespace has no route into the lab, so people and tests reach lab
services (the controller, load-balanced services, the dashboard) through 127.0.0.1 ports
forwarded in. How it enters the namespace: the listening socket is an ordinary socket in
the root namespace; every outgoing socket is *created* by one worker thread that has
setns()'d into the target namespace (nonstop.net.netns.NetnsThread). A socket belongs to
the namespace it was created in, whichever thread uses it later, so the asyncio loop in
the main thread connects and pumps bytes on it normally. No helper process and no fd
passing are needed, and the forwarder never changes its own namespace.

Bounded: at most ``max_connections`` at once (more are closed at once), a connect
timeout, an idle timeout per connection, 64 KiB reads. Listens only on 127.0.0.0/8.

Run in-process (``Forwarder``) or as a process (``python -m nonstop.lab.forward``), which
``nonstop lab forward`` starts and records in the lab state so ``lab down`` stops it.

Must not: listen on anything but loopback, or forward to a namespace that is not the lab's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from nonstop.lab import names, state
from nonstop.net import netns

CHUNK = 64 * 1024


def _loopback_only(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the lab forwarder listens on loopback only, not {host}")


class Forwarder:
    def __init__(
        self,
        netns_name: str,
        target: tuple[str, int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        max_connections: int = 256,
        connect_timeout: float = 3.0,
        idle_timeout: float = 600.0,
    ) -> None:
        _loopback_only(listen[0])
        self.netns_name = netns_name
        self.target = target
        self.listen = listen
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.active = 0
        self.total = 0
        self.refused = 0
        self._thread: netns.NetnsThread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> int:
        self._thread = netns.NetnsThread(self.netns_name)
        self._server = await asyncio.start_server(self._accept, self.listen[0], self.listen[1])
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._thread is not None:
            self._thread.close()

    async def _open_inside(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert self._thread is not None
        sock = await asyncio.wrap_future(self._thread.submit(socket.socket, socket.AF_INET, socket.SOCK_STREAM))
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, self.target), self.connect_timeout)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_connections:
            self.refused += 1
            writer.close()
            return
        self.active += 1
        self.total += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            try:
                inner_reader, inner_writer = await self._open_inside()
            except (TimeoutError, OSError):
                return
            await asyncio.gather(self._pump(reader, inner_writer), self._pump(inner_reader, writer))
        except asyncio.CancelledError:
            pass  # close(): end quietly, asyncio's stream callback must not see a cancelled task
        finally:
            self.active -= 1
            self._tasks.discard(task)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await asyncio.wait_for(reader.read(CHUNK), self.idle_timeout)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if writer.can_write_eof():
                    writer.write_eof()
                else:
                    writer.close()


# ------------------------------------------------------------------ as a process


def _parse_addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _serve(args: argparse.Namespace) -> None:
    forwarder = Forwarder(args.netns, _parse_addr(args.target), _parse_addr(args.listen), args.max_connections)
    port = await forwarder.start()
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await forwarder.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="forward 127.0.0.1:PORT into a lab namespace")
    parser.add_argument("--netns", required=True)
    parser.add_argument("--target", required=True, help="IP:PORT inside the namespace")
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--max-connections", type=int, default=256)
    parser.add_argument("--ready-file")
    asyncio.run(_serve(parser.parse_args(argv)))


def resolve_namespace(cluster: str, where: str) -> str:
    """``ctl``, ``out``, ``fab`` or a host name -> the lab namespace."""
    spec_hosts = {h.name for h in _spec_hosts(cluster)}
    if where in ("ctl", "out", "fab") or where in spec_hosts:
        return f"{names.ns_prefix(cluster)}{where}"
    raise LookupError(f'"{where}" is not ctl, out, fab or a host of cluster {cluster}')


def _spec_hosts(cluster: str) -> list[Any]:
    from nonstop.lab.fabric import load_running_spec

    return list(load_running_spec(cluster).hosts)


def start_forward(cluster: str, where: str, target: tuple[str, int], listen_port: int = 0, timeout: float = 5.0) -> dict[str, Any]:
    """Start a forwarder process 127.0.0.1:``listen_port`` -> ``target`` inside ``where``
    (ctl, out, fab or a host) and record it in the lab state; returns the record."""
    ns = resolve_namespace(cluster, where)
    directory = names.state_dir(cluster)
    ready = os.path.join(directory, f"forward-{os.getpid()}-{time.monotonic_ns()}.port")
    with open(os.path.join(directory, "forward.log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nonstop.lab.forward", "--netns", ns, "--target", f"{target[0]}:{target[1]}",
             "--listen", f"127.0.0.1:{listen_port}", "--ready-file", ready],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            netns.stop_pids([proc.pid])
            raise RuntimeError(f"forwarder to {where} {target[0]}:{target[1]} did not start (see {directory}/forward.log)")
        time.sleep(0.01)
    with open(ready) as f:
        port = int(f.read())
    os.unlink(ready)
    record: dict[str, Any] = {"listen": f"127.0.0.1:{port}", "port": port, "netns": ns, "target": f"{target[0]}:{target[1]}", "pid": proc.pid}
    with state.locked(cluster):
        lab = state.load(cluster)
        if lab is None:
            netns.stop_pids([proc.pid])
            raise LookupError(f"no lab is up for cluster {cluster}")
        lab.forwards.append(record)
        state.save(lab)
    return record


def stop_forward(cluster: str, port: int) -> bool:
    with state.locked(cluster):
        lab = state.load(cluster)
        if lab is None:
            return False
        keep: list[dict[str, object]] = []
        stop: list[dict[str, object]] = []
        for record in lab.forwards:
            (stop if record["port"] == port else keep).append(record)
        netns.stop_pids([int(str(r["pid"])) for r in stop])
        lab.forwards = keep
        state.save(lab)
    return bool(stop)


if __name__ == "__main__":
    main()
