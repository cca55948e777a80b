"""Mutating routes under ``/api/v1`` (admin token only; a viewer gets 403): apply, maintenance,
migrate and chaos. Every one is logged in the cluster's event log with who asked (``by``).

Role: parse the request body (pydantic: a bad field → 422 naming it), then hand over to
``nonstop.api.actions`` — the spec with its audit event in one store transaction; maintenance and
migration as intents to the controller, answered 200 with its outcome, or 202 while it has not
answered yet (the intent id to follow at ``GET /intents/{id}``) — or to the lab for chaos
(``nonstop.api.chaos``), then log it.

Must not: change anything a controller owns directly; decide placement or liveness.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from nonstop.api import actions, chaos
from nonstop.api.auth import require_admin
from nonstop.api.routes_read import NAME, Name, json_errors
from nonstop.api.runtime import ApiRuntime

router = APIRouter(prefix="/api/v1", responses=json_errors(
    _401="no or unknown token", _403="the viewer token cannot change the cluster", _404="no such host, guest or part",
    _409="the cluster's state does not allow it (or a concurrent change; retry)", _422="bad request; names the field",
    _502="the lab failed to do a chaos action"))

Admin = Annotated[str, Depends(require_admin)]


class ApplyRequest(BaseModel):
    spec: str = Field(min_length=1, max_length=1_000_000, description="The cluster spec as YAML (or JSON) text")
    filename: str = Field(default="<request>", max_length=200, description="Shown in error messages")


class MaintenanceRequest(BaseModel):
    action: Literal["enter", "exit"]
    reason: str = Field(default="", max_length=500)


class MigrateRequest(BaseModel):
    to: str = Field(pattern=NAME, max_length=63, description="The target host")
    mode: Literal["live", "cold"] = Field(
        default="live", description="live: VMs only, the guest keeps running while it moves; cold: drained from "
                                    "its balancers, then restarted on the target (any guest)")
    reason: str = Field(default="", max_length=500)


class IntentAnswer(BaseModel):
    intent: str = Field(description="The intent's id: GET /api/v1/intents/{id} follows it")
    status: Literal["accepted", "done", "pending"] = Field(
        description="The controller's outcome; pending: it has not answered yet")
    message: str


class MaintenanceAnswer(IntentAnswer):
    host: str
    state: Literal["maintenance", "up"] = Field(description="The state asked for")
    changed: bool = Field(description="False when the host was in that state already")


class MigrateAnswer(IntentAnswer):
    guest: str
    from_: str = Field(alias="from", description="The host the guest runs on")
    to: str
    mode: Literal["live", "cold"]
    target: str = Field(description="The host the controller chose (the one asked for)")


PENDING = "the controller has not answered yet (it may be busy or not running): follow the intent"


class FailRequest(BaseModel):
    target: Literal["host", "link", "guest", "switch", "psu", "drive", "nic"]
    name: str = Field(min_length=1, max_length=127, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9._-]+)?$",
                      description="host, guest or switch name; HOST/PART for link, nic, psu and drive")


class PartitionRequest(BaseModel):
    host: str = Field(pattern=NAME, max_length=63)


def _rt(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    assert runtime.store is not None
    return runtime


@router.post("/apply", summary="Validate a spec and make it the desired state (compare-and-set)")
async def apply(request: Request, body: ApplyRequest, who: Admin) -> dict[str, Any]:
    rt = _rt(request)
    assert rt.store is not None
    return await actions.apply_spec(rt.store, rt.cluster, body.spec, by=who, filename=body.filename)


def _pending(response: Response, answer: dict[str, Any]) -> dict[str, Any]:
    if answer["status"] == "pending":
        response.status_code = 202
    return answer


@router.post("/hosts/{host}/maintenance", response_model=MaintenanceAnswer, response_model_by_alias=True,
             summary="Ask the controller to evacuate a host (enter) or use it again (exit)",
             responses={202: {"model": MaintenanceAnswer, "description": PENDING}})
async def maintenance(request: Request, response: Response, host: Name, body: MaintenanceRequest,
                      who: Admin) -> dict[str, Any]:
    rt = _rt(request)
    assert rt.store is not None
    answer = await actions.request_maintenance(rt.store, rt.cluster, host, body.action == "enter", by=who,
                                               cluster_doc=await rt.snapshot(), reason=body.reason)
    return _pending(response, answer)


@router.post("/guests/{guest}/migrate", response_model=MigrateAnswer, response_model_by_alias=True,
             summary="Ask the controller to move a guest to another host (live or cold)",
             responses={202: {"model": MigrateAnswer, "description": PENDING}})
async def migrate(request: Request, response: Response, guest: Name, body: MigrateRequest,
                  who: Admin) -> dict[str, Any]:
    rt = _rt(request)
    assert rt.store is not None
    answer = await actions.request_migration(rt.store, rt.cluster, guest, body.to, by=who,
                                             cluster_doc=await rt.snapshot(), mode=body.mode, reason=body.reason)
    return _pending(response, answer)


async def _spec_and_guests(rt: ApiRuntime) -> tuple[Any, list[str]]:
    from nonstop.store.state import get_spec

    assert rt.store is not None
    stored = await get_spec(rt.store, rt.cluster)
    if stored is None:
        raise actions.Conflict(f"cluster {rt.cluster} has no spec in the store yet")
    c = await rt.snapshot()
    return stored.spec, [g["name"] for g in c["guests"]]


async def _chaos(rt: ApiRuntime, method: str, args: tuple[str, ...], subject: str, who: str,
                 spec: Any = None, guest_pid: int | None = None) -> dict[str, Any]:
    assert rt.store is not None
    if spec is None and rt.chaos is not None:
        spec = (await _spec_and_guests(rt))[0]
    if rt.chaos is None:
        raise actions.Conflict("chaos needs the lab: this API is not running inside `nonstop up`")
    # The intent is logged before the lab acts, so the timeline reads cause → effect.
    event = await actions.audit_event(rt.store, rt.cluster, "chaos", subject, f"{method}({', '.join(args)})", who,
                                      action=method)
    try:
        result = await chaos.call_lab(rt.chaos, method, args, spec, guest_pid)
    except actions.ActionError as exc:
        await actions.audit_event(rt.store, rt.cluster, "chaos-failed", subject, exc.message, who, action=method)
        raise
    except Exception as exc:
        await actions.audit_event(rt.store, rt.cluster, "chaos-failed", subject, str(exc), who, action=method)
        raise actions.LabFailed(f"the lab failed to {method}: {exc}") from exc
    return {"action": method, "args": list(args), "result": result, "event": event}


@router.post("/chaos/fail", summary="Break something in the lab (host, link, guest, switch, psu, drive, nic)")
async def fail(request: Request, body: FailRequest, who: Admin) -> dict[str, Any]:
    rt = _rt(request)
    if rt.lab is None:
        raise actions.Conflict("chaos needs the lab: this API is not running inside `nonstop up`")
    spec, guests = await _spec_and_guests(rt)
    method, args = chaos.plan(spec, guests, body.target, body.name)
    pid = None
    if body.target == "guest":
        c = await rt.snapshot()
        pid = next((g.get("pid") for g in c["guests"] if g["name"] == body.name), None)
    return await _chaos(rt, method, args, body.name, who, spec, pid)


@router.post("/chaos/partition", summary="Cut a host off from every other host (both NICs)")
async def partition(request: Request, body: PartitionRequest, who: Admin) -> dict[str, Any]:
    rt = _rt(request)
    if rt.lab is None:
        raise actions.Conflict("chaos needs the lab: this API is not running inside `nonstop up`")
    spec, _ = await _spec_and_guests(rt)
    if body.host not in {h.name for h in spec.hosts}:
        raise actions.NotFound(f'no host "{body.host}"', field="host")
    return await _chaos(rt, "partition", (body.host,), body.host, who, spec)


@router.post("/chaos/heal", summary="Undo every fault the lab injected")
async def heal(request: Request, who: Admin) -> dict[str, Any]:
    rt = _rt(request)
    return await _chaos(rt, "heal", (), rt.cluster, who)
