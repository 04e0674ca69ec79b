"""Service commands: worker, submit-task, status, jobs, evaluate, demo.

Thin like the rest of the CLI: parse, call one function, render. Nothing heavy is imported at
module level (no torch, no celery), so `status` and `jobs` answer instantly.
"""

from __future__ import annotations

import click

from streamlearn.cli import main

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
    workers_app = importlib.import_module("workers.app")
    click.echo(
        f"streamlearn worker: broker {mask_url(settings.broker_url)}, catalogue {mask_url(settings.database_url)}, "
        f"artifacts {settings.artifacts}, pool {pool} x{concurrency}",
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
