"""The FastAPI application: start-up, the token, the body limit, errors as one line, metrics.

Every error body is `{"error": "<one line>"}`: StreamlearnError by its class (unknown task or job:
404, bad input: 422, an artifact that fails verification or a broker that is down: 503), FastAPI's
validation errors (422, the first problem with its location), unknown routes (404), too many
items or too large a body (413), a missing or wrong token (401).

Interactive docs pages are not served (they would load scripts from a CDN); `GET /openapi.json`
describes every endpoint.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from streamlearn.dashboard import access
from streamlearn.dashboard import routes as dashboard
from streamlearn.errors import (
    ArtifactCorrupt,
    BackboneMismatch,
    BrokerUnavailable,
    InvalidConfig,
    InvalidDataset,
    StreamlearnError,
    TransientError,
    UnknownJob,
    UnknownTask,
)
from streamlearn.serve.batcher import Batcher
from streamlearn.serve.config import ServeConfig
from streamlearn.serve.inference import Inference
from streamlearn.serve.metrics import Metrics
from streamlearn.serve.resident import NoRoom, ResidentSet, TaskUnavailable

log = logging.getLogger(__name__)


class TooLarge(StreamlearnError):
    """A request over a limit (body bytes, items): 413."""


STATUS = (
    (UnknownTask, 404), (UnknownJob, 404), (InvalidDataset, 422), (InvalidConfig, 422), (TooLarge, 413),
    (TaskUnavailable, 503), (ArtifactCorrupt, 503), (BackboneMismatch, 503), (BrokerUnavailable, 503),
    (TransientError, 503), (NoRoom, 507),
)
"""HTTP status of each StreamlearnError class (first match wins; anything else: 400)."""


def status_of(exc: StreamlearnError) -> int:
    """The HTTP status that answers `exc`."""
    return next((code for cls, code in STATUS if isinstance(exc, cls)), 400)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The one error body: `{"error": "<one line>"}`."""
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


@dataclass
class Service:
    """What the endpoints share: settings, the resident set, the batcher, the metrics."""

    config: ServeConfig
    resident: ResidentSet
    inference: Inference
    batcher: Batcher
    metrics: Metrics
    ready: bool = False


def _route(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class _Guard:
    """ASGI middleware: metrics around everything, then the token, then the body-size limit."""

    def __init__(self, app, config: ServeConfig, token: str | None, metrics: Metrics) -> None:
        self.app, self.config, self.metrics = app, config, metrics
        # The bearer header, or the dashboard's session cookie derived from the token.
        self.access = access.Access(token) if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self._guarded(scope, receive, send_status)
        finally:
            self.metrics.observe_request(_route(scope), status[0], time.perf_counter() - start)

    async def _guarded(self, scope, receive, send):
        headers = dict(scope["headers"])
        if self.access is not None and not access.is_open(scope) and not self.access.allows(headers):
            if scope["method"] == "GET" and scope["path"] == "/":
                # A browser opening the dashboard gets the sign-in form (still a 401, no data).
                return await access.sign_in_page()(scope, receive, send)
            response = error(401, "missing or wrong API token: send 'Authorization: Bearer <STREAMLEARN_API_TOKEN>'",
                             {"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == "/v1/tasks"
        limit = self.config.max_upload_bytes if upload else self.config.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(limit)(scope, receive, send)
        seen = [0]

        async def counted():
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise TooLarge(f"request body over the {limit:,}-byte limit")
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> JSONResponse:
    return error(413, f"request body over the {limit:,}-byte limit (STREAMLEARN_SERVE_MAX_BODY_BYTES / "
                      "STREAMLEARN_SERVE_MAX_UPLOAD_BYTES)")


def _validation_message(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    if first.get("type") == "json_invalid":
        return f"body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
    return f"{where}: {first['msg']}"


def build_service(config: ServeConfig) -> Service:
    """Load the backbone once, and wire the backend, resident set, batcher and metrics."""
    from streamlearn.backbone import resident_backbone
    from streamlearn.serve.backends import make_backend

    backend = make_backend(config.backend, resident_backbone())
    resident = ResidentSet(backend, config.memory_budget, config.pin, poll_interval=config.poll_interval)
    metrics = Metrics()
    inference = Inference(resident, config.max_batch_size)
    batcher = Batcher(inference.run, config.max_batch_size, config.max_wait_ms, metrics.observe_batch)
    return Service(config, resident, inference, batcher, metrics)


def create_app(config: ServeConfig, token: str | None, service: Service | None = None) -> FastAPI:
    """The application; the backbone is loaded when it starts (or `service` is used as is)."""
    from streamlearn.serve import catalogue, predictions

    service = service or build_service(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.resident.start()
        await service.batcher.start()
        try:
            await service.batcher.call(service.resident.load_pinned)
            service.ready = True
            yield
        finally:
            service.ready = False
            await service.batcher.stop()
            service.resident.stop()

    app = FastAPI(title="streamlearn", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="One resident backbone serves every task; new tasks are servable without a restart.")
    app.state.service = service
    app.include_router(predictions.router)
    app.include_router(catalogue.router)
    # The dashboard: the page at /, its assets, the evaluation endpoints, the browser sign-in.
    app.include_router(dashboard.router)
    app.include_router(access.router)
    app.state.access = access.Access(token) if token else None

    @app.exception_handler(StreamlearnError)
    async def _streamlearn_error(request: Request, exc: StreamlearnError):
        return error(status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint {request.method} {request.url.path} (see /openapi.json)"
        return error(exc.status_code, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_endpoint():
        from fastapi import Response

        from streamlearn.serve.metrics import CONTENT_TYPE

        return Response(service.metrics.render(service.resident), media_type=CONTENT_TYPE)

    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(_Guard, config=config, token=token, metrics=service.metrics)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streamlearn")
    except PackageNotFoundError:
        return "0"
