"""The catalogue at 100,000 tasks: how long the read commands take on PostgreSQL, and how many bytes a task's rows hold.

    python -m bench.catalogue                          # K = 1,000, 10,000 and 100,000 on the local PostgreSQL
    python -m bench.catalogue --sizes 1000 --repeats 3 # a quick run
    python -m bench.catalogue --report-only            # rebuild docs/CATALOGUE.md from the JSON

For each K a fresh PostgreSQL database is created, brought to the head revision by the project's
migrations, and filled in bulk by `populate` (server-side `generate_series`, a few statements
whatever K): one backbone; K tasks; 2K jobs (per task an older failed job and a newer succeeded
one, except that the last 20 tasks' newer job is running with a fresh heartbeat and the 10 before
them are queued); one artifact and six metric rows per succeeded job. The rows are synthetic but
shaped like the service's own (the same JSON hyperparameters, the per-task artifact size measured
in docs/results/stream.json).

Then each read the CLI makes is timed in-process (the function the command calls, in its own
read-only session; median and max of `--repeats` runs after one warm-up; the SQL statement count
from a `before_cursor_execute` listener): `tasks --limit 50`, a page in the middle (`--after`),
`--status running`, `--status failed` (no task's latest job failed: the worst case), `--name-like`, `jobs --limit 50`, `jobs --status queued`, `storage --json`
(totals by SQL sums, the first 1,000 tasks listed), `status JOB` (full id and 8-character prefix),
and one `reconcile()` pass. The bytes per row are `pg_total_relation_size` (heap + indexes +
TOAST) of each table divided by its rows. Writes `docs/CATALOGUE.md` and `docs/results/catalogue.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from bench import machine as machine_info

PG_ADMIN_URL = os.environ.get("STREAMLEARN_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
"""A PostgreSQL role allowed to create and drop databases (the tests' variable)."""

ARTIFACT_BYTES = 2433384
"""Bytes of one task's artifact: task 1 of docs/results/stream.json (all-MiniLM-L6-v2, m = 64)."""

GOAL_SECONDS = 0.5
"""Each read should answer within this at K = 100,000 (the target the catalogue is designed for)."""

HYPERPARAMETERS = {
    "method": {"method": "adapter", "adapter_size": 64, "top_k": 1, "sigma": 0.01, "pooling": "mean"},
    "train": {"epochs": 3, "lr": 0.001, "batch_size": 32, "max_length": 128, "seed": 0, "warmup": 0.1,
              "weight_decay": 0.0, "max_grad_norm": 1.0},
    "data": {"max_classes": 1000, "max_line_bytes": 1048576},
}
"""The hyperparameters JSON of a default `submit-task` (what every synthetic job carries)."""


def populate(url: str, count: int, start: int = 0) -> None:
    """Add tasks `start+1 .. start+count` (and their jobs, artifacts, metrics) in bulk to a PostgreSQL catalogue.

    Args:
        url: SQLAlchemy URL of a catalogue at the head revision.
        count: Tasks to add.
        start: Tasks already there (their numbering continues).
    """
    from sqlalchemy import create_engine, text

    lo, hi = start + 1, start + count
    params = {"lo": lo, "hi": hi, "hp": json.dumps(HYPERPARAMETERS), "bytes": ARTIFACT_BYTES,
              "running_from": hi - 19, "queued_from": hi - 29}
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO backbones (id, name, path, fingerprint, layers, hidden, params, bytes, created_at) "
            "VALUES (1, 'all-MiniLM-L6-v2', '/packaged', repeat('a', 64), 6, 384, 22713216, 90852864, now()) "
            "ON CONFLICT (id) DO NOTHING"))
        conn.execute(text(
            "INSERT INTO tasks (id, name, created_at, dataset_sha256, files, rows, labels, text_field, label_field, "
            "latest_job_id, latest_status) "
            "SELECT g, 'task-' || lpad(g::text, 6, '0'), timestamptz '2026-01-01' + g * interval '1 second', "
            "md5('t' || g) || md5('u' || g), "
            "json_build_object('train', md5('t' || g) || md5('u' || g), 'test', md5('v' || g) || md5('w' || g)), "
            "json_build_object('train', 6000, 'validation', 600, 'test', 1000), '[\"neg\", \"pos\"]'::json, 'text', 'label', "
            "md5('b' || g)::uuid::text, "
            "CASE WHEN g >= CAST(:running_from AS integer) THEN 'running' WHEN g >= CAST(:queued_from AS integer) THEN 'queued' ELSE 'succeeded' END "
            "FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g"), params)
        # Per task: job 'a' (failed, older) and job 'b' (succeeded; running or queued for the last tasks).
        conn.execute(text(
            "INSERT INTO jobs (id, task_id, kind, method, hyperparameters, spec_sha256, status, epoch, step, "
            "total_steps, loss, error, attempts, worker_host, worker_pid, heartbeat_at, chosen, created_at, "
            "enqueued_at, started_at, finished_at) "
            "SELECT md5('a' || g)::uuid::text, g, 'train', 'adapter', CAST(:hp AS json), md5('s' || g) || md5('r' || g), "
            "'failed', 1, 10, 564, 0.69, 'gave up after 6 retries: object store unavailable', 0, 'worker-1', 4242, "
            "timestamptz '2026-01-01' + g * interval '1 second', false, timestamptz '2026-01-01' + g * interval '1 second', "
            "timestamptz '2026-01-01' + g * interval '1 second', timestamptz '2026-01-01' + g * interval '1 second', "
            "timestamptz '2026-01-01' + g * interval '1 second' + interval '5 minutes' "
            "FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g"), params)
        conn.execute(text(
            "INSERT INTO jobs (id, task_id, kind, method, hyperparameters, spec_sha256, status, epoch, step, "
            "total_steps, loss, error, attempts, worker_host, worker_pid, heartbeat_at, chosen, created_at, "
            "enqueued_at, started_at, finished_at) "
            "SELECT md5('b' || g)::uuid::text, g, 'train', 'adapter', CAST(:hp AS json), md5('s' || g) || md5('q' || g), "
            "CASE WHEN g >= CAST(:running_from AS integer) THEN 'running' WHEN g >= CAST(:queued_from AS integer) THEN 'queued' ELSE 'succeeded' END, "
            "3, 564, 564, 0.21, NULL, 0, 'worker-1', 4242, "
            "CASE WHEN g >= CAST(:running_from AS integer) THEN now() ELSE timestamptz '2026-01-01' + g * interval '1 second' END, false, "
            "timestamptz '2026-01-01' + g * interval '1 second' + interval '10 minutes', "
            "CASE WHEN g >= CAST(:queued_from AS integer) THEN now() ELSE timestamptz '2026-01-01' + g * interval '1 second' END, "
            "timestamptz '2026-01-01' + g * interval '1 second' + interval '11 minutes', "
            "CASE WHEN g >= CAST(:queued_from AS integer) THEN NULL ELSE timestamptz '2026-01-01' + g * interval '1 second' + interval '40 minutes' END "
            "FROM generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) g"), params)
        conn.execute(text(
            "INSERT INTO artifacts (job_id, backbone_id, uri, sha256, bytes, trainable_params, stored_params, method, "
            "adapter_size, classes, created_at, task_id, visible, drop_layers, store_dtype, fusion_rank, current) "
            "SELECT md5('b' || g)::uuid::text, 1, 'tasks/task-' || lpad(g::text, 6, '0') || '/' || md5('b' || g)::uuid::text "
            "|| '.safetensors', md5('x' || g) || md5('y' || g), :bytes, 608354, 608354, 'adapter', 64, 2, now(), g, true, 0, "
            "'float32', 0, true "
            "FROM generate_series(CAST(:lo AS integer), CAST(:queued_from AS integer) - 1) g"), params)
        conn.execute(text(
            "INSERT INTO metrics (job_id, split, name, value) "
            "SELECT md5('b' || g)::uuid::text, s.split, n.name, CASE n.name WHEN 'examples' THEN 600 ELSE 0.9 END "
            "FROM generate_series(CAST(:lo AS integer), CAST(:queued_from AS integer) - 1) g, (VALUES ('validation'), ('test')) s(split), "
            "(VALUES ('accuracy'), ('macro_f1'), ('examples')) n(name)"), params)
        for table in ("tasks", "artifacts", "metrics"):
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
        conn.execute(text("ANALYZE"))
    engine.dispose()


