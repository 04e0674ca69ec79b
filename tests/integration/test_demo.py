"""The Quickstart's first command, `streamlearn demo`, run end to end as a user runs it (tiny BERT, shortened)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_rows, write_jsonl

pytestmark = pytest.mark.integration


def test_demo_trains_three_tasks_reports_them_and_stops_its_worker(tmp_path: Path, tiny_backbone_dir: str) -> None:
    """`streamlearn demo` on small copies of its three tasks: exit 0, three succeeded jobs and artifacts, plot, drift 0, worker gone."""
    data = tmp_path / "demo_data"
    data.mkdir()
    for i, task in enumerate(("sst2", "trec", "ag_news")):
        write_jsonl(data / f"{task}.jsonl", tiny_rows(40, 10 * i))
        write_jsonl(data / f"{task}.validation.jsonl", tiny_rows(10, 10 * i + 1))
        write_jsonl(data / f"{task}.test.jsonl", tiny_rows(10, 10 * i + 2))
    home = tmp_path / "demo-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    env.update(STREAMLEARN_BACKBONE=tiny_backbone_dir, STREAMLEARN_DEVICE="cpu", OMP_NUM_THREADS="1",
               STREAMLEARN_DATABASE_URL="sqlite:////nonexistent/ignored.db")  # the demo must ignore service settings
    proc = subprocess.run([sys.executable, "-m", "streamlearn", "demo", "--home", str(home), "--epochs", "1",
                           "--max-length", "16", "--data-dir", str(data)], env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())
    assert "largest drift 0 - no task was forgotten." in out
    assert "Demo finished in" in out and all(task in out for task in ("sst2", "trec", "ag_news"))

    with sqlite3.connect(home / "catalogue.db") as con:
        jobs = con.execute("SELECT t.name, j.status FROM jobs j JOIN tasks t ON t.id = j.task_id ORDER BY t.id").fetchall()
        artifacts = con.execute("SELECT count(*) FROM artifacts").fetchone()[0]
    assert jobs == [("sst2", "succeeded"), ("trec", "succeeded"), ("ag_news", "succeeded")]
    assert artifacts == 3
    stored = sorted(p.name for p in (home / "artifacts").rglob("*.safetensors"))
    assert len(stored) == 3
    assert (home / "storage.png").read_bytes()[:4] == b"\x89PNG"
    log = (home / "worker.log").read_text(errors="replace")
    assert log.count(": succeeded") >= 3
    assert not _workers_of(home), "the demo left its worker running"


def _workers_of(home: Path) -> list[int]:
    """Pids of live `streamlearn worker` processes whose STREAMLEARN_HOME is `home`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if b"worker" in cmdline and f"STREAMLEARN_HOME={home}".encode() in environ:
            found.append(int(proc.name))
    return found
