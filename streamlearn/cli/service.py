"""Service commands: worker, submit-task, status, jobs.

Thin like the rest of the CLI: parse, call one function, render. Nothing heavy is imported at
module level (no torch, no celery), so `status` and `jobs` answer instantly.
"""

from __future__ import annotations

import click

from streamlearn.cli import main
from streamlearn.cli.console import echo_json, make_console, plain, visible, warn
from streamlearn.cli.engine import training_options, with_data_limits
from streamlearn.cli.sweep import TERMINAL, render_trials, sweep_options, wait_for_sweep

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


@main.command()
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True,
              help="Jobs run at once by this worker (1 per GPU; more only on a big CPU).")
@click.option("--queues", "-Q", default=None,
              help="Comma-separated queues to consume (default: STREAMLEARN_QUEUE, 'streamlearn').")
@click.option("--loglevel", "-l", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="INFO",
              show_default=True)
@click.option("--pool", type=click.Choice(["auto", "solo", "prefork", "threads"]), default="auto", show_default=True,
              help="Celery pool; auto = solo for one job at a time, prefork above.")
def worker(concurrency: int, queues: str | None, loglevel: str, pool: str) -> None:
    """Run a worker: take jobs from the queue and train them, until stopped (Ctrl-C / SIGTERM).

    The worker loads the backbone once and keeps it for every job, writes progress and a heartbeat
    to the catalogue, and re-enqueues jobs whose worker died (at start and every
    STREAMLEARN_RECONCILE_INTERVAL seconds). Start one per GPU, on any number of machines that
    share the broker, the catalogue and the artifact store.
    """
    import importlib

    from streamlearn.settings import get_settings, mask_url

    settings = get_settings()
    if pool == "auto":
        # One job at a time: the worker process itself trains (no fork, one backbone, and a
        # SIGKILL stops the job with it). Several: prefork, each child with its own backbone.
        pool = "solo" if concurrency == 1 else "prefork"
    if pool == "solo" and concurrency > 1:
        raise click.UsageError("--pool solo runs one job at a time; use --concurrency 1 or --pool prefork")
    # The CLI is the entry point of both sides, so it may start the worker package; nothing else
    # in streamlearn/ imports it.
    from streamlearn.artifacts import ArtifactStore

    # A missing bucket or wrong credentials stop the worker now, in one line, not at its first job.
    ArtifactStore(settings.artifacts).objects.check()
    workers_app = importlib.import_module("workers.app")
    click.echo(
        f"streamlearn worker: broker {mask_url(settings.broker_url)}, catalogue {mask_url(settings.database_url)}, "
        f"artifacts {mask_url(str(settings.artifacts))}, pool {pool} x{concurrency}",
        err=True,
    )
    workers_app.app.worker_main([
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        f"--queues={queues or settings.queue}",
        f"--loglevel={loglevel.upper()}",
        f"--hostname={workers_app.node_name()}",
        # Gossip, mingle and broker heartbeats serve clusters of chatty workers; ours coordinate
        # through the catalogue, and on the filesystem broker they would only add polling.
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
    ])


@main.command("submit-task")
# Unchecked paths (readable=False only turns click's check off): data.py checks them, so a
# directory or an unreadable file gets the one-line error of every other bad input.
@click.argument("data", type=click.Path(readable=False))
@click.option("--name", help="Task name (default: DATA's file name without .jsonl[.gz]); 1-64 of [A-Za-z0-9._-].")
@click.option("--validation", type=click.Path(readable=False), help="Validation JSONL. Default: a seeded, stratified 10% of DATA.")
@click.option("--test", "test_file", type=click.Path(readable=False), help="Test JSONL (optional); `evaluate` re-checks it later.")
@training_options
@sweep_options
@click.option("--force", is_flag=True, help="Train again even if an identical job exists.")
@click.option("--wait", is_flag=True, help="Show live progress until the job ends, then its result.")
@click.option("--timeout", type=click.FloatRange(0, None, min_open=True), default=None, metavar="S",
              help="With --wait: stop waiting after S seconds and exit 3 (the job keeps its place and runs on).")
@click.option("--json", "as_json", is_flag=True, help="Print {job_id, task, status} as JSON (and trials: [ids] for a sweep).")
@with_data_limits("task name      1-64 of [A-Za-z0-9._-], starting with a letter or digit; unique without",
                  "               regard to case (Same and same are one name)")
