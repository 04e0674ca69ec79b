"""Smoke tests of the benchmark scripts on the tiny random BERT and two tiny tasks, so they cannot rot.

Each script writes only into a tmp docs folder (`--docs-dir`), never into the repository's docs/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import tiny_rows, write_jsonl

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@pytest.fixture()
def tiny_data_dir(tmp_path: Path) -> Path:
    """Two tiny two-class tasks, `alpha` and `beta`, laid out like ../shared/data."""
    root = tmp_path / "data"
    for name, seed in (("alpha", 10), ("beta", 20)):
        folder = root / name
        folder.mkdir(parents=True)
        for i, (split, n) in enumerate((("train", 48), ("validation", 12), ("test", 12))):
            write_jsonl(folder / f"{split}.jsonl", tiny_rows(n, seed + i))
    return root


def test_paper_table_writes_results_figure_and_resumes(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """paper_table runs 4 methods on 2 tasks, writes RESULTS.md, the JSON and the PNG, and skips done runs on a rerun."""
    from bench import paper_table

    docs = tmp_path / "docs"
    argv = ["--data-dir", str(tiny_data_dir), "--backbone", tiny_backbone_dir, "--device", "cpu",
            "--docs-dir", str(docs), "--epochs", "1", "--train-cap", "32", "--val-cap", "8"]
    data = paper_table.main(argv)
    assert {(r["task"], r["method"]) for r in data["runs"]} == {
        (t, m) for t in ("alpha", "beta") for m in ("adapter", "full", "top-k", "layernorm")}
    for run in data["runs"]:
        assert run["examples"] == {"train": 32, "validation": 8, "test": 12}
        assert run["tensors_match"], (run["task"], run["method"], run["tensors_mismatch"])
        assert run["bytes"] == run["stored_params"] * 4 + run["header_bytes"]
    results = (docs / "RESULTS.md").read_text()
    assert results.startswith("# Results") and "python -m bench.paper_table" in results
    assert "adapter ÷ full" in results and "No GPU" in results
    assert (docs / "paper_figure.png").stat().st_size > 10_000
    saved = json.loads((docs / "results" / "paper_table.json").read_text())
    assert len(saved["runs"]) == 8

    again = paper_table.main(argv)
    assert [r["finished_at"] for r in again["runs"]] == [r["finished_at"] for r in data["runs"]]


def test_paper_table_refuses_to_mix_settings(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """A rerun with another train cap refuses to mix its runs with the stored ones unless --restart."""
    from bench import paper_table

    docs = tmp_path / "docs"
    base = ["--data-dir", str(tiny_data_dir), "--backbone", tiny_backbone_dir, "--device", "cpu", "--docs-dir", str(docs),
            "--epochs", "1", "--tasks", "alpha", "--methods", "layernorm", "--val-cap", "8"]
    paper_table.main(base + ["--train-cap", "16"])
    with pytest.raises(SystemExit, match="other settings"):
        paper_table.main(base + ["--train-cap", "24"])
    data = paper_table.main(base + ["--train-cap", "24", "--restart"])
    assert [r["examples"]["train"] for r in data["runs"]] == [24]


def test_paper_table_lr_check_picks_one_lr_per_method(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """--lr-check sweeps the grid on one task, then every other task runs only the chosen lr."""
    from bench import paper_table

    docs = tmp_path / "docs"
    data = paper_table.main(["--data-dir", str(tiny_data_dir), "--backbone", tiny_backbone_dir, "--device", "cpu",
                             "--docs-dir", str(docs), "--epochs", "1", "--methods", "adapter", "--lr-check", "alpha",
                             "--lr-grid", "adapter=1e-3,3e-3"])
    alpha = sorted(r["lr"] for r in data["runs"] if r["task"] == "alpha")
    beta = [r["lr"] for r in data["runs"] if r["task"] == "beta"]
    assert alpha == [1e-3, 3e-3]
    assert beta == [data["lr_check"]["chosen"]["adapter"]]
    assert "Learning-rate check on `alpha`" in (docs / "RESULTS.md").read_text()


def test_stratified_cap_keeps_class_shares() -> None:
    """The eval cap keeps every class and its share, and is seeded."""
    from bench.tasks import stratified
    from streamlearn.data import Example

    examples = [Example(f"t{i}", "a" if i % 4 else "b") for i in range(400)]
    picked = stratified(examples, 40, seed=0)
    assert len(picked) == 40
    assert sum(ex.label == "b" for ex in picked) == 10
    assert picked == stratified(examples, 40, seed=0)
    assert stratified(examples, 0, seed=0) == examples


def test_speed_engine_sections_write_speed_md(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """speed.py measures the training, inference and speed-up ratios interleaved and writes SPEED.md."""
    from bench import speed

    docs = tmp_path / "docs"
    data = speed.main(["--data-dir", str(tiny_data_dir), "--task", "alpha", "--backbone", tiny_backbone_dir,
                       "--device", "cpu", "--docs-dir", str(docs), "--sections", "train", "inference", "speedups",
                       "--repeats", "2", "--train-examples", "32", "--infer-examples", "12"])
    train = data["sections"]["train"]
    assert len(train["values"]["adapter"]) == len(train["values"]["full"]) == 2
    assert train["ratio_of_medians"] == pytest.approx(train["median"]["adapter"] / train["median"]["full"])
    text = (docs / "SPEED.md").read_text()
    assert "python -m bench.speed" in text and "adapter ÷ full" in text and "bucketing" in text
    assert json.loads((docs / "results" / "speed.json").read_text())["sections"].keys() >= {"train", "inference", "speedups"}


@pytest.mark.slow
def test_stream_fills_the_matrix_with_zero_forgetting(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """stream.py runs two tasks through a real worker; R is lower-triangular, BWT and forgetting are exactly 0."""
    from bench import stream

    docs = tmp_path / "docs"
    data = stream.main(["--data-dir", str(tiny_data_dir), "--backbone", tiny_backbone_dir, "--device", "cpu",
                        "--docs-dir", str(docs), "--epochs", "1"])
    assert [sorted(row) for row in data["rows"]] == [["alpha"], ["alpha", "beta"]]
    m = stream.metrics(data["tasks"], data["rows"])
    assert m["bwt"] == 0 and m["forgetting"] == 0
    assert data["storage"]["task_count"] == 2
    text = (docs / "STREAM.md").read_text()
    assert "python -m bench.stream" in text and "R[t, j]" in text
    assert (docs / "stream_storage.png").stat().st_size > 10_000


def test_stream_metrics_detect_forgetting() -> None:
    """BWT and forgetting are computed from the matrix: a drop on an old task shows up in both."""
    from bench.stream import metrics

    rows = [{"a": 0.8}, {"a": 0.8, "b": 0.9}, {"a": 0.7, "b": 0.9, "c": 0.6}]
    m = metrics(["a", "b", "c"], rows)
    assert m["bwt"] == pytest.approx(-0.05)
    assert m["forgetting"] == pytest.approx(0.05)
    assert m["average_accuracy"] == pytest.approx((0.7 + 0.9 + 0.6) / 3)


@pytest.mark.slow
def test_speed_service_sections_time_a_warm_worker(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """speed.py times submit->succeeded against in-process on a warm embedded worker, and a fresh worker's two jobs."""
    from bench import speed

    docs = tmp_path / "docs"
    data = speed.main(["--data-dir", str(tiny_data_dir), "--task", "alpha", "--backbone", tiny_backbone_dir,
                       "--device", "cpu", "--docs-dir", str(docs), "--sections", "service", "cli", "residency",
                       "--repeats", "1", "--service-train-cap", "16", "--service-eval-cap", "8", "--redis-url", ""])
    embedded = data["sections"]["service"]["embedded"]
    assert embedded["median"]["service"] > 0 and embedded["median"]["in_process"] > 0
    residency = data["sections"]["residency"]
    assert residency["second"]["run_seconds"] is not None
    cli = data["sections"]["cli"]
    assert cli["median"]["cli"] > cli["part_medians"]["worker_run"] > 0
    for part in cli["parts"]:
        assert set(part) == {"cli_startup", "submission", "queue_wait", "worker_run", "seen_by_client"}
        assert min(part.values()) >= 0
    text = (docs / "SPEED.md").read_text()
    assert "Service overhead a user sees" in text and "Worker-side part" in text


