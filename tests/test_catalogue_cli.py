"""`streamlearn tasks`, `storage` and `db upgrade` through click's CliRunner, with a tmp STREAMLEARN_HOME."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from catalogue_fixtures import finished_task, pg_database, pg_url  # noqa: F401
from click.testing import CliRunner

from streamlearn.catalogue.session import HEAD_REVISION, current_revision, reset_engines, resolve_url, session_scope
from streamlearn.cli import main
from streamlearn.settings import get_settings

STORAGE_FIELDS = {"backbone_params", "backbone_bytes", "tasks", "total_bytes", "full_copy_total_bytes", "ratio"}
TASK_FIELDS = {"task", "method", "bytes", "cumulative_bytes", "full_copy_cumulative_bytes", "theoretical_bytes"}


@pytest.fixture(autouse=True)
def _fresh_engines():
    """Close cached engines after each test so tmp databases are released."""
    yield
    reset_engines()


@pytest.fixture()
def three_tasks(isolated_home: Path) -> Path:
    """The isolated home's catalogue with three finished adapter tasks."""
    with session_scope() as s:
        finished_task(s, "sst2", bytes_=2_424_912, m=64, classes=2, val=0.9125, test=0.9)
        finished_task(s, "trec", bytes_=359_380, m=8, classes=3)
        finished_task(s, "agnews", bytes_=2_429_532, m=64, classes=5)
    return isolated_home


def _run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_tasks_on_a_fresh_home_is_friendly(isolated_home: Path) -> None:
    """On an empty home `tasks` creates the catalogue, says there are no tasks and how to add one, exit 0."""
    result = _run("tasks")
    assert result.exit_code == 0
    assert "No tasks" in result.output and "submit-task" in result.output
    assert (isolated_home / "catalogue.db").exists()
    assert json.loads(_run("tasks", "--json").output) == []


def test_tasks_lists_every_task(three_tasks: Path) -> None:
    """`tasks` renders one table row per task with method, m and accuracy; `--json` gives the same rows."""
    table = _run("tasks").output
    for text in ("sst2", "trec", "agnews", "adapter", "0.9125", "2,424,912", "all-MiniLM-L6-v2"):
        assert text in table
    rows = json.loads(_run("tasks", "--json").output)
    assert [(r["task"], r["adapter_size"], r["status"]) for r in rows] == [
        ("sst2", 64, "succeeded"), ("trec", 8, "succeeded"), ("agnews", 64, "succeeded")]


def test_tasks_shows_the_collapsed_flag_of_each_task(isolated_home: Path) -> None:
    """`tasks` shows collapsed yes/no from the test metrics row, `?` for a task recorded without the flag; --json the same."""
    with session_scope() as s:
        finished_task(s, "spam", bytes_=100, collapsed=True)
        finished_task(s, "mr", bytes_=100, collapsed=False)
        finished_task(s, "old", bytes_=100)
    rows = json.loads(_run("tasks", "--json").output)
    assert [(r["task"], r["collapsed"]) for r in rows] == [("spam", True), ("mr", False), ("old", None)]
    lines = {line.split()[1]: line for line in _run("tasks").output.splitlines() if line.strip().startswith("│")
             and line.split()[1] in ("spam", "mr", "old")}
    assert " yes " in lines["spam"] and " no " in lines["mr"] and " ? " in lines["old"]


def test_storage_json_has_the_documented_fields(three_tasks: Path) -> None:
    """`storage --json` carries the issue's fields with the 3-task numbers."""
    report = json.loads(_run("storage", "--json").output)
    assert STORAGE_FIELDS <= report.keys()
    assert all(TASK_FIELDS <= t.keys() for t in report["tasks"])
    assert (report["backbone_params"], report["total_bytes"], report["full_copy_total_bytes"]) == (
        22_713_216, 5_213_824, 272_558_592)
    assert report["tasks"][-1]["theoretical_bytes"] == 5_210_536


def test_storage_table_and_plot(three_tasks: Path, tmp_path: Path) -> None:
    """`storage --plot FILE` prints the table and summary and writes the PNG."""
    png = tmp_path / "storage.png"
    result = _run("storage", "--plot", str(png))
    assert result.exit_code == 0
    assert "5.21 MB" in result.output and "273 MB" in result.output and "52.3x less" in result.output
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_storage_on_an_empty_catalogue_writes_no_plot(isolated_home: Path, tmp_path: Path) -> None:
    """With no artifacts `storage --plot` explains there is nothing yet and writes no file."""
    png = tmp_path / "storage.png"
    result = _run("storage", "--plot", str(png))
    assert result.exit_code == 0 and "No stored artifacts yet" in result.output
    assert not png.exists()
    assert json.loads(_run("storage", "--json").output)["tasks"] == []


