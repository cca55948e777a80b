"""Real power-off for a lab host: kill every process in the host's network namespace.

Role: a lab host *is* its network namespace ``nonstop-<cluster>-<host>`` and the processes
in it (agent, guests, QEMU). Cutting its power therefore means: find every PID whose
``/proc/<pid>/ns/net`` is that namespace (same device and inode as its bind mount,
``nonstop.net.netns.netns_path``), SIGKILL them, and repeat until none is left — a process may fork between
our scan and our kill, so one pass is not enough. Zombies drop out on their own: a
process that has exited no longer has a namespace to compare.

Safety: the BMC's own PID is never killed (it should not be in the namespace, but a
mistaken configuration must not make the BMC kill itself), nor is anything whose
namespace differs — the comparison is by (st_dev, st_ino), never by name.

Must not: delete the namespace (the lab owns it) or touch processes by name.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from nonstop.net.netns import netns_path


def namespace_id(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def pids_in_namespace(ns: tuple[int, int], exclude: frozenset[int] = frozenset()) -> list[int]:
    """Every live PID whose network namespace is ``ns`` (except ``exclude``)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            st = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue  # exited, a zombie, or a kernel thread we may not inspect
        if (st.st_dev, st.st_ino) == ns:
            pids.append(pid)
    return pids


@dataclass
class KillReport:
    namespace: str
    killed: list[int] = field(default_factory=list)
    remaining: list[int] = field(default_factory=list)
    seconds: float = 0.0
    namespace_missing: bool = False

    @property
    def complete(self) -> bool:
        return not self.remaining


def _signal_if_in(pid: int, ns: tuple[int, int], sig: int) -> bool:
    """Signal ``pid`` only if it is (still) in ``ns``, race-free against PID reuse: the
    pidfd pins the process, the namespace is checked after pinning, and the signal goes
    through the pidfd — so a PID recycled by a process outside can never be hit."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
        if (st.st_dev, st.st_ino) != ns:
            return False
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except OSError:
        return False
    finally:
        os.close(pidfd)


def _protected() -> frozenset[int]:
    return frozenset({os.getpid()})


def kill_namespace(name_or_path: str, *, sig: int = signal.SIGKILL, timeout: float = 5.0) -> KillReport:
    """Send ``sig`` to every process in the namespace until none is left or ``timeout``.

    With SIGKILL this is a hard power-off; the report says what was killed and what (if
    anything) survived the timeout. Blocking: call it from a thread in async code.
    """
    path = netns_path(name_or_path)
    report = KillReport(path)
    ns = namespace_id(path)
    if ns is None:
        report.namespace_missing = True
        return report
    start = time.monotonic()
    exclude = _protected()
    while True:
        pids = pids_in_namespace(ns, exclude)
        if not pids:
            break
        for pid in pids:
            if _signal_if_in(pid, ns, sig) and pid not in report.killed:
                report.killed.append(pid)
        if time.monotonic() - start > timeout:
            report.remaining = pids_in_namespace(ns, exclude)
            break
        if sig != signal.SIGKILL:
            return _finish(report, start)  # a polite signal is sent once; the caller waits
        time.sleep(0.01)
    return _finish(report, start)


def _finish(report: KillReport, start: float) -> KillReport:
    report.seconds = time.monotonic() - start
    return report


def wait_empty(name_or_path: str, timeout: float) -> bool:
    """Wait until no process is left in the namespace (after a SIGTERM); True if empty."""
    ns = namespace_id(netns_path(name_or_path))
    if ns is None:
        return True
    deadline = time.monotonic() + timeout
    while pids_in_namespace(ns, _protected()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
