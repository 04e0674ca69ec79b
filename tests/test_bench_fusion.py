"""Smoke test of bench/fusion.py on the tiny random BERT and three tiny tasks, so it cannot rot.

The script writes only into a tmp docs folder (`--docs-dir`) and a tmp work folder, never into the
repository's docs/.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import tiny_rows, write_jsonl

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def test_fusion_bench_runs_the_stream_writes_the_document_and_resumes(tiny_backbone_dir: str, tmp_path: Path,
                                                                       monkeypatch) -> None:
    """Three tiny tasks stream as adapter, fusion and fusion-r4 (plus top-1 on the last), FUSION.md is written, BWT is 0,
    and a rerun skips every finished job."""
    from bench import fusion

    for name in ("STREAMLEARN_HOME", "STREAMLEARN_BACKBONE"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # the bench sets them; restored after the test
    data_dir = tmp_path / "data"
    for name, seed in (("alpha", 10), ("beta", 20), ("gamma", 30)):
        (data_dir / name).mkdir(parents=True)
        for i, (split, n) in enumerate((("train", 32), ("validation", 8), ("test", 8))):
            write_jsonl(data_dir / name / f"{split}.jsonl", tiny_rows(n, seed + i))
    docs = tmp_path / "docs"
    argv = ["--data-dir", str(data_dir), "--backbone", tiny_backbone_dir, "--docs-dir", str(docs), "--work",
            str(tmp_path / "work"), "--tasks", "alpha", "beta", "gamma", "--caps", "32", "--seeds", "0", "--lr", "1e-2",
            "--epochs", "1", "--max-length", "32", "--adapter-size", "4", "--rank", "4", "--top", "1",
            "--timing-texts", "8", "--note", "a smoke test"]
    assert fusion.main(argv) == 0
    saved = json.loads((docs / "results" / "fusion.json").read_text())
    runs = {(r["task"], r["variant"]): r for r in saved["runs"]}
    assert set(runs) == {("alpha", "adapter"), ("beta", "adapter"), ("gamma", "adapter"), ("beta", "fusion"),
                         ("beta", "fusion-r4"), ("gamma", "fusion"), ("gamma", "fusion-r4"), ("gamma", "fusion-top1")}
    assert runs[("gamma", "fusion")]["sources"] == ["alpha", "beta"] and len(runs[("gamma", "fusion-top1")]["sources"]) == 1
    assert runs[("gamma", "fusion")]["stage1_test_accuracy"] == runs[("gamma", "adapter")]["test_accuracy"]
    assert [r["step"] for r in saved["rescores"]] == [0, 1, 2]
    assert all(row["drift"] == 0 for r in saved["rescores"] for row in r["rows"])
    assert [row["task"] for row in saved["timing"]["rows"]] == ["gamma", "gamma.fusion", "gamma.fusion-r4", "gamma.fusion-top1"]
    assert {h["task"] for h in saved["heatmaps"]} == {"beta", "gamma"} and (docs / "fusion-gamma.png").exists()
    text = (docs / "FUSION.md").read_text()
    for heading in ("## Train cap 32", "## Goal and forward transfer", "## Backward transfer", "## Inference cost",
                    "a smoke test", "Every planned job finished."):
        assert heading in text
    assert fusion.main(argv) == 0
    rerun = json.loads((docs / "results" / "fusion.json").read_text())
    assert [r["finished_at"] for r in rerun["runs"]] == [r["finished_at"] for r in saved["runs"]]
    assert "retrained_sources" not in rerun

    # Resumed in a fresh work folder, the stream re-trains the recorded sources its unfinished fused job needs.
    rerun["runs"] = [r for r in rerun["runs"] if (r["task"], r["variant"]) != ("gamma", "fusion")]
    rerun["rescores"] = [r for r in rerun["rescores"] if r["step"] != 2]
    (docs / "results" / "fusion.json").write_text(json.dumps(rerun))
    assert fusion.main([a if a != str(tmp_path / "work") else str(tmp_path / "fresh") for a in argv]) == 0
    resumed = json.loads((docs / "results" / "fusion.json").read_text())
    assert [(r["task"], r["test_accuracy"]) for r in resumed["retrained_sources"]] == [
        ("alpha", runs[("alpha", "adapter")]["test_accuracy"]), ("beta", runs[("beta", "adapter")]["test_accuracy"])]
    again = {(r["task"], r["variant"]): r for r in resumed["runs"]}
    assert set(again) == set(runs) and again[("gamma", "fusion")]["sources"] == ["alpha", "beta"]
    assert again[("alpha", "adapter")]["finished_at"] == runs[("alpha", "adapter")]["finished_at"]
    assert [r["step"] for r in resumed["rescores"]] == [0, 1, 2]
    assert "2 re-trained, 2 with the recorded test accuracy." in (docs / "FUSION.md").read_text()

    # A second process's share (another cap, no extras, its own docs folder) merges in; other settings are refused.
    docs2 = tmp_path / "docs2"
    argv2 = [a if a != str(docs) else str(docs2) for a in argv]
    argv2[argv2.index("--caps") + 1] = "16"
    assert fusion.main(argv2 + ["--no-extras"]) == 0
    second = json.loads((docs2 / "results" / "fusion.json").read_text())
    assert not second.get("timing") and not any(r["variant"] == "fusion-top1" for r in second["runs"])
    at = argv.index("--caps")
    merged_argv = argv[:at] + argv[at + 2:] + ["--report-only", "--merge", str(docs2 / "results" / "fusion.json")]
    assert fusion.main(merged_argv) == 0
    merged = json.loads((docs / "results" / "fusion.json").read_text())
    assert merged["settings"]["caps"] == [16, 32] and len(merged["runs"]) == len(saved["runs"]) + len(second["runs"])
    text = (docs / "FUSION.md").read_text()
    added = f"Merged in (`--merge`): {len(second['runs'])} runs at train caps 16 (seeds 0) of "
    assert "## Train cap 16" in text and "## Train cap 32" in text and added in text
    assert fusion.main(merged_argv) == 0  # merged again: nothing new, the part still says what it added
    assert added in (docs / "FUSION.md").read_text()
    assert len(json.loads((docs / "results" / "fusion.json").read_text())["runs"]) == len(merged["runs"])
    other = json.loads((docs2 / "results" / "fusion.json").read_text())
    other["settings"]["epochs"] = 2
    (docs2 / "results" / "fusion.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="other settings \\(epochs\\)"):
        fusion.main(merged_argv)

    # --layer-cost adds the side-by-side timing of the layer (here at d = 16) to the same record and document.
    monkeypatch.setattr(fusion, "LAYER_D", 16)
    at = argv.index("--caps")
    assert fusion.main(argv[:at] + argv[at + 2:] + ["--layer-cost"]) == 0
    saved = json.loads((docs / "results" / "fusion.json").read_text())
    rows = saved["layer_cost"]["rows"]
    assert [(r["rank"], r["sources"]) for r in rows] == [(0, 2), (0, 5), (0, 10), (4, 2), (4, 5), (4, 10)]
    assert all(r["max_abs_diff"] < 1e-4 and r["folded_s"] > 0 for r in rows) and len(saved["runs"]) == len(merged["runs"])
    assert "## The fusion layer's own cost" in (docs / "FUSION.md").read_text()

    # --fused splits a stream between processes: this one runs the adapters and the rank-4 fusion only.
    docs3 = tmp_path / "docs3"
    argv3 = [a if a != str(docs) else str(docs3) for a in argv]
    argv3[argv3.index("--caps") + 1] = "16"
    argv3[argv3.index("--work") + 1] = str(tmp_path / "work3")
    assert fusion.main(argv3 + ["--no-extras", "--fused", "fusion-r4"]) == 0
    third = json.loads((docs3 / "results" / "fusion.json").read_text())
    assert sorted({(r["task"], r["variant"]) for r in third["runs"]}) == [
        ("alpha", "adapter"), ("beta", "adapter"), ("beta", "fusion-r4"), ("gamma", "adapter"), ("gamma", "fusion-r4")]
    with pytest.raises(SystemExit, match="--fused: expected fusion or fusion-r4"):
        fusion.main(argv3 + ["--fused", "fusion-r8"])
