"""The lab BMC: a small Redfish service per host, whose power-off is real.

Role: serve the Redfish tree of resources.py over HTTP (FastAPI on uvicorn, one server per
host on 127.0.0.1:PORT), authenticate like a BMC (HTTP Basic or a session token from
SessionService), and carry out actions:

- ``ComputerSystem.Reset``: ``ForceOff`` SIGKILLs every process in the host's network
  namespace (power.py) and only then reports ``PowerState: Off`` — so a fence agent that
  reads "Off" can rely on it. ``GracefulShutdown`` sends SIGTERM, waits, then kills. ``On``
  calls the ``on_power_on`` hook (the lab restarts the host's agent). ``ForceRestart``,
  ``GracefulRestart`` and ``PowerCycle`` are off-then-on.
- EventService: ``POST .../EventService/Subscriptions`` with a ``Destination`` (http on
  127.0.0.0/8 or the lab's 198.18.0.0/15 only) makes the BMC push a Redfish ``Event``
  (``ResourceEvent.1.3.ResourceChanged``, OriginOfCondition = the changed resource) on every
  component failure or repair and every power change; a destination that fails 3 deliveries
  is dropped, as BMCs do.
- Component failure and repair for tests and chaos, on a private path outside Redfish
  (``POST /nonstop/v1/components/{psu|nic|drive|fan}/{name}/{fail|repair}``): a NIC calls the
  ``on_nic`` hook (the lab cuts or restores that NIC's cable); losing the last PSU powers
  the host off for real; repairing a PSU does not power it back on (as on hardware).

Must not: create or delete namespaces, start agents itself (hooks do), or serve anything
but 127.0.0.1 unless told to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import ipaddress
import json
import logging
import secrets
import signal
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from nonstop.bmc import power
from nonstop.bmc.model import ComponentKind, Health, HostHardware, PowerState
from nonstop.bmc.resources import (
    RESET_TYPES,
    ROOT,
    SUBSCRIPTIONS,
    event_payload,
    metadata_xml,
    render,
    service_document,
)

log = logging.getLogger(__name__)

PUBLIC_GETS = {"/redfish", f"{ROOT}", f"{ROOT}/odata", f"{ROOT}/$metadata"}
SESSIONS = f"{ROOT}/SessionService/Sessions"
HEADERS = {"OData-Version": "4.0", "Cache-Control": "no-cache"}
MAX_SESSIONS = 64
MAX_SUBSCRIPTIONS = 16
EVENT_ATTEMPTS = 3
ALLOWED_DESTINATIONS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"))
"""Where the lab BMC pushes events: this machine and the lab's own addresses, nowhere else."""


@dataclass
class BmcHooks:
    """What the lab plugs in. Every hook is awaited; an exception is logged, not fatal."""

    on_power_on: Callable[[], Awaitable[None]] | None = None
    """After power-on: the lab starts the host's agent again."""
    on_power_off: Callable[[power.KillReport], Awaitable[None]] | None = None
    """After every process of the host was killed."""
    on_nic: Callable[[str, bool], Awaitable[None]] | None = None
    """(nic, up): a NIC failed (False) or was repaired (True); the lab cuts/restores its cable."""
    on_component: Callable[[ComponentKind, str, bool], Awaitable[None]] | None = None
    """(kind, name, failed) for every component failure or repair (events, chaos log)."""


@dataclass
class BmcConfig:
    hardware: HostHardware
    netns: str | None
    """Namespace name (``nonstop-<cluster>-<host>``) or path; None: power-off kills nothing."""
    username: str = "admin"
    password: str = "password"
    listen: str = "127.0.0.1"
    port: int = 0
    graceful_timeout: float = 5.0
    kill_timeout: float = 5.0


def redfish_error(status_code: int, message: str, message_id: str = "Base.1.8.GeneralError") -> JSONResponse:
    body = {"error": {"code": message_id, "message": message,
                      "@Message.ExtendedInfo": [{"MessageId": message_id, "Message": message}]}}
    return JSONResponse(body, status_code=status_code, headers=HEADERS)


