"""Read routes under ``/api/v1`` (any valid token): status, lists, describe, spec, events, intents,
the SSE stream, console and logs.

Role: answer from the runtime's cluster snapshot (one consistent store read, cached until the
store changes), so every list agrees with every other list of the same moment. Events, the spec
and intents (requests to the controller with its outcome, nonstop/store/intents.py) are read
from the store when asked.

Must not: change anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel

from nonstop.api import describe as describe_mod
from nonstop.api.auth import require_viewer, require_viewer_or_query
from nonstop.api.runtime import ApiRuntime
from nonstop.store import intents as intent_store
from nonstop.store import keys
from nonstop.store.base import Store
from nonstop.store.state import get_spec

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
HEARTBEAT_SECONDS = 15.0


class Error(BaseModel):
    detail: Any
    field: str | None = None
    intent: str | None = None
    """On a refusal by the controller: the intent it refused."""


def json_errors(**codes: str) -> dict[int | str, dict[str, Any]]:
    """Error responses documented as JSON ``Error`` bodies, also on routes whose success is plain text."""
    return {int(code[1:]): {"description": why,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for code, why in codes.items()}


ERRORS = json_errors(_401="no or unknown token", _422="bad request; names the field")
router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_viewer)], responses=ERRORS)
stream_router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_viewer_or_query)], responses=ERRORS)
"""The SSE stream also takes ``?token=``: a browser's EventSource cannot send headers."""

Name = Annotated[str, PathParam(pattern=NAME, max_length=63)]


def _rt(request: Request) -> ApiRuntime:
    runtime: ApiRuntime = request.app.state.runtime
    return runtime


@router.get("/whoami", summary="The role of the presented token")
async def whoami(role: Annotated[str, Depends(require_viewer)], request: Request) -> dict[str, Any]:
    return {"role": role, "cluster": request.app.state.cluster, "lab": _rt(request).lab is not None}


@router.get("/cluster", summary="Everything at one store revision (the dashboard's model)")
async def cluster(request: Request) -> dict[str, Any]:
    return await _rt(request).snapshot()


