"""Evaluation history and the accuracy matrix R[t, j], BWT and forgetting built from it (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.config import Config
from catalogue_fixtures import db_url, finished_task, pg_database, pg_url, sqlite_url  # noqa: F401
from sqlalchemy import func, inspect, select, text, update

from streamlearn.catalogue import evaluations, models, session
from streamlearn.errors import UnknownTask

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def _learned(s, name: str, minutes: float) -> str:
    """A finished task whose artifact was recorded at T0 + `minutes`; returns its job id."""
    job_id = finished_task(s, name, bytes_=1000)
    s.execute(update(models.Artifact).where(models.Artifact.job_id == job_id).values(created_at=_at(minutes)))
    return job_id


def _score(task: str, job_id: str, accuracy: float, *, sha: str = "a" * 64, majority: float = 0.5,
           predicted: int = 2, examples: int = 20) -> dict:
    return {"task": task, "job_id": job_id, "sha256": sha, "split": "test", "examples": examples,
            "accuracy": accuracy, "macro_f1": accuracy, "catalogue_accuracy": accuracy, "drift": 0.0,
            "majority_accuracy": majority, "predicted_classes": predicted}


def _stream(s) -> dict[str, str]:
    """Three tasks learned at minutes 0, 10 and 20; returns name -> job id."""
    return {name: _learned(s, name, 10 * i) for i, name in enumerate(("a", "b", "c"))}


def test_matrix_places_each_run_in_the_window_of_the_last_task_learned_before_it(db_url: str) -> None:
    """A run read at minute 5 fills row a, at 15 row b, at 25 row c; BWT and forgetting follow the papers' formulas."""
    with session.session_scope(db_url) as s:
        ids = _stream(s)
        evaluations.record_run(s, [_score("a", ids["a"], 0.90)], source="cli", evaluated_at=_at(5))
        evaluations.record_run(s, [_score("a", ids["a"], 0.80), _score("b", ids["b"], 0.70)], source="cli",
                               evaluated_at=_at(15))
        evaluations.record_run(s, [_score(n, ids[n], v) for n, v in (("a", 0.85), ("b", 0.70), ("c", 0.60))],
                               source="demo", evaluated_at=_at(25))
    with session.session_scope(db_url, readonly=True) as s:
        result = evaluations.accuracy_matrix(s)
    assert result["tasks"] == ["a", "b", "c"]
    assert result["matrix"] == [[0.90, None, None], [0.80, 0.70, None], [0.85, 0.70, 0.60]]
    # BWT = mean(0.85 - 0.90, 0.70 - 0.70); forgetting = mean(max(0.90, 0.80) - 0.85, 0.70 - 0.70).
    assert result["bwt"] == pytest.approx(-0.025)
    assert result["forgetting"] == pytest.approx(0.025)
    assert result["average_accuracy"] == pytest.approx((0.85 + 0.70 + 0.60) / 3)
    assert result["learned_at"] == [_at(0).isoformat(), _at(10).isoformat(), _at(20).isoformat()]
    assert [r["source"] for r in result["latest"]] == ["demo", "demo", "demo"]


def test_latest_run_in_a_window_wins_and_other_artifacts_are_ignored(db_url: str) -> None:
    """Two runs in one window keep the later one; a row for another artifact sha256 of the task is left out."""
    with session.session_scope(db_url) as s:
        ids = _stream(s)
        evaluations.record_run(s, [_score("a", ids["a"], 0.50)], source="cli", evaluated_at=_at(1))
        evaluations.record_run(s, [_score("a", ids["a"], 0.75)], source="cli", evaluated_at=_at(2))
        evaluations.record_run(s, [_score("a", ids["a"], 0.10, sha="b" * 64)], source="cli", evaluated_at=_at(3))
    with session.session_scope(db_url, readonly=True) as s:
        result = evaluations.accuracy_matrix(s)
    assert result["matrix"][0] == [0.75, None, None]
    assert result["matrix"][1:] == [[None] * 3, [None] * 3]
    assert result["bwt"] is None and result["forgetting"] is None  # the last row is still empty


def test_identical_scores_after_every_task_give_zero_bwt_and_forgetting(db_url: str) -> None:
    """When every task scores the same in every later row (a frozen backbone), BWT and forgetting are exactly 0."""
    scores = {"a": 0.8125, "b": 0.6, "c": 0.95}
    with session.session_scope(db_url) as s:
        ids = _stream(s)
        for t, minute in enumerate((5, 15, 25)):
            names = list(scores)[: t + 1]
            evaluations.record_run(s, [_score(n, ids[n], scores[n]) for n in names], source="cli",
                                   evaluated_at=_at(minute))
    with session.session_scope(db_url, readonly=True) as s:
        result = evaluations.accuracy_matrix(s)
    assert result["bwt"] == 0.0 and result["forgetting"] == 0.0
    assert all(v is not None for t, row in enumerate(result["matrix"]) for v in row[: t + 1])


