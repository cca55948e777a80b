"""Patch routes under ``/api/v1/patch``: the API face of ``nonstop patch`` (rolling host patches).

Role: the same options as the CLI verb, as JSON — ``POST /api/v1/patch`` plans (``dry_run``) or
starts a rollout, ``GET /api/v1/patch`` reads it (the rollout record and the report: every host's
level before and after, step durations, guests moved), ``POST /api/v1/patch/resume`` and
``POST /api/v1/patch/abort``. Reads need any token; everything else the admin token (a viewer
gets 403). A bad option is refused before anything is written: pydantic names the field (422;
a missing ``to`` included), a host that is not in the spec is a 404 with ``field: hosts``. A
rollout the planner refuses, or one asked for while another is unfinished, is a 409 with the
reasons.

A started or resumed rollout runs in this API process, in a thread of its own with its own event
loop and store client (``PatchRunner``), inside the lab's admin namespace when the API runs beside
a lab (``ApiRuntime.lab_admin_namespace``: the balancers' admin addresses live there). It is the same ``Patcher`` the CLI drives:
progress is in the store step by step, so if this process dies the rollout is resumed by
``POST /api/v1/patch/resume`` or ``nonstop patch --resume``; ``abort`` reaches a patcher running
in any process through the store.

Must not: decide order, batches or safety (nonstop/core/patching does), run anything on hosts
(agents do), or hold rollout state beyond the handle of the thread it started.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nonstop.api import actions
from nonstop.api.auth import require_admin, require_viewer
from nonstop.api.routes_read import NAME, json_errors
from nonstop.api.runtime import ApiRuntime
from nonstop.core.patching.steps import RolloutStatus
from nonstop.patching import SIMULATED
from nonstop.patching import cluster as pc
from nonstop.patching.executor import Patcher, RolloutError
from nonstop.patching.report import report
from nonstop.store.base import Store
from nonstop.store.state import get_spec

log = logging.getLogger("nonstop.api.patch")

LEVEL = r"^[A-Za-z0-9][A-Za-z0-9._+~-]{0,62}$"

router = APIRouter(prefix="/api/v1/patch", tags=["patch"], responses=json_errors(
    _401="no or unknown token", _403="the viewer token cannot patch the cluster", _404="no rollout in the store",
    _409="a rollout is unfinished, the planner refuses, or a patcher already runs it", _422="bad option; names the field"))

Admin = Annotated[str, Depends(require_admin)]
Viewer = Annotated[str, Depends(require_viewer)]
HostName = Annotated[str, Field(pattern=NAME, max_length=63)]


class PatchRequest(BaseModel):
    """The options of ``nonstop patch``."""

    model_config = ConfigDict(extra="forbid")
    to: str = Field(pattern=LEVEL, max_length=63, description="The patch level every host must end at")
    command: str | None = Field(default=None, min_length=1, max_length=4096,
                                description="Shell command each host's agent runs (default: the lab's level update)")
    hosts: list[HostName] | None = Field(default=None, min_length=1, max_length=256,
                                         description="Hosts to patch (default: all)")
    max_unavailable: int = Field(default=1, ge=1, le=64, description="Hosts patched at once, at most")
    timeout: float = Field(default=120.0, gt=0, le=86400, description="Seconds the patch command may run")
    restart_agent: bool = Field(default=True, description="The agent re-executes itself after a good patch")
    dry_run: bool = Field(default=False, description="Only plan: the batches, or the refusal with its reasons")
    simulate: Literal["fail", "hang"] | None = Field(
        default=None, description="Lab: a command that fails or hangs (replaces command, as the CLI's --simulate)")


class PatchRunner:
    """The one rollout thread of this API process (``Patcher.run`` on its own loop and store)."""

    def __init__(self, runtime: ApiRuntime) -> None:
        self.runtime = runtime
        self.thread: threading.Thread | None = None
        self.error: str | None = None
        self.last_status: str | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def launch(self) -> None:
        if self.running:
            raise actions.Conflict("this API already runs the rollout")
        self.error, self.last_status = None, None
        self.thread = threading.Thread(target=self._main, name="nonstop-patch-rollout", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        try:
            ns = self.runtime.lab_admin_namespace()  # where the lab's balancers answer, if any
            if ns is not None:
                from nonstop.net.netns import enter

                enter(ns)  # this thread only
            rollout = asyncio.run(self._run())
            self.last_status = rollout.status.value
        except Exception as exc:  # noqa: BLE001 - reported by GET /patch, never lost
            log.exception("patch rollout thread failed")
            self.error = f"{type(exc).__name__}: {exc}"

    async def _run(self) -> Any:
        from nonstop.store import open_store

        store = open_store(self.runtime.store_url)
        try:
            patcher = Patcher(store, self.runtime.cluster, balancers=self.runtime.lab_balancers(),
                              patcher_id="api", progress=lambda _r, text: log.info("patch: %s", text))
            return await patcher.run()
        finally:
            await store.close()


def _runner(request: Request) -> PatchRunner:
    state = request.app.state
    if getattr(state, "patch_runner", None) is None:
        state.patch_runner = PatchRunner(state.runtime)
    runner: PatchRunner = state.patch_runner
    return runner


def _store(request: Request) -> tuple[ApiRuntime, Store]:
    runtime: ApiRuntime = request.app.state.runtime
    assert runtime.store is not None
    return runtime, runtime.store


async def _document(store: Store, cluster: str, runner: PatchRunner) -> dict[str, Any]:
    patcher = Patcher(store, cluster)
    rollout = await patcher.load()
    holder = await patcher.lock_holder(rollout) if rollout is not None else None
    doc: dict[str, Any] = {"rollout": None, "report": None,
                           "runner": {"here": runner.running, "error": runner.error, "last_status": runner.last_status,
                                      "lock": holder.data() if holder is not None else None}}
    if rollout is not None:
        try:
            levels = (await pc.snapshot(store, cluster)).levels()
        except RuntimeError:  # no spec: levels unknown
            levels = {}
        doc["rollout"] = rollout.to_dict()
        doc["report"] = report(rollout, levels)
    return doc


@router.get("", summary="The rollout in the store and its report (levels before/after, step durations, moves)")
async def status(request: Request, _: Viewer) -> dict[str, Any]:
    runtime, store = _store(request)
    return await _document(store, runtime.cluster, _runner(request))


@router.post("", summary="Plan (dry_run) or start a rolling patch to a level", status_code=202,
             responses={200: {"description": "the plan (dry_run)"}})
async def start(request: Request, body: PatchRequest, who: Admin) -> Any:
    runtime, store = _store(request)
    runner = _runner(request)
    stored = await get_spec(store, runtime.cluster)
    if stored is None:
        raise actions.Conflict(f"cluster {runtime.cluster} has no spec in the store yet")
    known = [h.name for h in stored.spec.hosts]
    unknown = [h for h in body.hosts or [] if h not in known]
    if unknown:
        raise actions.NotFound(f"not a host of cluster {runtime.cluster}: {', '.join(unknown)} "
                               f"(hosts: {', '.join(known)})", field="hosts")
    patcher = Patcher(store, runtime.cluster)
    if body.dry_run:
        plan = await patcher.plan(body.to, body.hosts, body.max_unavailable)
        return JSONResponse({"dry_run": True, "plan": plan.to_dict()}, status_code=200)
    if runner.running:
        raise actions.Conflict("this API already runs a rollout: abort it or wait for it")
    command = SIMULATED[body.simulate] if body.simulate else body.command
    try:
        rollout = await patcher.start(body.to, hosts=body.hosts, max_unavailable=body.max_unavailable,
                                      command=command, restart_agent=body.restart_agent, timeout=body.timeout)
    except RolloutError as exc:
        raise actions.Conflict(str(exc)) from exc
    await actions.audit_event(store, runtime.cluster, "patch-requested", runtime.cluster,
                              f"rollout {rollout.header.id} to {body.to} asked for through the API", who,
                              rollout=rollout.header.id)
    runner.launch()
    return {"started": True, "rollout": rollout.to_dict()}


@router.post("/resume", summary="Continue the rollout after the operator fixed what failed", status_code=202)
async def resume(request: Request, who: Admin) -> dict[str, Any]:
    runtime, store = _store(request)
    runner = _runner(request)
    patcher = Patcher(store, runtime.cluster)
    rollout = await patcher.load()
    if rollout is None:
        raise actions.NotFound("no rollout in the store")
    if rollout.status in (RolloutStatus.COMPLETE, RolloutStatus.ABORTED):
        raise actions.Conflict(f"rollout {rollout.header.id} is {rollout.status.value}: nothing to resume")
    if runner.running or await patcher.lock_holder(rollout) is not None:
        raise actions.Conflict(f"a patcher is running rollout {rollout.header.id} right now")
    rollout = await patcher.resume()
    await actions.audit_event(store, runtime.cluster, "patch-requested", runtime.cluster,
                              f"rollout {rollout.header.id} resumed through the API", who, rollout=rollout.header.id)
    runner.launch()
    return {"resumed": True, "rollout": rollout.to_dict()}


@router.post("/abort", summary="End the rollout, leaving the cluster serving (stops a running patcher first)")
async def abort(request: Request, who: Admin) -> dict[str, Any]:
    runtime, store = _store(request)
    patcher = Patcher(store, runtime.cluster)
    rollout = await patcher.load()
    if rollout is None:
        raise actions.NotFound("no rollout in the store")
    await actions.audit_event(store, runtime.cluster, "patch-requested", runtime.cluster,
                              f"abort of rollout {rollout.header.id} asked for through the API", who,
                              rollout=rollout.header.id)
    try:
        await patcher.abort()
    except RolloutError as exc:
        raise actions.Conflict(str(exc)) from exc
    return await _document(store, runtime.cluster, _runner(request))


__all__ = ["PatchRequest", "PatchRunner", "router"]
