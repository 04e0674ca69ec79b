"""Many tasks on one backbone: AdapterDrop accuracy, Parallel, mixed batches, the training cache, half-size artifacts.

    python -m bench.multitask --threads 1                 # every part, every task of ../shared/data
    python -m bench.multitask --until 07:30               # stop starting accuracy runs at 07:30 UTC
    python -m bench.multitask --report-only               # rebuild docs/MULTITASK.md from the JSON

Parts (all in one process, on one resident backbone, so every ratio is measured side by side):
- accuracy: per task, adapters with AdapterDrop N = 0..3 (Rücklé et al. 2021, arXiv:2010.11918),
  trained with the protocol of `bench/paper_table.py` (caps, max length, epochs, seed, and each
  task's adapter learning rate as chosen in docs/results/paper_table.json); test accuracy through
  the engine from the stored artifact; the N = 0 artifact is also stored as float16 and bfloat16
  (`--store-dtype`: cast once after training) and evaluated the same way.
- parallel: K tasks on the same texts, one `Engine.classify` call vs K single-task calls, for each N.
- mixed: rows of K = 1, 10, 50 tasks in the same batches (`Engine.logits`) vs switching adapters
  between batches (every batch holds one task's rows), S-LoRA's PEFT baseline (Sheng et al. 2023).
- cache: training time with N = 3 and the lower-layer cache vs N = 0.

Resumable: every finished accuracy run is written to `<docs-dir>/results/multitask.json` at once and
skipped when found again under the same settings. Writes `<docs-dir>/MULTITASK.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import machine as machine_info
from bench import tasks as task_data
from bench.multitask_report import render

SETTING_KEYS = ("train_cap", "val_cap", "max_length", "epochs", "batch_size", "adapter_size", "seed", "drops",
                "backbone_fingerprint")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.multitask", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(task_data.DEFAULT_DATA_DIR), help="Folder of task folders (default: ../shared/data).")
    p.add_argument("--tasks", nargs="+", help="Accuracy tasks, in the order they run (default: every task).")
    p.add_argument("--train-cap", type=int, default=1000, help="Train examples per task (seeded, stratified).")
    p.add_argument("--val-cap", type=int, default=500, help="Validation examples per task (stratified).")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--adapter-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drops", default="0,1,2,3", help="AdapterDrop depths N to compare (comma-separated).")
    p.add_argument("--lr", type=float, help="One learning rate for every task (default: each task's from paper_table.json).")
    p.add_argument("--backbone", help="Backbone directory (default: the packaged all-MiniLM-L6-v2).")
    p.add_argument("--parts", nargs="+", default=["cache", "parallel", "mixed", "accuracy"],
                   choices=["cache", "parallel", "mixed", "accuracy"], help="Parts to run, in this order.")
    p.add_argument("--texts", type=int, default=512, help="Texts of the Parallel part.")
    p.add_argument("--rows", type=int, default=512, help="Rows of the mixed-batch part.")
    p.add_argument("--repeats", type=int, default=1, help="Timed rounds of each speed side (after one warm-up).")
    p.add_argument("--cache-cap", type=int, default=1000, help="Train cap of the training-cache comparison at --epochs.")
    p.add_argument("--cache-val-cap", type=int, default=500, help="Validation cap of that comparison.")
    p.add_argument("--long-epochs", type=int, default=20, help="Epochs of the long training-cache comparison.")
    p.add_argument("--long-cap", type=int, default=200, help="Train cap of the long comparison (validation: half of it).")
    p.add_argument("--until", metavar="HH:MM", help="Start no accuracy run after this UTC time (the rest is reported as not run).")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1).")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "streamlearn-multitask"),
                   help="Folder for the artifacts (kept, so a resumed run finds them).")
    p.add_argument("--docs-dir", default=str(task_data.REPO / "docs"))
    p.add_argument("--results", help="The JSON record (default: <docs-dir>/results/multitask.json).")
    p.add_argument("--report-only", action="store_true", help="Only rebuild the document from the JSON.")
    p.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                   help="With --report-only: first add the accuracy runs of other records made under the same settings "
                        "(parts run by separate processes).")
    p.add_argument("--note", help="With --report-only: a paragraph the document states (e.g. how the protocol was shrunk).")
    args = p.parse_args(argv)
    args.drops = tuple(int(n) for n in args.drops.split(","))
    return args


def adapter_lrs(docs_dir: Path) -> dict[str, float]:
    """Each task's adapter learning rate as bench/paper_table chose it: the best validation of its tried rates."""
    table = json.loads((docs_dir / "results" / "paper_table.json").read_text())
    allowed = set(table["plan"]["lr"]["adapter"])
    best: dict[str, tuple[float, float]] = {}
    for run in table["runs"]:
        if run["method"] == "adapter" and run["lr"] in allowed:
            if run["task"] not in best or run["val_accuracy"] > best[run["task"]][0]:
                best[run["task"]] = (run["val_accuracy"], run["lr"])
    return {task: lr for task, (_, lr) in best.items()}


