"""`streamlearn serve`: one resident backbone answers every task over HTTP (FastAPI under uvicorn).

The server package (and with it torch) is imported only when the command runs.
"""

from __future__ import annotations

import click

from streamlearn.cli import main


def _pins(value: str | None) -> tuple[str, ...]:
    return tuple(sorted({t.strip() for t in (value or "").split(",") if t.strip()}))


@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback requires STREAMLEARN_API_TOKEN; without it the "
                   "server refuses to start.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free port).")
@click.option("--max-batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
              help="Most rows (of any tasks) in one batch through the backbone.")
@click.option("--max-wait-ms", type=click.FloatRange(0, 10_000), default=5.0, show_default=True,
              help="Longest the oldest queued request waits for others to fill its batch.")
@click.option("--memory-budget", type=click.IntRange(1, None), default=None,
              help="Most bytes of per-task parts kept in memory; the least recently used task is evicted "
                   "(and loaded again when asked for). Default: no limit.")
@click.option("--pin", default=None, help="Comma-separated tasks loaded at start and never evicted.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Server processes; each loads its own backbone and keeps its own resident tasks.")
@click.option("--backend", type=click.Choice(["engine", "switch"]), default="engine", show_default=True,
              help="engine: rows of different tasks share one forward pass; switch: each batch runs task by "
                   "task, attaching one task at a time (the baseline of the serving benchmark).")
@click.option("--poll-interval", type=click.FloatRange(0.05, 60), default=1.0, show_default=True,
              help="Seconds between reads of the catalogue's current artifacts (new and retrained tasks).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Server log level.")
def serve_command(host, port, max_batch_size, max_wait_ms, memory_budget, pin, workers, backend, poll_interval,
                  log_level) -> None:
    """Serve every task of the catalogue over HTTP, from one resident backbone.

    Endpoints: POST /v1/predict {"items": [{"task", "text", "text_pair"?}]}, POST /v1/classify
    {"texts", "tasks": [...] | "all"}, the Open Inference Protocol (KServe v2) under /v2 with the
    task as the model, GET /v1/tasks, /v1/tasks/TASK, /v1/jobs, /v1/jobs/ID, /v1/storage (the
    JSON of the CLI's --json), POST /v1/tasks (multipart submit), GET /v1/evaluations/matrix and
    /v1/evaluations (the evaluation history), POST /v1/evaluate (re-score and record), GET /metrics
    (Prometheus), GET /openapi.json, and the dashboard page at GET / (with a token set, a browser
    signs in at /dashboard/login). It reads the catalogue and artifact store of the usual settings, so it runs
    beside workers in both modes; a task whose job succeeds is servable within about a second,
    without a restart.

    \b
    Limits (environment): STREAMLEARN_SERVE_MAX_BODY_BYTES (1048576), STREAMLEARN_SERVE_MAX_ITEMS
    (1024 items or texts x tasks), STREAMLEARN_SERVE_MAX_UPLOAD_BYTES (268435456); over one: 413.
    STREAMLEARN_SERVE_CORS_ORIGINS (comma-separated) turns CORS on; it is off by default.
    """
    from streamlearn.serve.config import ServeConfig, api_token, cors_from_env

    config = ServeConfig(host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                         memory_budget=memory_budget, pin=_pins(pin), workers=workers, backend=backend,
                         poll_interval=poll_interval, cors_origins=cors_from_env())
    token = api_token(host)
    from streamlearn.serve.process import run

    run(config, token, log_level)
