"""Network namespaces: create, list, delete, run code and processes inside them.

Role: the one place that calls setns(2). ``NetnsThread`` is a worker thread that entered a
named namespace once; everything it runs (sockets it opens, /proc/sys it writes,
subprocesses it starts) belongs to that namespace, because Linux keeps the network
namespace per thread and a child inherits the namespace of the thread that forks it.
``spawn`` starts a long-lived process in a namespace (setns in the child before exec).

Must not: create a namespace as a side effect of entering one (pyroute2's ``setns``
defaults to O_CREAT; we never use it), or touch namespaces without the caller's name.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from pyroute2 import netns as _pyroute2_netns

NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

T = TypeVar("T")


def netns_path(name: str) -> str:
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
    _pyroute2_netns.create(name)
    return True


def delete(name: str) -> bool:
    if not exists(name):
        return False
    _pyroute2_netns.remove(name)
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


def run(name: str, argv: list[str], input: bytes | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[bytes]:
    """Run a short command inside ``name`` and wait for it (used for ``nft``)."""
    return subprocess.run(
        argv, input=input, capture_output=True, timeout=timeout, preexec_fn=lambda: enter(name), check=False
    )


def spawn(name: str, argv: list[str], log_path: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-lived process inside ``name``, detached from our session so it outlives
    the command that started it (``nonstop lab up``); its pid is the caller's to record."""
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env,
            preexec_fn=lambda: enter(name), start_new_session=True,
        )
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