def provenance() -> dict:
    """The commit the benchmark ran at and whether the working tree had uncommitted changes."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, cwd=task_data.REPO,
                                  check=False).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD").strip() or "unknown",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip())}


class Results:
    """The JSON record, saved after every finished run."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        same = old.get("settings") == settings
        self.data = {"settings": settings, "accuracy": old.get("accuracy", []) if same else []}
        for key in ("parallel", "mixed", "cache", "timing_note"):
            if same and key in old:
                self.data[key] = old[key]

    def find(self, task: str, drop: int) -> dict | None:
        return next((r for r in self.data["accuracy"] if (r["task"], r["drop"]) == (task, drop)), None)

    def save(self) -> None:
        self.data["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> dict:
    wall, cpu = _clock()
    return {"wall_s": wall - start[0], "cpu_s": cpu - start[1]}


def _configs(args, drop: int, lr: float, epochs: int | None = None):
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    return (MethodConfig(adapter_size=args.adapter_size, drop_layers=drop),
            TrainConfig(epochs=epochs or args.epochs, lr=lr, batch_size=args.batch_size, max_length=args.max_length,
                        seed=args.seed))


def test_accuracy(engine, name: str, ds) -> dict:
    """Accuracy of a resident task on the test split, and whether it predicted a single class (collapsed)."""
    from streamlearn.engine import Item

    logits = engine.logits([Item(name, ex.text, ex.text_pair) for ex in ds.test], batch_size=64)
    pred = [int(row.argmax()) for row in logits]
    gold = [ds.label_index(ex.label) for ex in ds.test]
    return {"accuracy": sum(p == g for p, g in zip(pred, gold)) / len(gold), "examples": len(gold),
            "predicted_classes": len(set(pred)), "collapsed": len(set(pred)) == 1}


def run_accuracy(args, backbone, engine, task: str, drop: int, lr: float, work: Path) -> dict:
    """Train one (task, N) adapter without its test split (so the fit time is training), store it, test it."""
    from streamlearn.data import Dataset
    from streamlearn.engine import load_task
    from streamlearn.pipeline import fit, save

    ds = task_data.load(args.data_dir, task, args.train_cap, args.val_cap, 0, args.seed)
    method_cfg, train_cfg = _configs(args, drop, lr)
    start = _clock()
    result = fit(Dataset(ds.train, ds.validation, [], ds.labels, dict(ds.files)), method_cfg, train_cfg, backbone)
    timing = _since(start)
    path = work / f"{task}-drop{drop}" / "float32.safetensors"
    info = save(result, path)
    record = {"task": task, "drop": drop, "lr": lr, "classes": len(ds.labels),
              "examples": {"train": len(ds.train), "validation": len(ds.validation), "test": len(ds.test)},
              "val_accuracy": result.val.accuracy, "best_epoch": result.best_epoch, "cached_layers": result.cached_layers,
              "stored_params": result.stored_params, "fit": timing, "stores": {}}
    dtypes = ("float32", "float16", "bfloat16") if drop == 0 else ("float32",)
    for dtype in dtypes:
        if dtype != "float32":
            import torch

            tensors = {k: v.to(getattr(torch, dtype)) for k, v in result.tensors.items()}
            info = save(dataclasses.replace(result, tensors=tensors, metadata={**result.metadata, "dtype": dtype}),
                        work / f"{task}-drop{drop}" / f"{dtype}.safetensors")
        name = f"{task}-drop{drop}-{dtype}"
        engine.attach(name, load_task(info.path, backbone, name=name))
        record["stores"][dtype] = {"bytes": info.bytes, "tensor_bytes": sum(
            t.numel() * (2 if dtype != "float32" else 4) for t in result.tensors.values()), **test_accuracy(engine, name, ds)}
        engine.detach(name)
    record["test_accuracy"] = record["stores"]["float32"]["accuracy"]
    record["collapsed"] = record["stores"]["float32"]["collapsed"]
    record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return record


def random_task(backbone, name: str, classes: int, drop: int, seed: int, args):
    """A task with the method's real parts (shapes, sites) from a seeded init: compute does not depend on the values."""
    import torch

    from streamlearn.engine.loading import loaded_from_parts
    from streamlearn.methods import build_parts
    from streamlearn.sidecar import ArtifactMetadata

    method_cfg, train_cfg = _configs(args, drop, 1e-3)
    torch.manual_seed(seed)
    parts = build_parts(backbone, method_cfg, classes)
    with torch.no_grad():
        for p in parts.parameters():
            p.add_(torch.randn_like(p) * 1e-2)  # every task distinct, as trained ones are
    meta = ArtifactMetadata(method=method_cfg, labels=tuple(str(c) for c in range(classes)), label_type="int", pair=False,
                            backbone={"fingerprint": backbone.info.fingerprint}, train=train_cfg.to_dict(),
                            stored_params=sum(p.numel() for p in parts.parameters()), metrics={}, data={},
                            dtype="float32", created_at="")
    return loaded_from_parts(name, parts, meta)


def timed(fn, repeats: int) -> dict:
    """`repeats` timed calls (the part warms the engine up once before); wall and CPU seconds of each."""
    runs = []
    for _ in range(repeats):
        start = _clock()
        fn()
        runs.append(_since(start))
    return {"runs": runs, "wall_s": statistics.median(r["wall_s"] for r in runs),
            "cpu_s": statistics.median(r["cpu_s"] for r in runs)}


def texts_for(args, count: int) -> list[str]:
    """`count` test texts, taken in turn from every task's test split (seeded, stratified)."""
    names = task_data.discover(args.data_dir)
    pools = [task_data.load(args.data_dir, t, 0, 0, count, args.seed).test for t in names]
    out = []
    for k in range(count):
        pool = pools[k % len(pools)]
        out.append(pool[(k // len(pools)) % len(pool)].text)
    return out


def part_parallel(args, backbone, engine) -> dict:
    """K = 10 tasks on the same texts: one Parallel call vs K single-task calls, for N = 0..3."""
    texts, layers, k = texts_for(args, args.texts), backbone.info.layers, 10
    out = {"texts": len(texts), "tasks": k, "layers": layers, "by_drop": {}}
    warm = random_task(backbone, "warm-up", 2, 0, 99, args)
    engine.attach("warm-up", warm)
    engine.classify(texts, None, ["warm-up"])  # first-call costs (allocator, kernels) out of the timings
    engine.detach("warm-up")
    for drop in args.drops:
        names = [f"par{drop}-{i}" for i in range(k)]
        for i, name in enumerate(names):
            engine.attach(name, random_task(backbone, name, 2 + i % 3, drop, 100 + i, args))
        one = timed(lambda names=names: engine.classify(texts, None, names), args.repeats)
        single = timed(lambda names=names: [engine.classify(texts, None, [n]) for n in names], args.repeats)
        ceiling = layers * k / (drop + (layers - drop) * k)
        speedup = single["cpu_s"] / one["cpu_s"]
        out["by_drop"][str(drop)] = {"parallel": one, "single_calls": single, "speedup_cpu": speedup,
                                     "speedup_wall": single["wall_s"] / one["wall_s"], "ceiling": ceiling,
                                     "of_ceiling": speedup / ceiling}
        for name in names:
            engine.detach(name)
        print(f"parallel N={drop}: {speedup:.2f}x (ceiling {ceiling:.2f})", flush=True)
    return out


def part_mixed(args, backbone, engine) -> dict:
    """Rows of K tasks in the same batches vs one task per batch (switching adapters between batches)."""
    from streamlearn.engine import Item

    texts = texts_for(args, args.rows)
    names = [f"mix-{i}" for i in range(50)]
    for i, name in enumerate(names):
        engine.attach(name, random_task(backbone, name, 2 + i % 3, 0, 200 + i, args))
    out = {"rows": len(texts), "batch_size": 64, "sides": {}}
    engine.logits([Item(names[0], t) for t in texts[:64]], batch_size=64)  # warm-up, untimed
    for k in (1, 10, 50):
        items = [Item(names[r % k], t) for r, t in enumerate(texts)]
        mixed = timed(lambda items=items: engine.logits(items, batch_size=64), args.repeats)
        out["sides"][f"mixed K={k}"] = {**mixed, "rows_per_cpu_s": len(items) / mixed["cpu_s"]}
        if k > 1:
            by_task = {n: [i for i in items if i.task == n] for n in names[:k]}
            switch = timed(lambda by_task=by_task: [engine.logits(rows, batch_size=64) for rows in by_task.values()],
                           args.repeats)
            out["sides"][f"switch K={k}"] = {**switch, "rows_per_cpu_s": len(items) / switch["cpu_s"]}
        print(f"mixed K={k}: {out['sides'][f'mixed K={k}']['rows_per_cpu_s']:.1f} rows/cpu-s", flush=True)
    for name in names:
        engine.detach(name)
    base = out["sides"]["mixed K=1"]["rows_per_cpu_s"]
    out["relative_to_k1"] = {side: v["rows_per_cpu_s"] / base for side, v in out["sides"].items()}
    return out


def part_cache(args, backbone, lrs: dict[str, float], task: str, results: Results) -> dict:
    """Fit time with N = 3 (at most L) and the lower-layer cache vs N = 0, at --epochs and at --long-epochs."""
    from streamlearn import layercache
    from streamlearn.data import Dataset
    from streamlearn.pipeline import fit

    drop = min(3, backbone.info.layers)
    out = {"task": task, "drop": drop, "runs": []}
    for epochs, cap, val_cap in ((args.epochs, args.cache_cap, args.cache_val_cap),
                                 (args.long_epochs, args.long_cap, args.long_cap // 2)):
        ds = task_data.load(args.data_dir, task, cap, val_cap, 0, args.seed)
        ds = Dataset(ds.train, ds.validation, [], ds.labels, dict(ds.files))
        row = {"epochs": epochs, "train": len(ds.train), "validation": len(ds.validation)}
        for side, n, cache in (("N=0", 0, None), ("no cache", drop, layercache.CacheConfig(budget_bytes=0)),
                               ("cache", drop, None)):
            layercache.release()  # each side builds its own cache: the cost of one job
            method_cfg, train_cfg = _configs(args, n, lrs[task], epochs)
            start = _clock()
            result = fit(ds, method_cfg, train_cfg, backbone, cache=cache)
            row[side] = {**_since(start), "cached_layers": result.cached_layers, "val_accuracy": result.val.accuracy}
            print(f"cache {epochs} epochs {side}: {row[side]['cpu_s']:.1f} cpu-s", flush=True)
        row["speedup_cpu"] = row["N=0"]["cpu_s"] / row["cache"]["cpu_s"]
        row["speedup_no_cache_cpu"] = row["N=0"]["cpu_s"] / row["no cache"]["cpu_s"]
        out["runs"].append(row)
        results.data["cache"] = out
        results.save()  # each comparison is kept as soon as it is measured
    return out


def _past(until: str | None) -> bool:
    if not until:
        return False
    now = datetime.now(timezone.utc)
    hh, mm = (int(x) for x in until.split(":"))
    return (now.hour, now.minute) >= (hh, mm)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    docs = Path(args.docs_dir)
    path = Path(args.results) if args.results else docs / "results" / "multitask.json"
    if args.report_only:
        data = json.loads(path.read_text())
        for other in (json.loads(Path(f).read_text()) for f in args.merge):
            # which depths ran is not how a run was made: records of other --drops merge
            common = (set(other["settings"]) & set(data["settings"])) - {"drops"}
            if any(other["settings"][k] != data["settings"][k] for k in common):
                raise SystemExit(f"--merge: a record made under other settings ({other['settings']})")
            data["accuracy"] += [r for r in other.get("accuracy", []) if (r["task"], r["drop"]) not in
                                 {(a["task"], a["drop"]) for a in data["accuracy"]}]
            mine, theirs = data.get("accuracy_plan"), other.get("accuracy_plan")
            if mine and theirs:  # both records' tasks, in the order they were planned
                data["accuracy_plan"] = {**mine, "tasks": list(dict.fromkeys(mine["tasks"] + theirs["tasks"]))}
            else:
                data["accuracy_plan"] = theirs or mine
            taken = [part for part in ("parallel", "mixed", "cache") if part in other and part not in data]
            data.update({part: other[part] for part in taken})
            data.setdefault("merged", []).append({"provenance": other.get("provenance"), "command": other.get("command"),
                                                  "parts": taken + (["accuracy"] if other.get("accuracy") else [])})
        if args.note:
            data["timing_note"] = args.note
        if args.merge or args.note:
            path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        (docs / "MULTITASK.md").write_text(render(data), encoding="utf-8")
        return 0
    import torch

    from streamlearn.backbone import load_backbone
    from streamlearn.engine import Engine

    torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone, device="cpu")
    engine = Engine(backbone)
    settings = {k: list(v) if isinstance(v, tuple) else v for k in SETTING_KEYS if hasattr(args, k)
                for v in [getattr(args, k)]}
    settings["backbone_fingerprint"] = backbone.info.fingerprint
    results = Results(path, settings)
    results.data.update(machine=machine_info.describe(backbone.device), provenance=provenance(),
                        backbone={k: getattr(backbone.info, k) for k in ("name", "fingerprint", "layers", "hidden", "params")},
                        command="python -m bench.multitask " + shlex.join(argv if argv is not None else sys.argv[1:]))
    tasks = task_data.discover(args.data_dir, args.tasks)
    lrs = {t: args.lr for t in tasks} if args.lr else adapter_lrs(docs)
    work = Path(args.work)
    for part in args.parts:
        if part == "cache":
            results.data["cache"] = part_cache(args, backbone, lrs, tasks[0], results)
        elif part == "parallel":
            results.data["parallel"] = part_parallel(args, backbone, engine)
        elif part == "mixed":
            results.data["mixed"] = part_mixed(args, backbone, engine)
        elif part == "accuracy":
            results.data["accuracy_plan"] = {"tasks": tasks, "drops": list(args.drops)}
            for task in tasks:
                for drop in args.drops:
                    if results.find(task, drop) or _past(args.until):
                        continue
                    record = run_accuracy(args, backbone, engine, task, drop, lrs[task], work)
                    results.data["accuracy"].append(record)
                    results.save()
                    print(f"{task} N={drop}: test {record['test_accuracy']:.4f} in {record['fit']['cpu_s']:.0f} cpu-s",
                          flush=True)
        results.save()
    backbone.verify()
    (docs / "MULTITASK.md").write_text(render(results.data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
