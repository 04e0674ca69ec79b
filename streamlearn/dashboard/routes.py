"""The dashboard's routes: the page, its assets, and the evaluation history over HTTP.

- `GET /`: the page; `GET /dashboard/assets/{asset}`: its stylesheet and script (a fixed list:
  no request names a file).
- `GET /v1/evaluations/matrix`: the JSON of `streamlearn evaluate --matrix --json`.
- `GET /v1/evaluations?task=&limit=`: recorded evaluations, newest first.
- `POST /v1/evaluate` `{"task": "name"}` or `{}` for every task: re-score like `streamlearn
  evaluate`, record the run (source `http`), answer `{"results": [...], "matrix": {...}}`.

The page and the API follow the same token rule; see `dashboard.access` for how a browser presents
the token.
"""

from __future__ import annotations

import functools
from importlib import resources

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

router = APIRouter()

ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
"""The files `GET /dashboard/assets/{asset}` serves, with their media types."""
NO_STORE = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
# The page runs only its own script and style, and is never framed by another site.
PAGE_HEADERS = NO_STORE | {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
}


@functools.cache
def _static(name: str) -> bytes:
    return resources.files("streamlearn.dashboard").joinpath("static", name).read_bytes()


@router.get("/", include_in_schema=False)
def page() -> HTMLResponse:
    """The dashboard page."""
    return HTMLResponse(_static("index.html"), headers=PAGE_HEADERS)


@router.get("/dashboard/assets/{asset}", include_in_schema=False)
def asset(asset: str) -> Response:
    """One of the page's files (ASSETS); anything else is 404."""
    if asset not in ASSETS:
        raise HTTPException(404, f"no dashboard asset {asset!r}")
    return Response(_static(asset), media_type=ASSETS[asset], headers=NO_STORE)


@router.get("/v1/evaluations/matrix", summary="The accuracy matrix (the JSON of `streamlearn evaluate --matrix --json`).")
def matrix() -> dict:
    from streamlearn.catalogue.evaluations import accuracy_matrix
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return accuracy_matrix(s)


@router.get("/v1/evaluations", summary="Recorded evaluations, newest first (optionally one task's).")
def evaluations(task: str | None = Query(default=None, max_length=64),
                limit: int = Query(default=200, ge=1, le=10_000)) -> list[dict]:
    from streamlearn.catalogue.evaluations import history
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        return history(s, task, limit)


class EvaluateRequest(BaseModel):
    """`POST /v1/evaluate`: one task, or every task with an artifact when `task` is left out."""

    model_config = ConfigDict(extra="forbid")
    task: str | None = Field(default=None, min_length=1, max_length=64, description="A task name; none: every task.")


@router.post("/v1/evaluate", summary="Re-score stored artifacts like `streamlearn evaluate`, and record the run.")
async def evaluate(body: EvaluateRequest, request: Request) -> dict:
    """Per task: accuracy, macro-F1 and drift from the catalogue; plus the accuracy matrix after this run."""
    from streamlearn.predictor import reevaluate

    run = functools.partial(reevaluate, body.task, source="http")
    service = getattr(request.app.state, "service", None)
    # Re-scoring attaches artifacts to the server's resident backbone: it must run in the
    # inference thread, between two batches, never beside one.
    rows = await (service.batcher.call(run) if service is not None else run_in_threadpool(run))
    return {"results": rows, "matrix": await run_in_threadpool(matrix)}