def test_paper_table_task_lrs_keeps_the_better_rate_per_task(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """--task-lrs 2 runs the check's two best rates on every task and reports the better one on validation."""
    from bench import paper_table

    docs = tmp_path / "docs"
    data = paper_table.main(["--data-dir", str(tiny_data_dir), "--backbone", tiny_backbone_dir, "--device", "cpu",
                             "--docs-dir", str(docs), "--epochs", "1", "--methods", "layernorm", "--lr-check", "alpha",
                             "--lr-grid", "layernorm=1e-3,3e-3,1e-2", "--task-lrs", "2"])
    kept = data["lr_check"]["per_task"]["layernorm"]
    assert len(kept) == 2 and kept[0] == data["lr_check"]["chosen"]["layernorm"]
    assert sorted(r["lr"] for r in data["runs"] if r["task"] == "beta") == sorted(kept)
    from bench import paper_report

    beta = paper_report.table_rows(data)[("beta", "layernorm")]
    best = max((r for r in data["runs"] if r["task"] == "beta"), key=lambda r: (r["val_accuracy"], -r["lr"]))
    assert beta["lr"] == best["lr"]


def test_paper_table_repeat_seeds_run_only_the_selected_rate(tiny_data_dir: Path, tiny_backbone_dir: str, tmp_path: Path) -> None:
    """--repeat-seeds runs each extra seed once per (task, method), at the rate seed 0 chose on validation, and records provenance."""
    from bench import paper_report, paper_table

    docs = tmp_path / "docs"
    argv = ["--data-dir", str(tiny_data_dir), "--backbone", tiny_backbone_dir, "--device", "cpu", "--docs-dir", str(docs),
            "--epochs", "1", "--methods", "adapter", "full", "--lr-check", "alpha", "--lr-grid", "adapter=3e-3,1e-2",
            "--lr-grid", "full=1e-3,3e-3", "--task-lrs", "2", "--repeat-seeds", "1,2"]
    data = paper_table.main(argv)
    for task in ("alpha", "beta"):
        for method in ("adapter", "full"):
            runs = [r for r in data["runs"] if (r["task"], r["method"]) == (task, method)]
            chosen = paper_table.selected_lr(runs, data["lr_check"]["per_task"][method], selection_seed=0)
            assert sorted((r["seed"], r["lr"]) for r in runs if r["seed"] > 0) == [(1, chosen), (2, chosen)]
            assert paper_report.table_rows(data)[(task, method)]["seeds"] == [0, 1, 2]
    assert all(r["tensors_match"] and "git_commit" in r and isinstance(r["collapsed"], bool) for r in data["runs"])
    assert data["plan"]["repeat_seeds"] == {"adapter": [1, 2], "full": [1, 2]}
