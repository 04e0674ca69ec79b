"""The evaluation history behind the dashboard's heatmap, with a real worker on the tiny BERT.

`streamlearn evaluate` records every run; `evaluate --matrix --json` builds R[t, j], BWT and
forgetting from those rows; the demo evaluates after each task so its matrix is full.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from integration.service_helpers import catalogue_url, cli_json, ended, run_cli, task_files, wait_for

pytestmark = pytest.mark.integration


def test_evaluate_after_each_task_fills_the_matrix_with_zero_bwt_and_forgetting(service_env, workers, tmp_path):
    """Two tasks learned one after another, `evaluate --all` after each: R is full, BWT 0, forgetting 0, rows recorded."""
    workers.start(service_env)
    learned = []
    for i, name in enumerate(("first", "second")):
        sub = cli_json(service_env, "submit-task", *task_files(tmp_path / "data", name, seed=7 + i), "--epochs", "2",
                       "--lr", "1e-2")
        assert wait_for(service_env, sub["job_id"], ended, 120, workers, "an end")["status"] == "succeeded"
        learned.append(sub["job_id"])
        rows = cli_json(service_env, "evaluate", "--all")
        assert [r["drift"] for r in rows] == [0.0] * (i + 1)

    result = cli_json(service_env, "evaluate", "--matrix")
    tasks = {r["task"]: r for r in cli_json(service_env, "tasks")}
    test_acc = [tasks["first"]["test_accuracy"], tasks["second"]["test_accuracy"]]
    assert result["tasks"] == ["first", "second"]
    assert result["matrix"] == [[test_acc[0], None], [test_acc[0], test_acc[1]]]
    assert result["bwt"] == 0.0 and result["forgetting"] == 0.0

    db = sqlite3.connect(catalogue_url(service_env).removeprefix("sqlite:///"))
    stored = db.execute("SELECT t.name, e.job_id, e.artifact_sha256, e.source, e.split, e.examples, e.drift "
                        "FROM evaluations e JOIN tasks t ON t.id = e.task_id ORDER BY e.id").fetchall()
    db.close()
    sha = {name: tasks[name]["sha256"] for name in tasks}
    assert stored == [("first", learned[0], sha["first"], "cli", "test", 16, 0.0),
                      ("first", learned[0], sha["first"], "cli", "test", 16, 0.0),
                      ("second", learned[1], sha["second"], "cli", "test", 16, 0.0)]

    shown = run_cli(service_env, "evaluate", "--matrix")
    assert shown.returncode == 0, shown.stderr
    assert "BWT 0, forgetting 0" in shown.stdout


def test_demo_on_the_tiny_bert_evaluates_after_each_task_so_its_matrix_is_full(service_env, tmp_path):
    """`streamlearn demo` (tiny backbone, 1 epoch) records a run per learned task: 3x3 lower triangle, BWT 0, forgetting 0."""
    home = tmp_path / "demo-home"
    env = {**service_env, "STREAMLEARN_HOME": str(home)}
    demo = run_cli(env, "demo", "--home", str(home), "--epochs", "1", "--max-length", "16", timeout=400)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "accuracy matrix" in demo.stdout
    result = cli_json(env, "evaluate", "--matrix")
    assert result["tasks"] == ["sst2", "trec", "ag_news"]
    assert all(v is not None for t, row in enumerate(result["matrix"]) for v in row[: t + 1])
    assert all(v is None for t, row in enumerate(result["matrix"]) for v in row[t + 1:])
    assert result["bwt"] == 0.0 and result["forgetting"] == 0.0
    db = sqlite3.connect(Path(home) / "catalogue.db")
    runs = db.execute("SELECT count(DISTINCT run_id), count(*), min(source), max(source) FROM evaluations").fetchone()
    db.close()
    assert runs == (3, 6, "demo", "demo")
