"""Smoke test of bench/multitask.py on the tiny random BERT and two tiny tasks, so it cannot rot.

The script writes only into a tmp docs folder (`--docs-dir`), never into the repository's docs/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import tiny_rows, write_jsonl

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def test_multitask_bench_runs_every_part_writes_the_document_and_resumes(tiny_backbone_dir: str, tmp_path: Path) -> None:
    """Every part runs on 2 tiny tasks (N = 0, 1), MULTITASK.md and the JSON are written, and a rerun skips done runs."""
    from bench import multitask

    data_dir = tmp_path / "data"
    for name, seed in (("alpha", 10), ("beta", 20)):
        for i, (split, n) in enumerate((("train", 32), ("validation", 8), ("test", 8))):
            (data_dir / name).mkdir(parents=True, exist_ok=True)
            write_jsonl(data_dir / name / f"{split}.jsonl", tiny_rows(n, seed + i))
    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    argv = ["--data-dir", str(data_dir), "--backbone", tiny_backbone_dir, "--docs-dir", str(docs), "--work",
            str(tmp_path / "work"), "--drops", "0,1", "--lr", "1e-2", "--epochs", "1", "--train-cap", "32",
            "--val-cap", "8", "--texts", "8", "--rows", "8", "--cache-cap", "32", "--cache-val-cap", "8",
            "--long-cap", "16", "--long-epochs", "2", "--max-length", "32"]
    assert multitask.main(argv) == 0
    saved = json.loads((docs / "results" / "multitask.json").read_text())
    runs = {(r["task"], r["drop"]): r for r in saved["accuracy"]}
    assert set(runs) == {(t, n) for t in ("alpha", "beta") for n in (0, 1)}
    assert [runs[("alpha", n)]["cached_layers"] for n in (0, 1)] == [0, 1]
    half = runs[("alpha", 0)]["stores"]
    assert half["float16"]["tensor_bytes"] * 2 == half["float32"]["tensor_bytes"]
    assert half["float16"]["bytes"] < half["float32"]["bytes"]
    assert set(saved["parallel"]["by_drop"]) == {"0", "1"}
    assert set(saved["mixed"]["sides"]) == {"mixed K=1", "mixed K=10", "switch K=10", "mixed K=50", "switch K=50"}
    assert [r["cache"]["cached_layers"] for r in saved["cache"]["runs"]] == [2, 2]  # N = min(3, L = 2)
    assert saved["provenance"]["commit"] and isinstance(saved["provenance"]["dirty"], bool)
    text = (docs / "MULTITASK.md").read_text()
    for heading in ("## AdapterDrop accuracy", "## Parallel", "## Mixed batches", "## Training from the cache",
                    "## Half-size artifacts"):
        assert heading in text
    again = multitask.main([*argv, "--parts", "accuracy"])
    assert again == 0
    rerun = json.loads((docs / "results" / "multitask.json").read_text())
    assert [r["finished_at"] for r in rerun["accuracy"]] == [r["finished_at"] for r in saved["accuracy"]]