def test_a_run_equal_to_the_majority_class_or_of_one_label_is_collapsed(db_url: str) -> None:
    """Task a scored exactly its majority-class accuracy and b predicted one label: both are flagged, c is not."""
    with session.session_scope(db_url) as s:
        ids = _stream(s)
        evaluations.record_run(s, [_score("a", ids["a"], 0.6, majority=0.6), _score("b", ids["b"], 0.55, predicted=1),
                                   _score("c", ids["c"], 0.9)], source="cli", evaluated_at=_at(30))
    with session.session_scope(db_url, readonly=True) as s:
        result = evaluations.accuracy_matrix(s)
        rows = evaluations.history(s)
    assert result["collapsed"] == ["a", "b"]
    assert {r["task"]: r["collapsed"] for r in rows} == {"a": True, "b": True, "c": False}


def test_record_run_refuses_an_unknown_task_and_writes_nothing(db_url: str) -> None:
    """A run naming a task the catalogue lacks raises UnknownTask, and the transaction leaves no row."""
    with pytest.raises(UnknownTask, match="nope"):
        with session.session_scope(db_url) as s:
            ids = _stream(s)
            evaluations.record_run(s, [_score("a", ids["a"], 0.5), _score("nope", ids["a"], 0.5)], source="cli")
    with session.session_scope(db_url, readonly=True) as s:
        assert s.scalar(select(func.count()).select_from(models.Evaluation)) == 0


def test_record_run_stores_every_field_of_a_row(db_url: str) -> None:
    """The stored row has the run id, artifact sha256, split, accuracy, macro-F1, drift and the baseline."""
    with session.session_scope(db_url) as s:
        ids = _stream(s)
        run = evaluations.record_run(s, [_score("b", ids["b"], 0.7, majority=0.55, predicted=2)], source="http",
                                     evaluated_at=_at(12))
    with session.session_scope(db_url, readonly=True) as s:
        [row] = evaluations.history(s, "b")
    assert row == {"task": "b", "run_id": run, "job_id": ids["b"], "sha256": "a" * 64, "source": "http",
                   "split": "test", "examples": 20, "accuracy": 0.7, "macro_f1": 0.7, "catalogue_accuracy": 0.7,
                   "drift": 0.0, "majority_accuracy": 0.55, "predicted_classes": 2, "collapsed": False,
                   "evaluated_at": _at(12).isoformat()}


def test_migration_0004_upgrades_a_0001_catalogue_in_place(db_url: str) -> None:
    """A catalogue made at revision 0001 with a finished task upgrades to head, keeps the task and gains the table."""
    config = Config()
    config.set_main_option("script_location", str(session.migrations_dir()))
    engine = session.make_engine(session.resolve_url(db_url))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.execute(text("INSERT INTO tasks (name, created_at, dataset_sha256, files, rows, labels, text_field, "
                          "label_field) VALUES ('old', :at, :sha, '{}', '{}', '[\"x\", \"y\"]', 'text', 'label')"),
                     {"at": T0.replace(tzinfo=None), "sha": "0" * 64})
    engine.dispose()
    assert session.current_revision(db_url) == "0001"
    assert session.upgrade(db_url) == session.HEAD_REVISION
    with session.session_scope(db_url) as s:
        assert s.scalars(select(models.Task.name)).all() == ["old"]
        assert "evaluations" in inspect(s.connection()).get_table_names()
        job_id = finished_task(s, "new", bytes_=10)
        evaluations.record_run(s, [_score("new", job_id, 0.5)], source="cli")
    with session.session_scope(db_url, readonly=True) as s:
        assert [r["task"] for r in evaluations.history(s)] == ["new"]


def test_downgrading_0004_drops_only_the_evaluations_table(db_url: str) -> None:
    """Downgrading to 0001 removes the history and keeps every other table and its rows."""
    with session.session_scope(db_url) as s:
        _stream(s)
    config = Config()
    config.set_main_option("script_location", str(session.migrations_dir()))
    with session.get_engine(db_url).begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0001")
    with session.get_engine(db_url).connect() as conn:
        assert "evaluations" not in inspect(conn).get_table_names()
        assert conn.execute(text("SELECT count(*) FROM tasks")).scalar() == 3
