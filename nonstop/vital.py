"""Vital tasks: a long-lived task or thread whose death must end its process.

Role: a daemon's safety loops — the agent's heartbeat sender and self-fence check, its store
watches and lease keep-alive, the controller's status publisher and informer cache, the heartbeat
monitor — are meant to run for the life of the process. If one of them crashes (or returns) the
process looks alive while a safety property is silently gone: a host that no longer beats is
fenced although it is fine, or worse, a host that no longer self-fences keeps running guests a
successor restarts elsewhere. So such a task is started with ``vital(coro, name)`` (or a thread
with ``vital_thread``): when it ends for any reason but cancellation, the process logs why and
exits with ``EXIT_VITAL`` (70, EX_SOFTWARE) at once, and its supervisor (systemd's
``Restart=always``, the lab host's supervisor) starts a fresh one — which, for an agent, adopts
its running guests (docs/agent.md).

``os._exit`` is deliberate: a clean shutdown could itself hang on the broken part (a stuck store
call, a lock held by the dead thread), and the supervisor only needs the process gone.

Must not: be used for tasks that may finish (one-shot work, per-guest operations) or swallow
cancellation (``stop`` cancels vital tasks on purpose).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("nonstop.vital")

EXIT_VITAL = 70
"""Exit status of a process whose vital task died (EX_SOFTWARE in sysexits.h)."""

T = TypeVar("T")


def _die(name: str, why: str) -> None:
    log.critical("vital task %s ended: %s; exiting (status %d) so the supervisor restarts this process",
                 name, why, EXIT_VITAL)
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - nothing may stop the exit
            pass
    sys.stderr.flush()
    os._exit(EXIT_VITAL)


def _on_done(task: asyncio.Task[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    _die(task.get_name(), f"{type(exc).__name__}: {exc}" if exc is not None else "returned")


def vital(coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Start ``coro`` as a task whose crash or return ends the process (cancellation does not)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    task.add_done_callback(_on_done)
    return task


def vital_thread(target: Callable[[], None], name: str, *, stopping: Callable[[], bool]) -> threading.Thread:
    """A daemon thread running ``target``; if it raises, or returns while ``stopping()`` is false,
    the process exits."""

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - any end of a vital thread is fatal
            _die(name, f"{type(exc).__name__}: {exc}")
        if not stopping():
            _die(name, "returned")

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