def submit_task_command(data, name, validation, test_file, method, adapter_size, top_k, sigma, pooling, drop_layers,
                        fuse_from, fusion_rank, fusion_top, store_dtype, epochs, lr,
                        batch_size, max_length, seed, warmup, weight_decay, max_grad_norm, text_field, label_field,
                        max_classes, max_line_bytes, max_bytes, sweep_name, grid, seeds, prefer_smaller, force, wait,
                        timeout, as_json) -> None:
    """Validate DATA, store it, and queue a training job for a worker.

    DATA is a JSONL (or .jsonl.gz) file, one {"text": ..., "label": ...} object per line ("text_pair"
    on every line for pair tasks), 2 to --max-classes labels, lines up to --max-line-bytes. Every
    line of every file is checked first: an invalid file stores and queues nothing. The files are
    copied into the artifact store under their sha256, then a Task and a queued Job are recorded,
    then the job id is sent to the broker. If the broker is down the job is recorded as failed
    with the reason and the command exits 2. Submitting the same files under the same name with
    the same flags returns the existing job (use --force to train again).

    With --sweep or --grid the job is a sweep: one trial per grid point (times --seeds), each a job
    of its own, so N workers train N trials at once. When the last trial ends, the best on
    validation is kept (a tie goes to the smaller artifact; --prefer-smaller EPS keeps the smallest
    within EPS of the best) and the other trials' artifacts are deleted. A grid key overrides its
    flag (m: --adapter-size, lr: --lr, epochs: --epochs); `status JOB` shows the trials.    """
    from streamlearn import sweep
    from streamlearn.settings import get_settings
    from streamlearn.submission import SubmitRequest, submit

    if timeout is not None and not wait:
        raise click.UsageError("--timeout needs --wait")
    spec = sweep.resolve(sweep_name, grid, seeds, prefer_smaller)
    submission = submit(SubmitRequest.from_options(
        data, name=name, validation=validation, test=test_file, force=force, sweep=spec, method=method,
        adapter_size=adapter_size, top_k=top_k, sigma=sigma, pooling=pooling, drop_layers=drop_layers,
        fuse_from=fuse_from, fusion_rank=fusion_rank, fusion_top=fusion_top, epochs=epochs, lr=lr,
        batch_size=batch_size, max_length=max_length, seed=seed, warmup=warmup, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm, store_dtype=store_dtype, text_field=text_field, label_field=label_field, max_classes=max_classes,
        max_line_bytes=max_line_bytes, max_bytes=max_bytes or get_settings().max_dataset_bytes,
    ))
    status = submission.status
    trial_ids = None if spec is None else [t["job_id"] for t in _job(submission.job_id)["trials"]]
    if not as_json:
        what = "job" if spec is None else "sweep"
        if submission.created:
            extra = "" if spec is None else f", {spec.describe()}"
            click.echo(visible(f"{what} {submission.job_id} queued: task {submission.task}{extra}"))
        else:
            click.echo(visible(f"identical {what} {submission.job_id} already exists for task {submission.task} "
                               f"({status}); pass --force to train again"))
    if wait:
        info = wait_for_job(submission.job_id, show=not as_json, timeout=timeout)
        status = info["status"]
        if spec is not None and not as_json:
            render_trials(info)
    if as_json:
        out = {"job_id": submission.job_id, "task": submission.task, "status": status}
        echo_json(out if trial_ids is None else {**out, "trials": trial_ids})
    elif wait:
        _print_task_row(submission.task)
    if wait and status in ("failed", "cancelled"):
        raise SystemExit(1)


def _job(job_id: str) -> dict:
    from streamlearn.catalogue.queries import job_status
    from streamlearn.catalogue.session import session_scope
    from streamlearn.recovery import idle_queue_warning, stale_heartbeat

    with session_scope(readonly=True) as s:
        info = job_status(s, job_id)
        info["warning"] = idle_queue_warning(s) if info["status"] == "queued" else stale_heartbeat(info)
    return info


