"""Network namespaces: create, list, delete, run code and processes inside them.

Role: the one place that knows where named namespaces live (``NETNS_DIR``) and the one
place that calls setns(2). ``NetnsThread`` is a worker thread that entered a named
namespace once; everything it runs (sockets it opens, /proc/sys it writes, subprocesses it
starts) belongs to that namespace, because Linux keeps the network namespace per thread
and a child inherits the namespace of the thread that forks it. ``call`` runs one function
on such a thread (a socket made there stays in the namespace and works from any thread);
``run`` and ``spawn`` start a short or long-lived process in a namespace (forked by a
thread inside it); ``iproute`` gives pyroute2's IPRoute a netlink socket made by such a
thread; ``enter`` moves the calling thread for good (a daemon that lives in one namespace).
The one other setns(2) is ``nonstop/drivers/launch.py``, an exec shim that runs with
``python -S`` and so cannot import this module.

Nothing here runs Python in a forked child (no ``preexec_fn``, no pyroute2 helper processes):
a process with other threads — the etcd client's gRPC threads, asyncio's executor — may hold
locks at fork time, and the child then crashes or hangs. An agent on an etcd store saw its
guest starts fail that way ("child process is dead, status: -11", nft exiting silently).

Must not: create a namespace as a side effect of entering one (pyroute2's ``setns``
defaults to O_CREAT; we never use it), touch namespaces without the caller's name, or
import pyroute2 before a function needs it (the balancer and the BMC use this module and
start faster without it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pyroute2 import IPRoute

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def netns_path(name: str) -> str:
    """``nonstop-c1-h1`` -> /run/netns/nonstop-c1-h1; an absolute path passes through."""
    return os.path.join(NETNS_DIR, name)


def enter(name: str) -> None:
    """Move the calling thread into namespace ``name`` (which must exist)."""
    fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_names(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def create(name: str) -> bool:
    """Create ``name`` unless it exists; True when it was created."""
    if exists(name):
        return False
    if os.path.isdir(NETNS_DIR):
        _create_in_thread(name)
    else:
        from pyroute2 import netns as pyroute2_netns

        pyroute2_netns.create(name)  # first use: it also makes /run/netns a shared mount
    return True


MS_BIND = 4096


def _create_in_thread(name: str) -> None:
    """``ip netns add`` without a helper process: a short-lived thread unshares its own network
    namespace and bind-mounts it on /run/netns/<name> (both are per-thread operations)."""
    path = netns_path(name)
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o444))
    errors: list[str] = []

    def body() -> None:
        if _libc.unshare(CLONE_NEWNET) != 0:
            errors.append(f"unshare: {os.strerror(ctypes.get_errno())}")
        elif _libc.mount(b"/proc/thread-self/ns/net", path.encode(), None, MS_BIND, None) != 0:
            errors.append(f"mount: {os.strerror(ctypes.get_errno())}")

    thread = threading.Thread(target=body, name=f"netns-create-{name}")
    thread.start()
    thread.join()
    if errors:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise OSError(f"cannot create network namespace {name}: {errors[0]}")


def delete(name: str) -> bool:
    if not exists(name):
        return False
    from pyroute2 import netns as pyroute2_netns

    pyroute2_netns.remove(name)
    return True


def inode(name: str) -> int:
    return os.stat(netns_path(name)).st_ino


def pids_in(name: str) -> list[int]:
    """Processes whose network namespace is ``name`` (found by the namespace's inode)."""
    try:
        target = inode(name)
    except FileNotFoundError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                found.append(int(entry))
        except OSError:
            continue
    return found


def stop_pids(pids: list[int], timeout: float = 3.0) -> None:
    """SIGTERM each pid, wait up to ``timeout``, then SIGKILL whatever is left."""
    alive = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            alive.append(pid)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # reap our own children
            if not _alive(pid):
                alive.remove(pid)
        time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def alive(pid: int) -> bool:
    return _alive(pid)


class NetnsThread:
    """A single worker thread living in one namespace; ``call`` runs a function there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{name}", initializer=enter, initargs=(name,))

    def call(self, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def submit(self, fn: Callable[..., T], *args: object, **kwargs: object) -> Future[T]:
        """Run ``fn`` in the namespace without waiting (wrap with asyncio.wrap_future)."""
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> NetnsThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def inside(name: str) -> Iterator[NetnsThread]:
    thread = NetnsThread(name)
    try:
        yield thread
    finally:
        thread.close()


def _missing(name: str) -> OSError:
    return FileNotFoundError(2, f"network namespace {name} does not exist", netns_path(name))


def call(name: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``fn(*args, **kwargs)`` on a short-lived thread inside ``name``; its exception is re-raised.
    For one step that must happen in the namespace: opening a socket (it stays there and
    works from any thread), writing /proc/sys, starting a process without ``preexec_fn``."""
    if not exists(name):
        raise _missing(name)
    with NetnsThread(name) as thread:
        return thread.call(fn, *args, **kwargs)


def run(name: str, argv: list[str], input: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run a short command inside ``name`` and wait for it (used for ``nft``). Forked by a
    thread inside the namespace, so the child inherits it and no Python runs in the child."""
    return call(name, subprocess.run, argv, input=input, capture_output=True, timeout=timeout, check=False)


def spawn(name: str, argv: list[str], log_path: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-lived process inside ``name``, detached from our session so it outlives
    the command that started it (``nonstop lab up``); its pid is the caller's to record."""
    if not exists(name):
        raise _missing(name)
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return call(name, subprocess.Popen, argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
                    start_new_session=True)
    finally:
        if log_path:
            out.close()  # type: ignore[union-attr]


def read_sysctl(path: str) -> str | None:
    """Read /proc/sys/<path> in the calling thread's namespace (call through NetnsThread)."""
    try:
        with open(f"/proc/sys/{path}") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def write_sysctl(path: str, value: str) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(value)


def _netlink_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, 0)  # NETLINK_ROUTE


def open_iproute(name: str | None) -> IPRoute:
    """pyroute2's IPRoute on a netlink socket that belongs to namespace ``name`` (None: the calling
    thread's). The socket is made by a thread inside the namespace, not by pyroute2's forked
    helper (``IPRoute(netns=...)``), and works from any thread. The caller closes it."""
    from pyroute2 import IPRoute

    if name is None:
        return IPRoute()
    return IPRoute(fileno=call(name, _netlink_socket).detach())


@contextlib.contextmanager
def iproute(name: str | None) -> Iterator[IPRoute]:
    """``open_iproute`` as a context manager (closed on exit)."""
    ipr = open_iproute(name)
    try:
        yield ipr
    finally:
        ipr.close()
