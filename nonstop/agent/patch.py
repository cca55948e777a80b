"""The agent's patch capability: run a patch command on this host, report the host's patch level,
boot a self-test guest — all asked for through the store.

Role (issue 8): the rolling-patch executor (nonstop/patching) never runs anything on a host itself;
it writes a request record and this module, running inside the agent process (so inside the host's
network namespace and cgroup), carries it out and writes the result back in the same record.

Request record ``hosts/<host>/patch`` (``keys.host_patch``, a ``HostPatch``), written by the executor:

    {"type": "host-command", "id": "...", "host": H, "action": "patch" | "selftest",
     "command": "shell command" | null, "target": LEVEL, "timeout": seconds,
     "restart_agent": bool, "state": "requested"}

The agent moves ``state`` through ``running`` → ``done`` | ``failed`` | ``timeout`` (``patch``:
``exit_code``, ``output`` = last 4 KiB of stdout+stderr, ``finished_at``). A patch with
``restart_agent`` that exits 0 goes to ``restarting`` and the agent re-executes itself (same pid,
namespace and cgroup; guests keep running and are adopted); the new process marks the record
``done`` with ``restarted_at`` once it runs. A request already ``running`` when the agent starts
was interrupted by the agent's own death: it is marked ``failed`` ("agent restarted while the
command ran"), never run twice behind the executor's back.

The command runs with ``sh -c`` and these variables: ``NONSTOP_HOST``, ``NONSTOP_CLUSTER``,
``NONSTOP_PATCH_TARGET``, ``NONSTOP_PATCH_LEVEL_FILE`` (the host's recorded level). The default
command (``command`` null) is the lab's: write the target into the level file. A command that
outlives ``timeout`` is killed with its whole process group.

``selftest`` boots a tiny process guest (``selftest-<host>``, the built-in workload, no NIC)
through a process driver of its own state directory (the agent's reconcile never sees it), waits
until it runs, stops and destroys it, and reports ``done`` with its boot id or ``failed``.

The host's level lives in ``<state-dir>/patch-level`` (a file on the host's disk). Every agent
start publishes ``patch_level``, ``agent_version``, ``agent_pid`` and ``agent_started_at`` into
``hosts/<host>/observed``.

Must not: decide whether or when a host is patched (the executor does), or touch guests of the
cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from nonstop.agent import records
from nonstop.agent.records import AgentKeys
from nonstop.store import keys
from nonstop.store.base import Compare, Store, StoreError
from nonstop.store.records import HostPatch, put_op

log = logging.getLogger("nonstop.agent.patch")

AGENT_VERSION = "0.1.0"
LEVEL_FILE = "patch-level"
DEFAULT_COMMAND = 'printf %s "$NONSTOP_PATCH_TARGET" > "$NONSTOP_PATCH_LEVEL_FILE"'
OUTPUT_LIMIT = 4096


def request_key(cluster: str, host: str) -> str:
    return keys.host_patch(cluster, host)


def read_level(state_dir: Path) -> str | None:
    try:
        return (state_dir / LEVEL_FILE).read_text().strip() or None
    except OSError:
        return None


class PatchService:
    def __init__(self, store: Store, cluster: str, host: str, state_dir: Path, *, options: dict[str, Any] | None = None,
                 poll: float = 0.5) -> None:
        self.store, self.cluster, self.host = store, cluster, host
        self.state_dir = state_dir
        self.options = dict(options or {})
        self.poll = poll
        self.key = request_key(cluster, host)
        self.started_at = time.time()

    async def publish(self) -> None:
        await records.merge_host_observed(self.store, AgentKeys(self.cluster, self.host), {
            "patch_level": read_level(self.state_dir), "agent_version": AGENT_VERSION,
            "agent_pid": os.getpid(), "agent_started_at": self.started_at,
        })

    async def _update(self, expected_rev: int, record: HostPatch, **changes: Any) -> bool:
        result = await self.store.txn([Compare.mod_revision(self.key, expected_rev)],
                                      [put_op(self.key, record.with_changes(**changes))])
        return result.succeeded

    async def run(self, stop: asyncio.Event) -> None:
        await self.publish()
        first = True
        while not stop.is_set():
            try:
                kv = await self.store.get(self.key)
                if kv is not None:
                    record = HostPatch.decode(kv.value)
                    state = record.state
                    if state == "restarting" and first:  # we are the re-executed (or restarted) agent
                        await self._update(kv.mod_revision, record, state="done", restarted_at=time.time(),
                                           patch_level=read_level(self.state_dir))
                    elif state == "running" and first:
                        await self._update(kv.mod_revision, record, state="failed", finished_at=time.time(),
                                           error="the agent restarted while the command ran")
                    elif state == "requested":
                        await self._execute(kv.mod_revision, record)
                first = False
            except StoreError as exc:
                log.warning("patch requests: store unavailable: %s", exc)
            except (ValueError, TypeError) as exc:
                log.error("patch request %s unreadable: %s", self.key, exc)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)

    async def _execute(self, revision: int, record: HostPatch) -> None:
        if not await self._update(revision, record, state="running", started_at=time.time(), agent_pid=os.getpid()):
            return
        kv = await self.store.get(self.key)
        assert kv is not None
        record = HostPatch.decode(kv.value)
        if record.action == "selftest":
            changes = await self.selftest(record.timeout or 30.0)
            await self._update(kv.mod_revision, record, finished_at=time.time(), **changes)
            return
        code, output, timed_out = await self.run_command(record.command or DEFAULT_COMMAND, record.target,
                                                         record.timeout or 120.0)
        result: dict[str, Any] = {"exit_code": code, "output": output, "finished_at": time.time(),
                                  "patch_level": read_level(self.state_dir)}
        if timed_out:
            await self._update(kv.mod_revision, record, state="timeout",
                               error=f"timed out after {record.timeout} s (killed)", **result)
        elif code != 0:
            await self._update(kv.mod_revision, record, state="failed", error=f"exit code {code}", **result)
        elif record.restart_agent:
            if await self._update(kv.mod_revision, record, state="restarting", agent_pid_before=os.getpid(), **result):
                log.info("patch applied (level %s): restarting the agent", result["patch_level"])
                self.restart()
        else:
            await self._update(kv.mod_revision, record, state="done", **result)
        await self.publish()

    async def run_command(self, command: str, target: str, timeout: float) -> tuple[int | None, str, bool]:
        env = {**os.environ, "NONSTOP_HOST": self.host, "NONSTOP_CLUSTER": self.cluster,
               "NONSTOP_PATCH_TARGET": target, "NONSTOP_PATCH_LEVEL_FILE": str(self.state_dir / LEVEL_FILE)}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_shell(command, stdout=asyncio.subprocess.PIPE,
                                                     stderr=asyncio.subprocess.STDOUT, env=env,
                                                     start_new_session=True)
        chunks: list[bytes] = []

        async def read() -> None:
            assert proc.stdout is not None
            while block := await proc.stdout.read(65536):
                chunks.append(block)

        reader = asyncio.create_task(read())
        timed_out = False
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(reader, 2.0)
        reader.cancel()
        text = b"".join(chunks)[-OUTPUT_LIMIT:].decode(errors="replace")
        return proc.returncode, text, timed_out

    def restart(self) -> None:
        """Re-execute the agent in place (same pid, namespace, cgroup; the guests keep running)."""
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, list(sys.orig_argv))

    async def selftest(self, timeout: float) -> dict[str, Any]:
        from nonstop.core.guests.model import GuestDefinition, GuestState
        from nonstop.drivers.process import ProcessDriver

        name = f"selftest-{self.host}"
        driver = ProcessDriver(cluster=self.cluster, host=self.host, state_dir=self.state_dir / "selftest",
                               **self.options)
        definition = GuestDefinition(name=name, cluster=self.cluster, host=self.host, memory=32 * 1024**2,
                                     max_memory=32 * 1024**2)
        started = time.monotonic()
        try:
            status = await driver.spawn(definition)
            while status.state is not GuestState.RUNNING and time.monotonic() - started < timeout:
                await asyncio.sleep(0.1)
                status = await driver.status(name)
            if status.state is not GuestState.RUNNING:
                return {"state": "failed", "error": f"self-test guest is {status.state.value} after {timeout} s"}
            return {"state": "done", "boot_id": status.boot_id, "boot_seconds": round(time.monotonic() - started, 3)}
        except Exception as exc:  # any driver error is the self-test's result, not the agent's crash
            return {"state": "failed", "error": f"self-test guest did not boot: {exc}"}
        finally:
            with contextlib.suppress(Exception):
                await driver.destroy(name)
            with contextlib.suppress(Exception):
                await driver.close()


async def run_patch_service(store: Store, cluster: str, host: str, state_dir: Path, stop: asyncio.Event,
                            options: dict[str, Any] | None = None) -> None:
    """The agent's hook: serve patch requests until ``stop``."""
    await PatchService(store, cluster, host, state_dir, options=options).run(stop)