class _Warnings:
    """Prints each distinct warning once, on stderr (piped or not), while a job is followed."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, info: dict) -> dict:
        if info.get("warning") and info["warning"] not in self.seen:
            self.seen.add(info["warning"])
            warn(info["warning"])
        return info


def wait_for_job(job_id: str, show: bool = True, poll: float = 0.5, timeout: float | None = None) -> dict:
    """Poll a job until it ends, drawing a progress bar on stderr when `show`.

    A sweep gets an overall bar (trials ended / total) and one bar per running trial. A no-worker
    or stale-heartbeat warning is printed once on stderr. With `timeout`, give up after that many
    seconds: a note on stderr and exit code 3 (the job itself is left as it is).
    """
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    warnings = _Warnings()

    def fetch(job: str) -> dict:
        info = warnings(_job(job))
        if deadline is not None and time.monotonic() > deadline and info["status"] not in TERMINAL:
            warn(f"job {info['job_id']} still {info['status']} after {timeout:g} s; it keeps its place "
                 f"(see `streamlearn status {info['job_id']}`)")
            raise SystemExit(3)
        return info

    if "trials" in (first := fetch(job_id)):
        return wait_for_sweep(first["job_id"], fetch, show=show, poll=poll)
    if not show:
        while (info := fetch(job_id))["status"] not in TERMINAL:
            time.sleep(poll)
        return info
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}", markup=False), TimeElapsedColumn())
    with Progress(*columns, console=make_console(stderr=True)) as bar:
        row = bar.add_task(visible(first["task"]), total=None, detail="")
        while True:
            info = fetch(job_id)
            _update_bar(bar, row, info)
            if info["status"] in TERMINAL:
                return info
            time.sleep(poll)


def _update_bar(bar, row, info: dict) -> None:
    p = info["progress"]
    if info["status"] == "running" and p["total_steps"]:
        loss = "" if p["loss"] is None else f" loss {p['loss']:.4f}"
        stage = f"stage {p['stage']}/{p['stages']} " if p.get("stages") else ""
        bar.update(row, completed=p["step"], total=p["total_steps"], detail=f"{stage}epoch {p['epoch']}{loss}")
    elif info["status"] in TERMINAL:
        total = p["total_steps"] or 1
        bar.update(row, completed=total if info["status"] == "succeeded" else p["step"] or 0, total=total,
                   detail=info["status"] if not info["error"] else visible(f"{info['status']}: {info['error'][:80]}"))
    else:
        bar.update(row, detail=info["status"])


def _print_task_row(task: str) -> None:
    from streamlearn.catalogue.queries import task_table
    from streamlearn.catalogue.session import session_scope

    with session_scope(readonly=True) as s:
        rows = task_table(s, name=task)
    if not rows:
        return
    r = rows[0]
    from rich.table import Table

    table = Table("task", "status", "method", "val acc", "test acc", "stored params", "bytes", "sha256")
    acc = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    table.add_row(plain(r["task"]), r["status"] or "-", r["method"] or "-", acc(r["val_accuracy"]), acc(r["test_accuracy"]),
                  "-" if r["stored_params"] is None else f"{r['stored_params']:,}",
                  "-" if r["bytes"] is None else f"{r['bytes']:,}", (r["sha256"] or "-")[:12])
    make_console().print(table)


STATUS_KEYS = ("job_id", "task", "status", "progress", "error", "attempts", "worker")


@main.command("status")
@click.argument("job_id")
@click.option("--watch", is_flag=True, help="Keep refreshing until the job ends.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {job_id, task, status, progress: {epoch, step, total_steps, loss}, error, attempts, worker, ...}.")
def status_command(job_id: str, watch: bool, as_json: bool) -> None:
    """Show a job's status, progress, worker, metrics and error (JOB may be a unique id prefix)."""
    info = _job(job_id)
    if watch and info["status"] not in TERMINAL:
        info = wait_for_job(info["job_id"], show=not as_json)
    if as_json:
        echo_json(info)
        return
    _render_status(info)
    if "trials" in info:
        render_trials(info)


def _render_status(info: dict) -> None:
    from rich.table import Table

    console = make_console()
    table = Table(show_header=False, box=None)
    p = info["progress"]
    progress = "-" if p["step"] is None else (
        (f"stage {p['stage']}/{p['stages']} ({'own adapter' if p['stage'] == 1 else 'fusion'}), " if p.get("stages") else "")
        + f"epoch {p['epoch']}, step {p['step']}/{p['total_steps']}" + ("" if p["loss"] is None else f", loss {p['loss']:.4f}")
    )
    rows = [("job", info["job_id"]), ("task", info["task"]), ("status", info["status"]), ("progress", progress),
            ("attempts", str(info["attempts"])), ("worker", info["worker"] or "-"),
            ("created", info["created_at"]), ("finished", info["finished_at"] or "-")]
    for split, values in sorted(info.get("metrics", {}).items()):
        rows.append((split, ", ".join(f"{k} {v:.4f}" if k != "examples" else f"{int(v)} examples"
                                      for k, v in values.items())))
    if info.get("artifact"):
        a = info["artifact"]
        rows.append(("artifact", f"{a['uri']} ({a['bytes']:,} bytes, sha256 {a['sha256'][:12]})"))
    if info["error"]:
        rows.append(("error", info["error"]))
    for key, value in rows:
        table.add_row(key, plain(value))
    console.print(table)
    if info.get("warning"):
        warn(info["warning"])