def status_summary(c: dict[str, Any]) -> dict[str, Any]:
    def count(items: list[dict[str, Any]], field: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in items:
            out[str(item.get(field))] = out.get(str(item.get(field)), 0) + 1
        return out

    services = []
    for s in c["services"]:
        healthy = sum(1 for b in s["backends"] if b.get("health") == "up")
        unknown = sum(1 for b in s["backends"] if b.get("health") in (None, "unknown"))
        services.append({"name": s["name"], "listen": s["listen"], "backends": len(s["backends"]),
                         "healthy": healthy, "health_unknown": unknown, "rate": s["rate"]})
    running = sum(1 for g in c["guests"] if g["state"] == "running")
    healthy = (c["has_spec"] and all(h["state"] in ("up", "maintenance") for h in c["hosts"])
               and running == len(c["guests"]))
    return {
        "cluster": c["cluster"], "revision": c["revision"], "has_spec": c["has_spec"], "healthy": healthy,
        "hosts": [{"name": h["name"], "state": h["state"], "guests": len(h["guests"])} for h in c["hosts"]],
        "host_states": count(c["hosts"], "state"), "guest_states": count(c["guests"], "state"),
        "guests": len(c["guests"]), "running": running, "services": services,
        "active_ops": [o for o in c["ops"] if not o["final"]],
        "last_events": c["events"][-5:],
    }


@router.get("/status", summary="A summary: host and guest states, services, running operations")
async def status(request: Request) -> dict[str, Any]:
    from nonstop.patching.cluster import patch_level_warning

    rt = _rt(request)
    summary = status_summary(await rt.snapshot())
    # Hosts at different patch levels are a cluster half old, half new: say so until a rollout ends it.
    warning = await patch_level_warning(rt.store, rt.cluster) if summary["has_spec"] and rt.store else None
    summary["warnings"] = [warning] if warning else []
    return summary


@router.get("/hosts", summary="Hosts with state, NICs, teams, capacity and guests")
async def hosts(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["hosts"])


@router.get("/guests", summary="Guests: desired placement and observed state")
async def guests(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["guests"])


@router.get("/services", summary="Services with each backend's health and request rate")
async def services(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["services"])


@router.get("/networks", summary="Networks and their address use")
async def networks(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["networks"])


@router.get("/teams", summary="NIC teams of every host")
async def teams(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["teams"])


@router.get("/components", summary="Hardware health per host: each component group (power, network, storage, cooling) and its redundancy")
async def components(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["components"])


@router.get("/switches", summary="Lab switches and their ports")
async def switches(request: Request) -> list[dict[str, Any]]:
    return list((await _rt(request).snapshot())["switches"])


@router.get("/events", summary="The event log, oldest first")
async def events(request: Request, since: Annotated[int, Query(ge=0)] = 0,
                 limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> list[dict[str, Any]]:
    runtime = _rt(request)
    assert runtime.store is not None
    from nonstop.store.events import read_events

    found = await read_events(runtime.store, runtime.cluster, since_seq=since)
    return [e.data() for e in found[-limit:]]


async def read_intents(store: Store, cluster: str) -> list[dict[str, Any]]:
    """Every stored intent with its outcome (``status`` is the outcome's, or ``pending``), newest first."""
    requests: dict[str, intent_store.IntentRequest] = {}
    outcomes: dict[str, intent_store.IntentOutcome] = {}
    for kv in await store.list(keys.intents_prefix(cluster)):
        parsed = keys.parse(kv.key)
        if parsed.leaf == "request" and (req := intent_store.parse_request(kv.value)) is not None:
            requests[parsed.name] = req
        elif parsed.leaf == "outcome" and (out := intent_store.parse_outcome(kv.value)) is not None:
            outcomes[parsed.name] = out
    found = [intent_record(req, outcomes.get(name)) for name, req in requests.items()]
    return sorted(found, key=lambda r: (r["created_at"], r["id"]), reverse=True)


def intent_record(req: intent_store.IntentRequest, out: intent_store.IntentOutcome | None) -> dict[str, Any]:
    return {**intent_store.dump(req), "what": req.describe(), "status": out.status if out else "pending",
            "outcome": intent_store.dump(out) if out else None}


@router.get("/intents", summary="Requests to the controller (maintenance, migrate, replace) and its outcomes, "
                                "newest first")
async def intents(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 100) -> list[dict[str, Any]]:
    runtime = _rt(request)
    assert runtime.store is not None
    return (await read_intents(runtime.store, runtime.cluster))[:limit]


@router.get("/intents/{intent_id}", summary="One intent and the controller's outcome",
            responses=json_errors(_404="no such intent"))
async def intent(request: Request, intent_id: Name) -> dict[str, Any]:
    runtime = _rt(request)
    assert runtime.store is not None
    kv = await runtime.store.get(intent_store.request_key(runtime.cluster, intent_id))
    req = intent_store.parse_request(kv.value) if kv is not None else None
    if req is None:
        raise HTTPException(404, f'no intent "{intent_id}" in cluster {runtime.cluster}')
    return intent_record(req, await intent_store.get_outcome(runtime.store, runtime.cluster, intent_id))


@router.get("/spec", summary="The desired spec and its revision")
async def spec(request: Request) -> dict[str, Any]:
    runtime = _rt(request)
    assert runtime.store is not None
    stored = await get_spec(runtime.store, runtime.cluster)
    if stored is None:
        raise HTTPException(404, f"cluster {runtime.cluster} has no spec yet")
    return {"revision": stored.mod_revision, "spec": stored.spec.model_dump(mode="json")}


@router.get("/describe/{kind}/{name:path}", summary="One object in full; guests with the placement explanation",
            responses=json_errors(_404="no such object"))
async def describe(request: Request, kind: Literal["host", "guest", "service", "network", "team", "switch"],
                   name: Annotated[str, PathParam(max_length=127)]) -> dict[str, Any]:
    runtime = _rt(request)
    c = await runtime.snapshot()
    found = describe_mod.find(c, kind, name)
    if found is None:
        raise HTTPException(404, f'no {kind} "{name}" in cluster {runtime.cluster}')
    out: dict[str, Any] = {"kind": kind, "name": name, "record": found}
    if kind == "guest":
        assert runtime.store is not None
        stored = await get_spec(runtime.store, runtime.cluster)
        if stored is not None:
            out["placement"] = describe_mod.placement_explanation(stored.spec, c, name)
        out["events"] = [e for e in c["events"] if e.get("subject") == name][-20:]
    elif kind == "host":
        out["guests"] = [g for g in c["guests"] if g["host"] == name]
        out["events"] = [e for e in c["events"] if e.get("subject") == name][-20:]
    return out


@router.get("/guests/{guest}/console", summary="The tail of a guest's console log", response_class=PlainTextResponse,
            responses=json_errors(_404="no such guest", _409="no console log reachable"))
async def console(request: Request, guest: Name, lines: Annotated[int, Query(ge=1, le=10_000)] = 200) -> str:
    runtime = _rt(request)
    c = await runtime.snapshot()
    record = describe_mod.find(c, "guest", guest)
    if record is None:
        raise HTTPException(404, f'no guest "{guest}"')
    path = await asyncio.to_thread(console_path, runtime.lab, record)
    if not path or not Path(path).is_file():
        raise HTTPException(409, f"no console log of {guest} is reachable from the API server "
                                 "(console logs live in the agent's state dir on its host)")
    text = await asyncio.to_thread(Path(path).read_text, errors="replace")
    return "\n".join(text.splitlines()[-lines:]) + "\n"


def console_path(lab: Any, record: dict[str, Any]) -> str | None:
    """Where the guest's console log is: the lab's answer (``lab.console_log(guest)``), else the agent
    state directory the lab gives its agents (``<run_dir>/agents/<host>/<driver>/<guest>/console.log``)."""
    if lab is None:
        return None
    reader = getattr(lab, "console_log", None)
    if callable(reader):
        found = reader(record["name"])
        return str(found) if found else None
    run_dir = getattr(lab, "run_dir", None)
    host = record.get("observed_host") or record.get("host")
    if run_dir is None or not host:
        return None
    for candidate in sorted(Path(run_dir, "agents", str(host)).glob(f"*/{record['name']}/console.log")):
        return str(candidate)
    return None


@router.get("/logs", summary="The event log as text lines", response_class=PlainTextResponse)
async def logs(request: Request, limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> str:
    c = await _rt(request).snapshot()
    return "".join(format_event(e) + "\n" for e in c["events"][-limit:])


def format_event(e: dict[str, Any]) -> str:
    import time as _time

    at = _time.strftime("%H:%M:%S", _time.localtime(float(e.get("at", 0))))
    by = f" [by {e['by']}]" if e.get("by") else ""
    return f"{at} {e.get('kind', '?'):<22} {e.get('subject', ''):<12} {e.get('reason', '')}{by}"


@stream_router.get("/events/stream", summary="Server-Sent Events: every store change and every event-log entry",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "an endless SSE stream"}})
async def stream(request: Request, limit: Annotated[int | None, Query(ge=1, le=100_000)] = None) -> StreamingResponse:
    runtime = _rt(request)
    queue = runtime.subscribe()

    async def messages() -> AsyncIterator[bytes]:
        sent = 0
        try:
            yield b"retry: 1000\n\n"
            yield _sse({"type": "hello", "cluster": runtime.cluster})
            while limit is None or sent < limit:
                if await request.is_disconnected():
                    break
                try:
                    message = await asyncio.wait_for(queue.get(), HEARTBEAT_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if message is None:
                    break
                yield _sse(message)
                sent += 1
        finally:
            runtime.unsubscribe(queue)

    return StreamingResponse(messages(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _sse(message: dict[str, Any]) -> bytes:
    return f"event: {message['type']}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n".encode()