def test_db_upgrade_reports_the_revision(isolated_home: Path) -> None:
    """`db upgrade` creates the schema once, then says it is already at head."""
    first = _run("db", "upgrade")
    assert first.exit_code == 0 and f"upgraded from empty to revision {HEAD_REVISION}" in first.output
    assert f"already at revision {HEAD_REVISION}" in _run("db", "upgrade").output
    assert current_revision() == HEAD_REVISION


def test_db_upgrade_on_postgresql_masks_the_password(pg_url: str, isolated_home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Against PostgreSQL `db upgrade` works and prints the URL with its password masked."""
    url = pg_url.replace("://postgres@", "://postgres:s3cret@").replace("://root@", "://root:s3cret@")
    monkeypatch.setenv("STREAMLEARN_DATABASE_URL", url)
    get_settings.cache_clear()
    result = _run("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert "s3cret" not in result.output and ":***@" in result.output
    assert current_revision(resolve_url()) == HEAD_REVISION
    assert json.loads(_run("tasks", "--json").output) == []


def test_an_unreachable_database_is_one_line_and_exit_2(isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the catalogue does not answer, `tasks` prints one masked `error:` line and exits 2."""
    monkeypatch.setenv("STREAMLEARN_DATABASE_URL", "postgresql://u:hunter2@127.0.0.1:1/x?connect_timeout=2")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["tasks"])
    assert result.exit_code == 2
    assert result.output.startswith("error: catalogue") and "hunter2" not in result.output


def test_catalogue_modules_import_neither_torch_nor_matplotlib() -> None:
    """The catalogue, storage and catalogue CLI modules stay light, so `tasks` and `status` answer instantly."""
    code = ("import sys; import streamlearn.catalogue.queries, streamlearn.catalogue.records, "
            "streamlearn.catalogue.session, streamlearn.catalogue.evaluations, streamlearn.storage, "
            "streamlearn.cli.catalogue, streamlearn.cli.evaluation; "
            "print(sorted(m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_tasks_and_jobs_page_and_filter(three_tasks: Path) -> None:
    """`--limit` cuts and says how to get the next page, `--after` continues, `--name-like` and `--status` filter."""
    first = _run("tasks", "--limit", "2")
    assert first.exit_code == 0 and "Showing the first 2 tasks; next page: --after trec" in first.output
    rows = json.loads(_run("tasks", "--limit", "2", "--json").output)
    assert [r["task"] for r in rows] == ["sst2", "trec"]
    assert [r["task"] for r in json.loads(_run("tasks", "--after", "trec", "--json").output)] == ["agnews"]
    assert [r["task"] for r in json.loads(_run("tasks", "--name-like", "%t%", "--json").output)] == ["sst2", "trec"]
    assert json.loads(_run("tasks", "--status", "failed", "--json").output) == []
    assert len(json.loads(_run("tasks", "--status", "succeeded", "--all", "--json").output)) == 3
    jobs = json.loads(_run("jobs", "--json").output)
    assert [j["task"] for j in jobs] == ["agnews", "trec", "sst2"]  # newest first
    page = json.loads(_run("jobs", "--limit", "1", "--after", jobs[0]["job_id"][:8], "--json").output)
    assert [j["job_id"] for j in page] == [jobs[1]["job_id"]]
    assert [j["task"] for j in json.loads(_run("jobs", "--name-like", "ag%", "--json").output)] == ["agnews"]
    unknown = CliRunner().invoke(main, ["tasks", "--after", "nope"])
    assert unknown.exit_code == 2 and "no task 'nope' to page after" in unknown.output


def test_storage_limit_lists_some_tasks_and_sums_all(three_tasks: Path) -> None:
    """`storage --limit 1` lists one task while its totals (SQL sums) cover all three, as the full report does."""
    full = json.loads(_run("storage", "--all", "--json").output)
    cut = json.loads(_run("storage", "--limit", "1", "--json").output)
    assert [t["task"] for t in cut["tasks"]] == ["sst2"] and cut["tasks_shown"] == 1 and cut["task_count"] == 3
    for key in ("total_bytes", "full_copy_total_bytes", "theoretical_total_bytes", "ratio", "measured_over_theoretical"):
        assert cut[key] == full[key], key
    assert full["total_bytes"] == 2_424_912 + 359_380 + 2_429_532
