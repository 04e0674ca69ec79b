"""Build `streamlearn/demo_data/`: small stratified subsets of three real tasks for `streamlearn demo`.

Usage: python scripts/make_demo_data.py [DATA_ROOT]   (default ../shared/data relative to the repo)

Each split is sampled per label in proportion to the source split (largest remainder, at least one
example per label), with `random.Random(0)`, and the lines are kept byte-identical to the source.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

TASKS = ("sst2", "trec", "ag_news")
SIZES = {"train": 600, "validation": 200, "test": 200}
OUT = Path(__file__).resolve().parent.parent / "streamlearn" / "demo_data"


def stratified(lines: list[str], n: int, rng: random.Random) -> list[str]:
    """Sample `n` lines keeping each label's share (largest remainder, at least one per label)."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for line in lines:
        by_label[json.loads(line)["label"]].append(line)
    labels = sorted(by_label)
    exact = {lab: n * len(by_label[lab]) / len(lines) for lab in labels}
    quota = {lab: max(1, int(exact[lab])) for lab in labels}
    for lab in sorted(labels, key=lambda lab: exact[lab] - int(exact[lab]), reverse=True):
        if sum(quota.values()) >= n:
            break
        quota[lab] += 1
    picked = [line for lab in labels for line in rng.sample(by_label[lab], quota[lab])]
    rng.shuffle(picked)
    return picked


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "data"
    OUT.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        rng = random.Random(0)
        for split, n in SIZES.items():
            lines = (root / task / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
            name = f"{task}.jsonl" if split == "train" else f"{task}.{split}.jsonl"
            (OUT / name).write_text("".join(line + "\n" for line in stratified(lines, n, rng)), encoding="utf-8")
            print(f"{name}: {n} of {len(lines)} lines")


if __name__ == "__main__":
    main()
