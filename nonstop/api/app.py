"""The API server: ``create_app(store_url, cluster, token_file, lab=None)`` builds the FastAPI app.

Role: wire the pieces — bearer-token auth (``auth``), the live runtime (store, snapshot cache,
change fan-out, balancer stats; ``runtime``), the read routes (``routes_read``), the mutating
routes (``routes_write``), the SSE stream, ``/metrics`` (``nonstop.metrics``) and the static
dashboard at ``/`` — and map action errors to 4xx bodies that name the field. OpenAPI is at
``/api/v1/openapi.json`` and the docs at ``/api/v1/docs``.

Must not: hold request logic (routes do), or start cluster components (``nonstop up`` does and
passes its ``lab`` in).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from nonstop.api.actions import ActionError
from nonstop.api.auth import Authenticator, ensure_tokens
from nonstop.api.runtime import ApiRuntime

STATIC = Path(__file__).parent / "static"


def create_app(store_url: str, cluster: str, token_file: str | Path, lab: Any = None,
               balancers: Mapping[str, str] | None = None) -> FastAPI:
    """The app for one cluster. ``lab`` enables chaos actions; ``balancers`` maps service → admin address
    (also read from ``lab.balancers`` when the lab has it) for backend health and request rates."""
    tokens = ensure_tokens(token_file)
    runtime = ApiRuntime(store_url, cluster, lab=lab, balancers=balancers)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(
        title="nonstop API", version="1",
        description=f"The nonstop cluster `{cluster}`: read state, apply specs, maintenance, migration, chaos. "
                    "Send `Authorization: Bearer <token>` (tokens in the token file `nonstop up` prints).",
        openapi_url="/api/v1/openapi.json", docs_url="/api/v1/docs", redoc_url=None, lifespan=lifespan,
    )
    app.state.auth = Authenticator(tokens)
    app.state.runtime = runtime
    app.state.cluster = cluster

    @app.middleware("http")
    async def _read_your_writes(request: Request, call_next: Any) -> Response:
        # The snapshot is refreshed by a store watch, which lags a write by a poll interval: a
        # client that reads right after its own write must see it, so a write marks it stale.
        response: Response = await call_next(request)
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            runtime.invalidate()
        return response

    @app.exception_handler(ActionError)
    async def _action_error(request: Request, exc: ActionError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    from nonstop.api import routes_patch, routes_read, routes_write
    from nonstop.metrics.collector import metrics_text

    app.include_router(routes_read.stream_router)
    app.include_router(routes_read.router)
    app.include_router(routes_write.router)
    app.include_router(routes_patch.router)  # rolling patches: docs/patching.md

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        text, content_type = metrics_text(await runtime.snapshot(), runtime)
        return Response(text, media_type=content_type)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
