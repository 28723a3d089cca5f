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
    GET  /docs                            Swagger UI over /openapi.json, its assets served from here

Every response carries a strict Content-Security-Policy and no-framing headers
(:mod:`dcrec.cloud.serving.http.headers`); no page loads anything from another origin. A torn
or garbage registry file answers 503 with a detail naming it, never 500.

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

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from dcrec.cloud.models.generator import CandidateGenerator
from dcrec.cloud.releases.registry import (
    CloudModelRegistry,
    ModelRegistry,
    RegistryError,
    RegistryUnreadable,
    Releases,
)
from dcrec.cloud.serving.auth import AuthError, TokenAuthority
from dcrec.cloud.serving.events import DeviceEventLog
from dcrec.cloud.serving.http.headers import SECURITY_HEADERS, SecurityHeaders
from dcrec.cloud.serving.http.limits import BodyLimit
from dcrec.cloud.serving.metrics import Telemetry
from dcrec.cloud.serving.service import CandidateService

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
_STATIC_TYPES = {"dashboard.js": "text/javascript", "dashboard.css": "text/css",
                 "docs.js": "text/javascript"}
# Swagger UI's own files, from the fastapi-offline package (the cloud extra): /docs works offline.
_SWAGGER_TYPES = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                  "favicon.png": "image/png"}


def _swagger_dir() -> Path | None:
    try:
        import fastapi_offline
    except ImportError:
        return None
    return Path(fastapi_offline.__file__).with_name("static")


def _default_loader(path: Path) -> CandidateGenerator:
    from dcrec.cloud.models.backends import load_generator

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


class VersionInfo(BaseModel):
    version: str
    current: bool
    bytes: int
    published_at: float  # seconds since the epoch


class HistoryEntry(BaseModel):
    sequence: int
    version: str
    at: float | None = None  # seconds since the epoch
    action: str | None = None  # promote, rollback


class RegistryView(BaseModel):
    registry: bool  # False: this server has no registry of this kind
    current: str | None
    sequence: int
    versions: list[VersionInfo]
    history: list[HistoryEntry]  # the newest 20 releases, oldest first


class ModelsView(BaseModel):
    cloud: RegistryView
    device: RegistryView


class FleetView(BaseModel):
    series: dict[str, Any]  # per-second series and totals (cloud.metrics.Telemetry.series)
    devices: int
    events: int
    models: dict[str, str | None]  # kind -> live version
    problems: dict[str, str]  # kind -> why its registry cannot be read (empty when all is well)


_bearer = HTTPBearer(auto_error=False, description="operator token from `dcrec cloud token --operator`")


class Problem(BaseModel):
    detail: str


_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "no operator token, or a malformed, tampered or expired one"},
    403: {"model": Problem, "description": "a device token, not an operator token"},
}
_UNREADABLE: dict[int | str, dict[str, Any]] = {
    503: {"model": Problem, "description": "a registry file is torn or unreadable; the detail names it"},
}


def _operator(authority: TokenAuthority | None) -> Callable[..., str]:
    """The dependency /api routes take: the operator's name from a bearer token."""
    if authority is None:
        def development() -> str:  # no auth secret: /api is open, and the schema asks for no token
            return "development"
        return development

    def operator(cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str:
        try:
            return authority.verify(cred.credentials if cred else "", "operator").subject
        except AuthError as e:
            status = 403 if e.code.name == "PERMISSION_DENIED" else 401
            raise HTTPException(status, str(e), headers={"WWW-Authenticate": "Bearer"}) from e
    return operator


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryUnreadable)
    async def _unreadable(request: Request, exc: RegistryUnreadable) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"model registry unavailable: {exc}"}, status_code=503)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        error_id = uuid.uuid4().hex[:12]
        log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
        # Answered outside the middleware stack, so the security headers are set here too.
        return JSONResponse({"detail": f"internal error (id {error_id})"}, status_code=500,
                            headers=SECURITY_HEADERS)


def create_app(state: OpsState) -> FastAPI:
    """The app: middleware, error handlers, and one router per resource."""
    # /docs is served below with its assets from here; no ReDoc (it needs inline styles).
    app = FastAPI(title="dcrec cloud operations", version="1", docs_url=None, redoc_url=None,
                  description="Health, metrics, model registry and the fleet page.")
    app.add_middleware(BodyLimit, max_bytes=state.max_body_bytes)
    app.add_middleware(SecurityHeaders)  # added last, so outermost: the 413s carry them too
    _error_handlers(app)
    operator = Annotated[str, Depends(_operator(state.authority))]
    auth = _AUTH_RESPONSES if state.authority is not None else {}
    models = _Models(state)
    for router in (_health_routes(state), _metrics_routes(state),
                   _fleet_routes(state, models, operator, auth), _model_routes(models, operator, auth)):
        app.include_router(router)
    _pages(app)
    return app