def freshen(url: str) -> None:
    """Give the running jobs a fresh heartbeat and the queued ones a fresh enqueue time, as live
    workers and a recent submission would, so a reconcile pass measures the check, not requeues."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET heartbeat_at = now() WHERE status = 'running'"))
        conn.execute(text("UPDATE jobs SET enqueued_at = now() WHERE status = 'queued'"))
    engine.dispose()


@contextmanager
def counted(engine):
    """Count the SQL statements an engine executes inside the block: yields a one-item list."""
    from sqlalchemy import event

    seen = [0]

    def on_execute(*_args, **_kwargs) -> None:
        seen[0] += 1

    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


def reads(count: int) -> dict:
    """The reads the CLI makes, each a function of a session (reconcile opens its own)."""
    from streamlearn.catalogue import queries

    middle = f"task-{count // 2:06d}"
    job = str(uuid.UUID(hashlib.md5(f"b{count // 2}".encode()).hexdigest()))  # PostgreSQL's md5('b' || g)::uuid
    return {
        "tasks --limit 50": lambda s: queries.task_table(s, limit=50),
        "tasks --limit 50 --after (middle)": lambda s: queries.task_table(s, limit=50, after=middle),
        "tasks --status running --limit 50": lambda s: queries.task_table(s, limit=50, status="running"),
        "tasks --status failed --limit 50 (none match)": lambda s: queries.task_table(s, limit=50, status="failed"),
        "tasks --name-like 'task-0001%' --limit 50": lambda s: queries.task_table(s, limit=50, name_like="task-0001%"),
        "jobs --limit 50": lambda s: queries.list_jobs(s, limit=50),
        "jobs --status queued --limit 50": lambda s: queries.list_jobs(s, "queued", limit=50),
        "storage --json": lambda s: queries.storage_report(s, limit=1000),
        "status JOB": lambda s: queries.job_status(s, job),
        "status JOB-PREFIX (8 hex)": lambda s: queries.job_status(s, job[:8]),
        "reconcile (one pass)": None,
    }


def measure(url: str, count: int, repeats: int) -> dict:
    """Time every read (and count its statements) on a populated catalogue."""
    from streamlearn import recovery
    from streamlearn.catalogue.session import get_engine, session_scope
    from streamlearn.settings import get_settings

    os.environ["STREAMLEARN_DATABASE_URL"] = url
    os.environ.setdefault("STREAMLEARN_HOME", tempfile.mkdtemp(prefix="bench-catalogue-"))
    get_settings.cache_clear()
    engine = get_engine(url)
    out = {}
    for name, fn in reads(count).items():
        times, statements = [], None
        for i in range(repeats + 1):
            with counted(engine) as seen:
                start = time.perf_counter()
                if fn is None:
                    recovery.reconcile()
                else:
                    with session_scope(url, readonly=True) as s:
                        fn(s)
                elapsed = time.perf_counter() - start
            statements = seen[0]
            if i:  # the first run warms the connection pool and PostgreSQL's caches
                times.append(elapsed)
        out[name] = {"median_s": statistics.median(times), "max_s": max(times), "statements": statements}
    return out


def row_bytes(url: str) -> dict:
    """`pg_total_relation_size` and row count of every catalogue table."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect() as conn:
        sizes = {t: {"bytes": conn.execute(text(f"SELECT pg_total_relation_size('{t}')")).scalar_one(),
                     "rows": conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()}
                 for t in ("tasks", "jobs", "artifacts", "metrics", "backbones")}
    engine.dispose()
    return sizes


