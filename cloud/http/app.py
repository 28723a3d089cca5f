"""The operator HTTP surface (FastAPI): health, Prometheus metrics, model registry, fleet page.

Routes (``/api/*`` need an operator token when the server has an auth secret)::

    GET  /healthz                         liveness: the process answers
    GET  /readyz                          readiness: 503 while draining for shutdown
    GET  /metrics                         Prometheus text format
    GET  /api/fleet                       per-second series and totals for the fleet page
    GET  /api/models                      cloud and device models, live release, history
    POST /api/models/{kind}/promote       {"version": "..."}: make a version live
    POST /api/models/{kind}/rollback      the version live before the current one, live again
    GET  /dashboard                       the fleet page (HTML, JS and CSS served from here)

Example::

    app = create_app(OpsState(service=svc, telemetry=Telemetry(), events=DeviceEventLog()))
"""


import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from cloud.auth import AuthError, TokenAuthority
from cloud.events import DeviceEventLog
from cloud.generator import CandidateGenerator
from cloud.http.limits import BodyLimit
from cloud.metrics import Telemetry
from cloud.registry import CloudModelRegistry, ModelRegistry, RegistryError, Releases
from cloud.service import CandidateService

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}


def _default_loader(path: Path) -> CandidateGenerator:
    from cloud.backends import load_generator

    return load_generator(path)


@dataclass
class OpsState:
    """What the HTTP surface reads and changes; shared with the gRPC server in one process."""

    service: CandidateService
    telemetry: Telemetry
    events: DeviceEventLog
    device_registry: ModelRegistry | None = None
    cloud_registry: CloudModelRegistry | None = None
    authority: TokenAuthority | None = None  # None: development, /api is open
    ready: Callable[[], bool] = lambda: True
    load_generator: Callable[[Path], CandidateGenerator] = _default_loader
    max_body_bytes: int = 64 * 1024  # operator requests are tiny JSON


class Kind(StrEnum):
    cloud = "cloud"
    device = "device"


class PromoteBody(BaseModel):
    version: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Release(BaseModel):
    kind: Kind
    version: str
    sequence: int


class Health(BaseModel):
    status: str


_bearer = HTTPBearer(auto_error=False, description="operator token from `dcrec cloud token --operator`")


def create_app(state: OpsState) -> FastAPI:
    app = FastAPI(title="dcrec cloud operations", version="1",
                  description="Health, metrics, model registry and the fleet page.")
    app.add_middleware(BodyLimit, max_bytes=state.max_body_bytes)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error (id {error_id})"}, status_code=500)

    def operator(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
        if state.authority is None:
            return "development"
        try:
            return state.authority.verify(cred.credentials if cred else "", "operator").subject
        except AuthError as e:
            status = 403 if e.code.name == "PERMISSION_DENIED" else 401
            raise HTTPException(status, str(e), headers={"WWW-Authenticate": "Bearer"}) from e

    def registry(kind: Kind) -> Releases:
        reg = state.cloud_registry if kind is Kind.cloud else state.device_registry
        if reg is None:
            raise HTTPException(404, f"this server has no {kind.value} model registry")
        return reg

    def describe(kind: Kind) -> dict[str, Any]:
        reg = state.cloud_registry if kind is Kind.cloud else state.device_registry
        if reg is None:
            live = state.service.generator.version if kind is Kind.cloud else None
            return {"registry": False, "current": live, "sequence": 0, "versions": [],
                    "history": []}
        return {"registry": True, "current": reg.current_version(),
                "sequence": reg.current_sequence(), "versions": reg.describe(),
                "history": reg.history()[-20:]}

    def release(kind: Kind, reg: Releases, version: str, action: str) -> Release:
        if kind is Kind.cloud:  # load before the release: a model that fails to load never goes live
            assert isinstance(reg, CloudModelRegistry)
            generator = state.load_generator(reg.path(version))
            sequence = reg.promote(version, action)
            state.service.generator = generator
        else:
            sequence = reg.promote(version, action)
        state.telemetry.set_model(kind.value, version, sequence)
        log.info("%s model %s live as release %d (%s)", kind.value, version, sequence, action)
        return Release(kind=kind, version=version, sequence=sequence)

    Operator = Annotated[str, Depends(operator)]

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"],
             responses={503: {"model": Health, "description": "draining for shutdown"}})
    def readyz() -> Any:
        if state.ready():
            return Health(status="serving")
        return JSONResponse({"status": "draining"}, status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["metrics"])
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.telemetry.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/fleet", tags=["fleet"])
    def fleet(_: Operator) -> dict[str, Any]:
        return {"series": state.telemetry.series(), "devices": len(state.events),
                "events": state.events.recorded,
                "models": {k.value: describe(k)["current"] for k in Kind}}

    @app.get("/api/models", tags=["models"])
    def models(_: Operator) -> dict[str, Any]:
        return {k.value: describe(k) for k in Kind}

    @app.post("/api/models/{kind}/promote", response_model=Release, tags=["models"],
              responses={404: {"description": "unknown version or no registry"}})
    def promote(kind: Kind, body: PromoteBody, _: Operator) -> Release:
        reg = registry(kind)
        if body.version not in reg.versions():
            raise HTTPException(404, f"unknown {kind.value} model version {body.version!r}")
        return release(kind, reg, body.version, "promote")

    @app.post("/api/models/{kind}/rollback", response_model=Release, tags=["models"],
              responses={404: {"description": "no registry"},
                         409: {"description": "nothing to roll back to"}})
    def rollback(kind: Kind, _: Operator) -> Release:
        reg = registry(kind)
        try:
            version = reg.rollback_target()
        except RegistryError as e:
            raise HTTPException(409, str(e)) from e
        return release(kind, reg, version, "rollback")

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in _STATIC_TYPES:  # a fixed list: no path ever reaches the file system
            raise HTTPException(404, "not found")
        return Response((STATIC / name).read_bytes(), media_type=_STATIC_TYPES[name])

    return app
