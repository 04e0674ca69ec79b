"""The real tasks of the benchmarks: discovery under a data folder, loading, and seeded caps.

A task is a folder holding `train.jsonl`, `validation.jsonl` and `test.jsonl` (see
../shared/data/README.md). Caps are seeded and stratified, so every class keeps its share.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The repository root."""
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data"
"""../shared/data relative to the repository root."""
SPLITS = ("train", "validation", "test")


def discover(data_dir: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """Task names under `data_dir` (folders with all three splits), sorted, or `names` checked.

    Raises:
        SystemExit: A named task is missing, or the folder holds no task.
    """
    root = Path(data_dir)
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and all((p / f"{s}.jsonl").is_file() for s in SPLITS)) \
        if root.is_dir() else []
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise SystemExit(f"error: no task {', '.join(missing)} under {root} (found: {', '.join(found) or 'none'})")
        return list(names)
    if not found:
        raise SystemExit(f"error: no task folders (train/validation/test.jsonl) under {root}")
    return found


def files(data_dir: str | Path, task: str) -> dict[str, Path]:
    """Split -> path of one task's files."""
    return {s: Path(data_dir) / task / f"{s}.jsonl" for s in SPLITS}


def stratified(examples: Sequence, n: int, seed: int) -> list:
    """A seeded, stratified subset of at most `n` examples, in their original order.

    Each class keeps its share (largest remainders), and at least one example when `n` allows.
    `n <= 0` or `n >= len(examples)` returns every example.
    """
    if n <= 0 or n >= len(examples):
        return list(examples)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_label[str(ex.label)].append(i)
    rng = random.Random(seed)
    quotas = {lab: n * len(idx) / len(examples) for lab, idx in by_label.items()}
    take = {lab: max(1, int(q)) for lab, q in quotas.items()}
    order = sorted(quotas, key=lambda lab: quotas[lab] - int(quotas[lab]), reverse=True)
    for lab in order:
        if sum(take.values()) >= n:
            break
        take[lab] += 1
    keep: set[int] = set()
    for lab in sorted(by_label):
        idx = list(by_label[lab])
        rng.shuffle(idx)
        keep.update(idx[: take[lab]])
    return [ex for i, ex in enumerate(examples) if i in keep]


def load(data_dir: str | Path, task: str, train_cap: int = 0, val_cap: int = 0, test_cap: int = 0, seed: int = 0):
    """Load and validate one task, then cap its splits (0 = uncapped), seeded and stratified.

    Returns:
        A `streamlearn.data.Dataset`.
    """
    from streamlearn.data import Dataset, load_dataset

    f = files(data_dir, task)
    ds = load_dataset(f["train"], f["validation"], f["test"], seed=seed)
    if train_cap:
        ds = ds.capped(train_cap, seed=seed)
    return Dataset(ds.train, stratified(ds.validation, val_cap, seed), stratified(ds.test, test_cap, seed),
                   ds.labels, dict(ds.files))


def write_files(ds, folder: Path) -> dict[str, Path]:
    """Write a (capped) dataset's splits as JSONL files, so every side of a comparison reads the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, examples in (("train", ds.train), ("validation", ds.validation), ("test", ds.test)):
        path = folder / f"{split}.jsonl"
        path.write_text("".join(json.dumps({"text": ex.text, "label": ex.label}) + "\n" for ex in examples), encoding="utf-8")
        out[split] = path
    return out