class _Models:
    """The cloud and device model registries as the API sees them (either may be absent)."""

    def __init__(self, state: OpsState) -> None:
        self.state = state

    def _reg(self, kind: Kind) -> Releases | None:
        return self.state.cloud_registry if kind is Kind.cloud else self.state.device_registry

    def registry(self, kind: Kind) -> Releases:
        reg = self._reg(kind)
        if reg is None:
            raise HTTPException(404, f"this server has no {kind.value} model registry")
        return reg

    def live(self, kind: Kind) -> str | None:
        reg = self._reg(kind)
        if reg is None:
            return self.state.service.generator.version if kind is Kind.cloud else None
        return reg.current_version()

    def describe(self, kind: Kind) -> dict[str, Any]:
        reg = self._reg(kind)
        if reg is None:
            return {"registry": False, "current": self.live(kind), "sequence": 0, "versions": [],
                    "history": []}
        return {"registry": True, "current": reg.current_version(),
                "sequence": reg.current_sequence(), "versions": reg.describe(),
                "history": reg.history()[-20:]}

    def release(self, kind: Kind, reg: Releases, version: str, action: str) -> Release:
        state = self.state
        try:
            if kind is Kind.cloud:  # load before the release: a model that fails to load never goes live
                assert isinstance(reg, CloudModelRegistry)
                generator = state.load_generator(reg.path(version))
                sequence = reg.promote(version, action)
                state.service.generator = generator
            else:
                sequence = reg.promote(version, action)
        except RegistryUnreadable:
            raise
        except RegistryError as e:  # e.g. a version whose files fail their digests, or no signing key
            raise HTTPException(409, str(e)) from e
        state.telemetry.set_model(kind.value, version, sequence)
        log.info("%s model %s live as release %d (%s)", kind.value, version, sequence, action)
        return Release(kind=kind, version=version, sequence=sequence)


def _health_routes(state: OpsState) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health)
    def healthz() -> Health:
        return Health(status="ok")

    @router.get("/readyz", response_model=Health,
                responses={503: {"model": Health, "description": "draining for shutdown"}})
    def readyz() -> Any:
        if state.ready():
            return Health(status="serving")
        return JSONResponse({"status": "draining"}, status_code=503)

    return router


def _metrics_routes(state: OpsState) -> APIRouter:
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(state.telemetry.render(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return router


def _fleet_routes(state: OpsState, models: _Models, operator: Any,
                  auth: dict[int | str, dict[str, Any]]) -> APIRouter:
    router = APIRouter(tags=["fleet"])

    @router.get("/api/fleet", response_model=FleetView, responses=auth)
    def fleet(_: operator) -> dict[str, Any]:  # type: ignore[valid-type]
        # The series need no registry: an unreadable one blanks its model and says why in problems.
        live: dict[str, str | None] = {}
        problems: dict[str, str] = {}
        for k in Kind:
            try:
                live[k.value] = models.live(k)
            except RegistryUnreadable as e:
                live[k.value] = None
                problems[k.value] = f"{k.value} model registry unavailable: {e}"
        return {"series": state.telemetry.series(), "devices": len(state.events),
                "events": state.events.recorded, "models": live, "problems": problems}

    return router


def _model_routes(models: _Models, operator: Any, auth: dict[int | str, dict[str, Any]]) -> APIRouter:
    router = APIRouter(tags=["models"])

    @router.get("/api/models", response_model=ModelsView, responses={**auth, **_UNREADABLE})
    def list_models(_: operator) -> dict[str, Any]:  # type: ignore[valid-type]
        return {k.value: models.describe(k) for k in Kind}

    @router.post("/api/models/{kind}/promote", response_model=Release,
                 responses={**auth, **_UNREADABLE,
                            400: {"model": Problem, "description": "the body is not JSON"},
                            404: {"model": Problem, "description": "unknown version or no registry"},
                            409: {"model": Problem, "description": "the version cannot be released"},
                            413: {"model": Problem, "description": "request body too large"}})
    def promote(kind: Kind, body: PromoteBody, _: operator) -> Release:  # type: ignore[valid-type]
        reg = models.registry(kind)
        if body.version not in reg.versions():
            raise HTTPException(404, f"unknown {kind.value} model version {body.version!r}")
        return models.release(kind, reg, body.version, "promote")

    @router.post("/api/models/{kind}/rollback", response_model=Release,
                 responses={**auth, **_UNREADABLE,
                            404: {"model": Problem, "description": "no registry"},
                            409: {"model": Problem, "description": "nothing to roll back to"}})
    def rollback(kind: Kind, _: operator) -> Release:  # type: ignore[valid-type]
        reg = models.registry(kind)
        try:
            version = reg.rollback_target()
        except RegistryUnreadable:
            raise
        except RegistryError as e:
            raise HTTPException(409, str(e)) from e
        return models.release(kind, reg, version, "rollback")

    return router


def _pages(app: FastAPI) -> None:
    """The fleet page, the API docs and their files: all served from here, nothing from a CDN."""

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/dashboard")

    @app.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
    def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "dashboard.html").read_text())

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        if _swagger_dir() is None:
            raise HTTPException(404, "the API docs need the fastapi-offline package (the cloud extra)")
        return HTMLResponse((STATIC / "docs.html").read_text())

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        # Fixed lists: no path from a request ever reaches the file system.
        if name in _STATIC_TYPES:
            return Response((STATIC / name).read_bytes(), media_type=_STATIC_TYPES[name])
        swagger = _swagger_dir() if name in _SWAGGER_TYPES else None
        if swagger is None:
            raise HTTPException(404, "not found")
        return Response((swagger / name).read_bytes(), media_type=_SWAGGER_TYPES[name])