@contextmanager
def database():
    """A fresh PostgreSQL database at the head revision (URL), dropped afterwards."""
    import psycopg

    from streamlearn.catalogue.session import reset_engines, upgrade

    name = f"streamlearn_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        reset_engines()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(sizes: list[int], repeats: int) -> dict:
    """Measure every size in its own database."""
    tree = machine_info.provenance()  # before the run: the code that produced the numbers
    results = []
    for count in sizes:
        with database() as url:
            start = time.perf_counter()
            populate(url, count)
            fill = time.perf_counter() - start
            freshen(url)
            results.append({"tasks": count, "populate_s": fill, "reads": measure(url, count, repeats),
                            "tables": row_bytes(url)})
        print(f"K = {count:,}: filled in {fill:.1f} s", flush=True)
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_ADMIN_URL)
    with engine.connect() as conn:
        server = conn.execute(text("SHOW server_version")).scalar_one()
    engine.dispose()
    return {"sizes": results, "repeats": repeats, "postgresql": server, "goal_s": GOAL_SECONDS,
            "artifact_bytes": ARTIFACT_BYTES, "machine": {"cpu": machine_info.cpu_model(), "cores": os.cpu_count(),
                                                          **tree},
            "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def render(data: dict) -> str:
    """docs/CATALOGUE.md from the JSON."""
    sizes = data["sizes"]
    mach = data["machine"]
    lines = ["# The catalogue at 100,000 tasks", "",
             "Generated by `python -m bench.catalogue` "
             f"(`--sizes {' '.join(str(s['tasks']) for s in sizes)} --repeats {data['repeats']}`); "
             f"{data['updated_at']}.", "",
             *machine_info.dirty_warning(mach),
             f"Machine: {mach['cores']}-core {mach['cpu']}, PostgreSQL {data['postgresql']} on the same machine "
             f"(shared with other users' jobs while it ran); {machine_info.tree(mach)}.", "",
             "Each K is a fresh database at the head revision, filled in bulk with synthetic rows shaped like the "
             "service's (per task: one failed and one succeeded job, one artifact row, six metric rows; the last 20 "
             "tasks running, the 10 before them queued). Each read is the function its command calls, in its own "
             f"read-only session: median (max) seconds of {data['repeats']} runs after a warm-up, and the SQL "
             "statements it executed (counted by a `before_cursor_execute` listener). The CLI's own start "
             "(Python imports, about 0.3-1 s on this machine) is not included: it does not grow with K.", ""]
    header = "| read | " + " | ".join(f"K = {s['tasks']:,}" for s in sizes) + " | statements |"
    lines += [header, "|---|" + "---:|" * len(sizes) + "---:|"]
    for name in sizes[0]["reads"]:
        cells = [f"{s['reads'][name]['median_s']:.3f} ({s['reads'][name]['max_s']:.3f})" for s in sizes]
        counts = sorted({s["reads"][name]["statements"] for s in sizes})
        lines.append(f"| `{name}` | " + " | ".join(cells) + f" | {', '.join(map(str, counts))} |")
    big = max(sizes, key=lambda s: s["tasks"])
    slow = [n for n, r in big["reads"].items() if r["median_s"] >= data["goal_s"]]
    lines += ["", f"At K = {big['tasks']:,}: " + (
        f"every read's median is under the {data['goal_s']} s goal." if not slow else
        f"over the {data['goal_s']} s goal: {', '.join(f'`{n}`' for n in slow)}."), ""]
    lines += ["## Bytes per row (PostgreSQL, `pg_total_relation_size` / rows: heap, indexes and TOAST)", "",
              "| table | rows | total bytes | bytes per row |", "|---|---:|---:|---:|"]
    for table, t in big["tables"].items():
        per = t["bytes"] / t["rows"] if t["rows"] else 0
        lines.append(f"| {table} | {t['rows']:,} | {t['bytes']:,} | {per:,.0f} |")
    per_task = sum(t["bytes"] for t in big["tables"].values()) / big["tasks"]
    lines += ["", f"All tables together: **{per_task:,.0f} bytes per task** at K = {big['tasks']:,} "
                  "(2 jobs, 1 artifact, 6 metrics each). `docs/CAPACITY.md` builds on this figure.", "",
              "Bulk fill times: " + ", ".join(f"K = {s['tasks']:,} in {s['populate_s']:.1f} s" for s in sizes) + ".", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.catalogue", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="Values of K (tasks).")
    p.add_argument("--repeats", type=int, default=5, help="Timed runs per read (after one warm-up).")
    p.add_argument("--docs-dir", default=str(Path(__file__).resolve().parents[1] / "docs"), help="Where to write.")
    p.add_argument("--report-only", action="store_true", help="Rebuild the Markdown from the JSON.")
    args = p.parse_args(argv)
    docs = Path(args.docs_dir)
    out = docs / "results" / "catalogue.json"
    if args.report_only:
        data = json.loads(out.read_text())
    else:
        data = run(sorted(args.sizes), args.repeats)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(data, indent=2) + "\n")
    (docs / "CATALOGUE.md").write_text(render(data))
    print(f"wrote {docs / 'CATALOGUE.md'} and {out}")


if __name__ == "__main__":
    main()