class Bmc:
    """The BMC's behaviour, independent of HTTP (tests and the lab may call it directly)."""

    def __init__(self, config: BmcConfig, hooks: BmcHooks | None = None) -> None:
        self.config = config
        self.hw = config.hardware
        self.hooks = hooks or BmcHooks()
        self.sessions: dict[str, tuple[str, str]] = {}  # id -> (user, token)
        self.lock = asyncio.Lock()
        self.last_kill: power.KillReport | None = None
        self.subscriptions: dict[str, dict[str, str]] = {}  # id -> {"Destination", "Context"}
        self.event_seq = 0
        self._deliveries: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ events
    def notify(self, origin: str, message: str, severity: Health = Health.OK) -> None:
        """Push one Event to every subscriber (in the background; never blocks the change)."""
        if not self.subscriptions:
            return
        self.event_seq += 1
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        for sid, sub in list(self.subscriptions.items()):
            body = event_payload(self.event_seq, sub.get("Context", ""), origin, message, severity, stamp)
            task = asyncio.get_running_loop().create_task(self._deliver(sid, sub["Destination"], body))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, sid: str, destination: str, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()

        def post() -> None:
            req = urllib.request.Request(destination, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310 - checked destination
                resp.read()

        for attempt in range(EVENT_ATTEMPTS):
            try:
                await asyncio.to_thread(post)
                return
            except OSError as exc:
                log.info("BMC %s: event to %s failed (%s), attempt %d", self.hw.host, destination, exc, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
        # A destination that never answers is dropped, as BMCs do after their retry attempts.
        self.subscriptions.pop(sid, None)

    # -------------------------------------------------------------- auth
    def authorized(self, request: Request) -> bool:
        token = request.headers.get("x-auth-token")
        if token is not None:
            return any(hmac.compare_digest(token, t) for _, t in self.sessions.values())
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            return False
        return self.check_password(user, password)

    def check_password(self, user: str, password: str) -> bool:
        return hmac.compare_digest(user, self.config.username) & hmac.compare_digest(password, self.config.password)

    # ------------------------------------------------------------- power
    async def _call(self, hook: Callable[..., Awaitable[None]] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            await hook(*args)
        except Exception:  # a broken hook must not wedge the BMC
            log.exception("BMC %s: hook %s failed", self.hw.host, getattr(hook, "__name__", hook))

    async def _kill(self, graceful: bool) -> power.KillReport:
        netns = self.config.netns
        if netns is None:
            return power.KillReport("")
        if graceful:
            await asyncio.to_thread(power.kill_namespace, netns, sig=signal.SIGTERM)
            await asyncio.to_thread(power.wait_empty, netns, self.config.graceful_timeout)
        return await asyncio.to_thread(power.kill_namespace, netns, timeout=self.config.kill_timeout)

    async def power_off(self, graceful: bool = False, reason: str = "ForceOff") -> power.KillReport:
        """Kill every process of the host; PowerState is Off only once none is left."""
        self.hw.power = PowerState.POWERING_OFF
        report = await self._kill(graceful)
        self.last_kill = report
        if report.complete:
            self.hw.power = PowerState.OFF
            self.hw.power_off_reason = reason
            self.notify(f"{ROOT}/Systems/{self.hw.host}", f"power off: {reason}", Health.CRITICAL)
            await self._call(self.hooks.on_power_off, report)
        else:
            log.error("BMC %s: processes survived power-off: %s", self.hw.host, report.remaining)
        return report

    async def power_on(self, reason: str = "On") -> bool:
        if not self.hw.has_power:
            return False
        if self.hw.power is not PowerState.ON:
            self.hw.power = PowerState.POWERING_ON
            await self._call(self.hooks.on_power_on)
            self.hw.power = PowerState.ON
            self.hw.power_off_reason = ""
            self.notify(f"{ROOT}/Systems/{self.hw.host}", "power on")
        return True

    async def reset(self, reset_type: str) -> str | None:
        """Carry out a ComputerSystem.Reset; returns an error message or None."""
        if reset_type == "ForceOff":
            # Never queued behind a graceful shutdown in progress: a fence must not wait out
            # someone else's grace period. Killing is idempotent, so no lock is needed.
            report = await self.power_off(graceful=False, reason=reset_type)
            return None if report.complete else f"processes survived: {report.remaining}"
        async with self.lock:
            if reset_type == "On":
                return None if await self.power_on() else "no working power supply"
            if reset_type == "GracefulShutdown":
                report = await self.power_off(graceful=True, reason=reset_type)
                return None if report.complete else f"processes survived: {report.remaining}"
            if reset_type in ("ForceRestart", "GracefulRestart", "PowerCycle"):
                report = await self.power_off(graceful=reset_type == "GracefulRestart", reason=reset_type)
                if not report.complete:
                    return f"processes survived: {report.remaining}"
                return None if await self.power_on() else "no working power supply"
            return f"unsupported ResetType {reset_type}"

    # -------------------------------------------------------- components
    async def set_component(self, kind: ComponentKind, name: str, failed: bool) -> None:
        async with self.lock:
            part = self.hw.component(kind, name)
            if part.failed == failed:
                return
            part.failed = failed
            self.notify(component_uri(self.hw.host, kind, name), f"{kind.value} {name} {'failed' if failed else 'repaired'}",
                        Health.CRITICAL if failed else Health.OK)
            if kind is ComponentKind.NIC:
                await self._call(self.hooks.on_nic, name, not failed)
            await self._call(self.hooks.on_component, kind, name, failed)
            if kind is ComponentKind.PSU and not self.hw.has_power and self.hw.power is not PowerState.OFF:
                await self.power_off(reason="all power supplies lost")


def component_uri(host: str, kind: ComponentKind, name: str) -> str:
    chassis = f"{ROOT}/Chassis/{host}"
    return {ComponentKind.PSU: f"{chassis}/PowerSubsystem/PowerSupplies/{name}",
            ComponentKind.NIC: f"{chassis}/NetworkAdapters/{name}", ComponentKind.DRIVE: f"{chassis}/Drives/{name}",
            ComponentKind.FAN: f"{chassis}/ThermalSubsystem/Fans/{name}"}[kind]


def allowed_destination(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    try:
        address = ipaddress.ip_address(parsed.hostname or "")
    except ValueError:
        return False
    return parsed.scheme == "http" and any(address in net for net in ALLOWED_DESTINATIONS)


def build_app(bmc: Bmc) -> FastAPI:
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    background: set[asyncio.Task[str | None]] = set()

    def tree() -> dict[str, dict[str, Any]]:
        users = {sid: user for sid, (user, _) in bmc.sessions.items()}
        return render(bmc.hw, users, bmc.config.username, bmc.subscriptions)

    def normal(path: str) -> str:
        return path.rstrip("/") or "/"

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE"])
    async def dispatch(request: Request, path: str) -> Response:
        uri = normal("/" + path)
        method = request.method
        if method in ("GET", "HEAD") and uri == "/redfish":
            return JSONResponse({"v1": f"{ROOT}/"}, headers=HEADERS)
        if method in ("GET", "HEAD") and uri == f"{ROOT}/$metadata":
            return Response(metadata_xml(), media_type="application/xml", headers=HEADERS)
        if method in ("GET", "HEAD") and uri == f"{ROOT}/odata":
            return JSONResponse(service_document(), headers=HEADERS)
        if method == "POST" and uri == SESSIONS:
            return await create_session(request)
        public = method in ("GET", "HEAD") and uri in PUBLIC_GETS
        if not public and not bmc.authorized(request):
            response = redfish_error(401, "authentication required", "Base.1.8.NoValidSession")
            response.headers["WWW-Authenticate"] = 'Basic realm="nonstop BMC"'
            return response
        if uri.startswith("/nonstop/v1/"):
            return await admin(request, uri)
        resources = tree()
        if method == "POST" and uri.endswith("/Actions/ComputerSystem.Reset"):
            system = uri.removesuffix("/Actions/ComputerSystem.Reset")
            if system not in resources:
                return redfish_error(404, f"{uri} not found", "Base.1.8.ResourceMissingAtURI")
            return await reset(request)
        if uri not in resources:
            return redfish_error(404, f"{uri} not found", "Base.1.8.ResourceMissingAtURI")
        if method in ("GET", "HEAD"):
            return JSONResponse(resources[uri], headers=HEADERS)
        if method == "DELETE" and uri.startswith(SESSIONS + "/"):
            bmc.sessions.pop(uri.rsplit("/", 1)[1], None)
            return Response(status_code=204, headers=HEADERS)
        if method == "POST" and uri == SUBSCRIPTIONS:
            return await subscribe(request)
        if method == "DELETE" and uri.startswith(SUBSCRIPTIONS + "/"):
            bmc.subscriptions.pop(uri.rsplit("/", 1)[1], None)
            return Response(status_code=204, headers=HEADERS)
        collections = (SESSIONS, SUBSCRIPTIONS)
        allow = ("GET, HEAD, POST" if uri in collections
                 else "GET, HEAD, DELETE" if any(uri.startswith(c + "/") for c in collections) else "GET, HEAD")
        response = redfish_error(405, f"{method} not allowed on {uri}", "Base.1.8.OperationNotAllowed")
        response.headers["Allow"] = allow
        return response

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    async def create_session(request: Request) -> Response:
        data = await body(request)
        user, password = str(data.get("UserName", "")), str(data.get("Password", ""))
        if not bmc.check_password(user, password):
            return redfish_error(401, "invalid credentials", "Base.1.8.NoValidSession")
        sid, token = secrets.token_hex(8), secrets.token_urlsafe(24)
        while len(bmc.sessions) >= MAX_SESSIONS:  # clients that never log out: drop the oldest
            del bmc.sessions[next(iter(bmc.sessions))]
        bmc.sessions[sid] = (user, token)
        uri = f"{SESSIONS}/{sid}"
        return JSONResponse(tree()[uri], status_code=201, headers={**HEADERS, "X-Auth-Token": token, "Location": uri})

    async def subscribe(request: Request) -> Response:
        data = await body(request)
        destination = str(data.get("Destination", ""))
        if not allowed_destination(destination):
            return redfish_error(400, "Destination must be an http URL on 127.0.0.0/8 or the lab network",
                                 "Base.1.8.PropertyValueNotInList")
        if data.get("Protocol", "Redfish") != "Redfish":
            return redfish_error(400, "Protocol must be Redfish", "Base.1.8.PropertyValueNotInList")
        if len(bmc.subscriptions) >= MAX_SUBSCRIPTIONS:
            return redfish_error(409, "too many subscriptions", "Base.1.8.ResourceInUse")
        sid = secrets.token_hex(4)
        bmc.subscriptions[sid] = {"Destination": destination, "Context": str(data.get("Context", ""))}
        uri = f"{SUBSCRIPTIONS}/{sid}"
        return JSONResponse(tree()[uri], status_code=201, headers={**HEADERS, "Location": uri})

    async def reset(request: Request) -> Response:
        reset_type = (await body(request)).get("ResetType")
        if reset_type not in RESET_TYPES:
            return redfish_error(400, f"ResetType must be one of {', '.join(RESET_TYPES)}", "Base.1.8.ActionParameterValueNotInList")
        if reset_type in ("GracefulShutdown", "GracefulRestart"):
            # Like real BMCs: accept now, finish in the background (PowerState shows
            # PoweringOff meanwhile) — a client's read timeout must not race the grace period.
            task = asyncio.get_running_loop().create_task(bmc.reset(str(reset_type)))
            background.add(task)
            task.add_done_callback(background.discard)
            return Response(status_code=204, headers=HEADERS)
        error = await bmc.reset(str(reset_type))
        if error is not None:
            return redfish_error(409, error, "Base.1.8.ResourceInUse")
        return Response(status_code=204, headers=HEADERS)

    async def admin(request: Request, uri: str) -> Response:
        parts = uri.split("/")[3:]  # /nonstop/v1/<...>
        if request.method == "GET" and parts == ["state"]:
            return JSONResponse(bmc_state(bmc))
        if request.method == "POST" and len(parts) == 4 and parts[0] == "components" and parts[3] in ("fail", "repair"):
            try:
                kind = ComponentKind(parts[1])
                await bmc.set_component(kind, parts[2], failed=parts[3] == "fail")
            except (ValueError, KeyError) as exc:
                return redfish_error(404, str(exc), "Base.1.8.ResourceMissingAtURI")
            return JSONResponse(bmc_state(bmc))
        return redfish_error(404, f"{uri} not found", "Base.1.8.ResourceMissingAtURI")

    return app


def bmc_state(bmc: Bmc) -> dict[str, Any]:
    hw = bmc.hw
    return {
        "host": hw.host,
        "power": hw.power.value,
        "power_off_reason": hw.power_off_reason,
        "health": {"power": hw.power_health.value, "network": hw.network_health.value,
                   "storage": hw.storage_health.value, "cooling": hw.cooling_health.value},
        "failed": sorted(f"{k.value}/{c.name}" for k, table in
                         ((ComponentKind.PSU, hw.psus), (ComponentKind.NIC, hw.nics), (ComponentKind.DRIVE, hw.drives),
                          (ComponentKind.FAN, hw.fans))
                         for c in table.values() if c.failed),
    }


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its process-wide SIGINT/SIGTERM capture: several BMCs (and the lab or
    controller that embeds them) share one process, and the process owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class RunningBmc:
    bmc: Bmc
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int
    listen: str = "127.0.0.1"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.listen}:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5.0)


async def start_bmc(config: BmcConfig, hooks: BmcHooks | None = None, *, bmc: Bmc | None = None) -> RunningBmc:
    """Start one host's BMC in the running event loop; returns once it accepts connections.

    ``bmc``: serve this (possibly subclassed) ``Bmc`` instead of building one from ``config``.
    """
    bmc = bmc or Bmc(config, hooks)
    server = _EmbeddedServer(uvicorn.Config(
        build_app(bmc), host=config.listen, port=config.port, log_level="warning", lifespan="off",
        access_log=False, loop="none",
    ))
    task = asyncio.get_running_loop().create_task(server.serve(), name=f"bmc-{config.hardware.host}")
    while not server.started:
        if task.done():
            task.result()  # raises the bind error
            raise RuntimeError("BMC server exited during start-up")
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningBmc(bmc, server, task, port, config.listen)
