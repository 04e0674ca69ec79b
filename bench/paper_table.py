"""The paper's table on real tasks: adapter vs full fine-tuning vs top-k vs LayerNorm-only.

Houlsby et al. 2019 (arXiv:1902.00751), Table 1/2 and Figure 3, on the tasks of ../shared/data:
for every task and method it trains on the same capped, seeded data, evaluates on the test split,
and stores the artifact exactly as the service would, to measure its real size.

    python -m bench.paper_table                       # every task, CPU-sized defaults
    python -m bench.paper_table --tasks sst2 trec     # a subset
    python -m bench.paper_table --train-cap 0 --val-cap 0 --lr-grid 3e-5,3e-4,3e-3   # GPU sizes + sweep
    python -m bench.paper_table --report-only         # rebuild docs/ from the JSON

Resumable: every finished run is written to `<docs-dir>/results/paper_table.json` at once, and a
run already there (same task, method, seed and learning rate, same settings) is skipped. Writes
`<docs-dir>/RESULTS.md` and `<docs-dir>/paper_figure.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import struct
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import machine as machine_info
from bench import tasks as task_data

METHODS = ("adapter", "full", "top-k", "layernorm")
CHECK_GRID = {
    "adapter": (3e-4, 1e-3, 3e-3, 1e-2),
    "layernorm": (3e-4, 1e-3, 3e-3, 1e-2, 3e-2),
    "full": (1e-5, 3e-5, 1e-4, 3e-4, 1e-3),
    "top-k": (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
}
"""Learning rates tried by `--lr-check` when no `--lr-grid` is given, in x3 steps from each method's default ÷3.
The first check (default ÷3, ×1, ×3) chose the top of the grid for every method, so the grid was extended
upwards, one x3 step at a time, until the top neither won nor tied (top-k's 3e-3 tied 1e-3, so 1e-2 was added)."""
PAPER = {
    "glue": {"adapter": 80.0, "full": 80.4, "params_pct": 3.6},
    "17 tasks": {"adapter": 73.3, "full": 73.7, "params_pct": 1.14},
}
"""Houlsby et al. 2019: mean accuracy (adapters vs full fine-tuning) and adapter params as % of |w|."""
TARGETS = {"accuracy_ratio": 0.99, "params_pct": 3.0}
FIRST_PROTOCOL_RATIO = 0.9822
"""adapter ÷ full of the first protocol (seed 0, one rate per method: the check's best on every task), before the
two-rates-per-task rule existed; recomputed by `bench.paper_report.table_rows(single_lr=True)` from the same runs."""
SETTING_KEYS = ("train_cap", "val_cap", "test_cap", "max_length", "epochs", "batch_size", "adapter_size", "top_k",
                "autocast", "backbone_fingerprint")
"""Settings that change a run's outcome; results made under other settings are never mixed in."""


# ------------------------------------------------------------------------------------------ CLI

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.paper_table", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(task_data.DEFAULT_DATA_DIR), help="Folder of task folders (default: ../shared/data).")
    p.add_argument("--tasks", nargs="+", help="Task names (default: every task under --data-dir).")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--train-cap", type=int, default=1000, help="Train examples per task, seeded + stratified; 0 = all.")
    p.add_argument("--val-cap", type=int, default=500, help="Validation examples per task (stratified); 0 = all.")
    p.add_argument("--test-cap", type=int, default=0, help="Test examples per task (stratified); 0 = all (default).")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--adapter-size", type=int, default=64)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--seeds", default="0", help="Comma-separated seeds of the full protocol, every rate (default: 0); "
                                                "the first is the selection seed.")
    p.add_argument("--repeat-seeds", default="", metavar="S,S,...",
                   help="Extra seeds run only at the rate the selection seed chose on validation for each (task, method), "
                        "so every seed is scored at one fixed, pre-chosen rate (default: none).")
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR", help="Override one method's learning rate.")
    p.add_argument("--lr-grid", metavar="[METHOD=]LR,LR,...", action="append", default=[],
                   help="Learning rates to sweep (all methods, or one method with METHOD=); the best validation accuracy wins.")
    p.add_argument("--lr-check", metavar="TASK",
                   help="Sweep the grid (default: each method's lr ÷3, ×1, ×3) on TASK only, then use each method's "
                        "best-validation lr on every task.")
    p.add_argument("--task-lrs", type=int, default=1, metavar="N",
                   help="With --lr-check: every task runs each method's N best rates of the check and keeps the one "
                        "with the best validation accuracy (per task, as the paper does); default 1.")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none", help="Train and evaluate under bf16 autocast.")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default).")
    p.add_argument("--backbone", default=None, help="Backbone directory (default: $STREAMLEARN_BACKBONE or all-MiniLM-L6-v2).")
    p.add_argument("--device", default=None, help="auto, cpu, cuda (default: $STREAMLEARN_DEVICE, auto).")
    p.add_argument("--docs-dir", default=str(task_data.REPO / "docs"),
                   help="Where RESULTS.md, paper_figure.png and results/paper_table.json go (default: docs/).")
    p.add_argument("--restart", action="store_true", help="Discard results made under other settings instead of refusing.")
    p.add_argument("--report-only", action="store_true", help="Only rebuild the documents from the JSON.")
    args = p.parse_args(argv)
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.repeat_list = [int(s) for s in args.repeat_seeds.split(",") if s.strip() and int(s) not in args.seed_list]
    args.lr_fixed = _parse_lr(args.lr, p)
    args.grid = _parse_grid(args.lr_grid, p)
    return args


def _parse_lr(items: list[str], p: argparse.ArgumentParser) -> dict[str, float]:
    out = {}
    for item in items:
        method, _, value = item.partition("=")
        if method not in METHODS or not value:
            p.error(f"--lr {item!r}: expected METHOD=LR with METHOD one of {', '.join(METHODS)}")
        out[method] = float(value)
    return out


def _parse_grid(items: list[str], p: argparse.ArgumentParser) -> dict[str, tuple[float, ...]]:
    out: dict[str, tuple[float, ...]] = {}
    for item in items:
        method, sep, values = item.rpartition("=") if "=" in item else ("", "", item)
        lrs = tuple(float(v) for v in values.split(",") if v.strip())
        if (sep and method not in METHODS) or not lrs:
            p.error(f"--lr-grid {item!r}: expected LR,LR,... or METHOD=LR,LR,...")
        for m in ([method] if sep else METHODS):
            out[m] = lrs
    return out


# ------------------------------------------------------------------------------------------ store

class ResultStore:
    """The JSON file of finished runs, rewritten (temp file + rename) after every run."""

    def __init__(self, path: Path, settings: dict, restart: bool) -> None:
        self.path = path
        self.data = {"settings": settings, "runs": []}
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            if old.get("settings") == settings:
                self.data = old
            elif not restart:
                diff = {k: (old.get("settings", {}).get(k), settings.get(k)) for k in SETTING_KEYS
                        if old.get("settings", {}).get(k) != settings.get(k)}
                raise SystemExit(f"error: {path} holds runs made with other settings {diff} (old, new); "
                                 "pass --restart to discard them or --docs-dir to write elsewhere")
            else:
                print(f"discarding {len(old.get('runs', []))} runs of {path} made with other settings", flush=True)

    def find(self, task: str, method: str, seed: int, lr: float) -> dict | None:
        for run in self.data["runs"]:
            if (run["task"], run["method"], run["seed"]) == (task, method, seed) and abs(run["lr"] - lr) <= 1e-12 * lr:
                return run
        return None

    def add(self, run: dict) -> None:
        self.data["runs"].append(run)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------------------------ runs

def safetensors_header_bytes(path: Path) -> int:
    """Bytes of a safetensors file before its tensor data: the 8-byte length plus the JSON header."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    return 8 + n


def run_one(dataset, task: str, method: str, seed: int, lr: float, args, backbone) -> dict:
    """Fit one (task, method, seed, lr), save its artifact to a temp dir, and return the run's record."""
    import contextlib

    import torch

    from streamlearn.methods import MethodConfig
    from streamlearn.pipeline import fit, save
    from streamlearn.training import TrainConfig

    method_cfg = MethodConfig(method=method, adapter_size=args.adapter_size, top_k=args.top_k)
    train_cfg = TrainConfig(epochs=args.epochs, lr=lr, batch_size=args.batch_size, max_length=args.max_length, seed=seed)
    cast = (torch.autocast(backbone.device.type, dtype=torch.bfloat16) if args.autocast == "bf16"
            else contextlib.nullcontext())
    with cast:
        result = fit(dataset, method_cfg, train_cfg, backbone)
    with tempfile.TemporaryDirectory(prefix="paper_table-") as tmp:
        info = save(result, Path(tmp) / f"{task}-{method}.safetensors")
        header = safetensors_header_bytes(info.path)
        stored = stored_shapes(info.path)
    expected = expected_shapes(backbone, method_cfg, len(dataset.labels))
    counts = _label_counts(dataset)
    return {
        "task": task, "method": method, "seed": seed, "lr": lr,
        "classes": len(dataset.labels),
        "examples": {"train": len(dataset.train), "validation": len(dataset.validation), "test": len(dataset.test)},
        "test_accuracy": result.test.accuracy, "test_macro_f1": result.test.macro_f1,
        "val_accuracy": result.val.accuracy, "val_macro_f1": result.val.macro_f1,
        "collapsed": result.test.collapsed, "val_collapsed": result.val.collapsed, "test_label_counts": counts,
        "tensors_match": stored == expected,
        "tensors_mismatch": sorted(set(stored.items()) ^ set(expected.items()))[:10],
        "best_epoch": result.best_epoch, "history": result.metadata["metrics"]["history"],
        "trainable_params": result.trainable_params, "stored_params": result.stored_params,
        "backbone_params": result.backbone_params,
        "params_pct": 100.0 * result.trainable_params / result.backbone_params,
        "bytes": info.bytes, "header_bytes": header,
        "train_examples_per_s": result.train_examples_per_s, "seconds": result.seconds,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **machine_info.provenance(),
    }


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from a safetensors file's own header (`__metadata__` left out)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def expected_shapes(backbone, method_cfg, classes: int) -> dict[str, tuple[int, ...]]:
    """The tensors a method must store, by format-2 name and shape, derived from the backbone itself (Houlsby et al. 2019, Sec. 2-3).

    adapter: two adapters per layer (down d->m, up m->d, with biases), every LayerNorm, the head
    (with AdapterDrop N, Rücklé et al. 2021, none of these in the embeddings and the lowest N
    layers); layernorm: every LayerNorm and the head; top-k: the top k layers' weights and the
    head; full: every backbone weight and the head. Independent of the engine's parts, so a stored
    tensor too many or too few, or one of the wrong shape, makes the comparison fail.
    """
    n, d, m = backbone.info.layers, backbone.info.hidden, method_cfg.adapter_size
    drop = getattr(method_cfg, "drop_layers", 0)
    out: dict[str, tuple[int, ...]] = {"head.weight": (classes, d), "head.bias": (classes,)}

    def params(prefix: str, module) -> None:
        # state_dict: the backbone's own tensor names (the engine's sites are transparent to it)
        out.update({f"{prefix}.{k}": tuple(p.shape) for k, p in module.state_dict().items()})

    def norm(prefix: str) -> None:
        out.update({f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)})

    sites = ("attention", "ffn")
    if method_cfg.method == "adapter":
        for i in range(drop, n):
            for site in sites:
                out.update({f"layers.{i}.{site}.adapter.down.weight": (m, d), f"layers.{i}.{site}.adapter.down.bias": (m,),
                            f"layers.{i}.{site}.adapter.up.weight": (d, m), f"layers.{i}.{site}.adapter.up.bias": (d,)})
    if method_cfg.method in ("adapter", "layernorm"):
        if drop == 0:
            norm("embeddings.norm")
        for i in range(drop, n):
            for site in sites:
                norm(f"layers.{i}.{site}.norm")
    if method_cfg.method == "top-k":
        for i in range(n - method_cfg.top_k, n):
            params(f"layers.{i}.copy", backbone.layer(i))
    if method_cfg.method == "full":
        params("encoder", backbone.model)
    return out


def run_collapsed(run: dict) -> bool:
    """A run's collapsed flag (`streamlearn.training.collapsed` on its test split), recomputed for runs stored before it."""
    if "collapsed" in run:
        return bool(run["collapsed"])
    from streamlearn.training import collapsed

    return collapsed(run["test_macro_f1"], run["test_label_counts"])


def backfill(data: dict, data_dir: str, args) -> None:
    """Add the test split's class counts to runs stored before they were recorded (so `run_collapsed` can judge them)."""
    counts: dict[str, list[int]] = {}
    for run in data["runs"]:
        if "collapsed" in run or "test_label_counts" in run:
            continue
        if run["task"] not in counts:
            ds = task_data.load(data_dir, run["task"], args.train_cap, args.val_cap, args.test_cap, seed=0)
            counts[run["task"]] = _label_counts(ds)
        run["test_label_counts"] = counts[run["task"]]


def _label_counts(dataset) -> list[int]:
    """Examples per class on the test split, in label order (for the collapsed flag of `training.collapsed`)."""
    counts = [0] * len(dataset.labels)
    for ex in dataset.test:
        counts[dataset.label_index(ex.label)] += 1
    return counts


def lrs_for(method: str, args, chosen: dict[str, tuple[float, ...]] | None, task: str) -> tuple[float, ...]:
    """The learning rates to run for one (task, method); `chosen` holds each method's rates after the check."""
    from streamlearn.methods import default_lr

    if chosen is not None and args.lr_check and task != args.lr_check:
        return tuple(chosen[method])
    if args.grid.get(method):
        return args.grid[method]
    if args.lr_check:
        return CHECK_GRID[method]
    return (args.lr_fixed.get(method, default_lr(method)),)


def ranked_lrs(runs: list[dict]) -> list[float]:
    """Learning rates by mean validation accuracy over seeds, best first (ties: the lower lr first)."""
    by_lr: dict[float, list[float]] = {}
    for r in runs:
        by_lr.setdefault(r["lr"], []).append(r["val_accuracy"])
    return sorted(sorted(by_lr), key=lambda lr: -statistics.fmean(by_lr[lr]))


def best_lr(runs: list[dict]) -> float:
    """The learning rate with the highest mean validation accuracy over seeds (ties: the lower lr)."""
    return ranked_lrs(runs)[0]


def execute(args, store: ResultStore, backbone) -> None:
    """Run every planned run not already in the store, checking the lr first when asked."""
    names = task_data.discover(args.data_dir, args.tasks)
    if args.lr_check and args.lr_check not in names:
        names = [args.lr_check] + names
    order = ([args.lr_check] if args.lr_check else []) + [n for n in names if n != args.lr_check]
    placeholder = {k: (0.0,) * args.task_lrs for k in METHODS}
    plan_total = sum(len(lrs_for(m, args, placeholder, t)) * len(args.seed_list) + len(args.repeat_list)
                     for t in order for m in args.methods)
    done = 0
    chosen: dict[str, tuple[float, ...]] | None = None
    for task in order:
        dataset = None
        for method in args.methods:
            for lr in lrs_for(method, args, chosen, task):
                for seed in args.seed_list:
                    done += 1
                    tag = f"[{done:>3}/{plan_total}] {task:<14} {method:<9} seed {seed} lr {lr:.0e}"
                    dataset = _run_unless_done(store, tag, dataset, task, method, seed, lr, args, backbone)
        if task == args.lr_check and chosen is None:
            grid = {m: lrs_for(m, args, None, task) for m in args.methods}
            # Only the selection seed ranks the check's rates: seeds repeated later cannot move the choice.
            ranked = {m: [lr for lr in ranked_lrs([r for r in store.data["runs"] if r["task"] == task and r["method"] == m
                                                   and r["seed"] == args.seed_list[0]])
                          if any(abs(lr - g) <= 1e-12 * g for g in grid[m])] for m in args.methods}
            chosen = {m: tuple(ranked[m][: args.task_lrs]) for m in args.methods}
            # Merged per method, so a later run of some methods keeps the other methods' check.
            check = store.data.setdefault("lr_check", {"task": task, "grid": {}, "chosen": {}, "per_task": {}})
            check["task"] = task
            check["grid"].update({m: list(g) for m, g in grid.items()})
            check["chosen"].update({m: ranked[m][0] for m in args.methods})
            check["per_task"].update({m: list(v) for m, v in chosen.items()})
            store.save()
            print("lr check on " + task + ": per task " + ", ".join(f"{m} {'/'.join(f'{lr:.0e}' for lr in v)}"
                                                                  for m, v in chosen.items()), flush=True)
        for method in args.methods:
            if not args.repeat_list:
                break
            lr = selected_lr([r for r in store.data["runs"] if r["task"] == task and r["method"] == method],
                             allowed=chosen[method] if chosen else lrs_for(method, args, chosen, task),
                             selection_seed=args.seed_list[0])
            for seed in args.repeat_list:
                done += 1
                tag = f"[{done:>3}/{plan_total}] {task:<14} {method:<9} seed {seed} lr {lr:.0e} (repeat)"
                dataset = _run_unless_done(store, tag, dataset, task, method, seed, lr, args, backbone)
    # Merged with earlier invocations, so a run of some methods or seeds never hides the others.
    old = store.data.get("plan", {})
    lr_plan = ({m: list(v) for m, v in chosen.items()} if chosen else {m: list(lrs_for(m, args, None, "")) for m in args.methods})
    store.data["plan"] = {
        "tasks": list(dict.fromkeys(old.get("tasks", []) + order)),
        "methods": [m for m in METHODS if m in old.get("methods", []) or m in args.methods],
        "seeds": sorted(set(old.get("seeds", [])) | set(args.seed_list)),
        "repeat_seeds": {**old.get("repeat_seeds", {}), **{m: args.repeat_list for m in args.methods if args.repeat_list}},
        "lr": {**old.get("lr", {}), **lr_plan},
    }
    store.save()


def _run_unless_done(store, tag: str, dataset, task: str, method: str, seed: int, lr: float, args, backbone):
    """Train and record one (task, method, seed, lr) run unless the results file has it; return the
    task's dataset, loaded on the first run that needs it."""
    if store.find(task, method, seed, lr):
        print(f"{tag}: already done, skipped", flush=True)
        return dataset
    if dataset is None:
        dataset = task_data.load(args.data_dir, task, args.train_cap, args.val_cap, args.test_cap, seed=0)
    print(f"{tag}: training on {len(dataset.train)} examples ...", flush=True)
    run = run_one(dataset, task, method, seed, lr, args, backbone)
    store.add(run)
    _report(tag, run)
    return dataset


def _report(tag: str, run: dict) -> None:
    print(f"{tag}: test acc {run['test_accuracy']:.4f}  val acc {run['val_accuracy']:.4f}  "
          f"epoch {run['best_epoch']}  {run['train_examples_per_s']:.1f} train ex/s  {run['seconds']:.0f} s"
          + ("  COLLAPSED" if run.get("collapsed") else ""), flush=True)


def selected_lr(runs: list[dict], allowed, selection_seed: int = 0) -> float:
    """The rate the selection seed's validation accuracy picks among `allowed` (ties: the lower rate).

    Only the selection seed's runs decide, so seeds run later at the chosen rate cannot move the choice.
    """
    pool = [r for r in runs if r["seed"] == selection_seed and any(abs(r["lr"] - a) <= 1e-12 * a for a in allowed)]
    if not pool:
        pool = [r for r in runs if any(abs(r["lr"] - a) <= 1e-12 * a for a in allowed)]
    if not pool:
        raise SystemExit(f"error: no run of the selection seed {selection_seed} to choose a rate from")
    return best_lr(pool)


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the table and write the documents; return the JSON data."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    docs_dir = Path(args.docs_dir)
    json_path = docs_dir / "results" / "paper_table.json"
    if args.report_only:
        if not json_path.exists():
            raise SystemExit(f"error: {json_path} does not exist; run without --report-only first")
        data = json.loads(json_path.read_text(encoding="utf-8"))
        from bench.paper_report import render

        render(data, docs_dir)
        print(f"wrote {docs_dir / 'RESULTS.md'} and {docs_dir / 'paper_figure.png'}")
        return data
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from streamlearn.backbone import load_backbone

    started = time.perf_counter()
    backbone = load_backbone(args.backbone, args.device)
    settings = {"train_cap": args.train_cap, "val_cap": args.val_cap, "test_cap": args.test_cap,
                "max_length": args.max_length, "epochs": args.epochs, "batch_size": args.batch_size,
                "adapter_size": args.adapter_size, "top_k": args.top_k, "autocast": args.autocast,
                "backbone_fingerprint": backbone.info.fingerprint}
    store = ResultStore(json_path, settings, args.restart)
    for run in store.data["runs"]:  # runs stored before per-run provenance: the commit the document then named
        run.setdefault("git_commit", (store.data.get("machine") or {}).get("git_commit", "unknown"))
        run.setdefault("git_dirty", None)
    backfill(store.data, args.data_dir, args)
    store.data["machine"] = machine_info.describe(backbone.device)
    store.data["backbone"] = {k: getattr(backbone.info, k) for k in ("name", "fingerprint", "layers", "hidden", "params", "bytes")}
    store.data["data_dir"] = _portable([args.data_dir])[0]
    history = store.data.setdefault("commands", [store.data["command"]] if store.data.get("command") else [])
    store.data["command"] = "python -m bench.paper_table" + (" " + shlex.join(_portable(argv)) if argv else "")
    if not history or history[-1] != store.data["command"]:
        history.append(store.data["command"])
    execute(args, store, backbone)
    store.data["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    store.save()
    from bench.paper_report import render

    render(store.data, docs_dir)
    print(f"wrote {docs_dir / 'RESULTS.md'}, {docs_dir / 'paper_figure.png'} and {json_path} "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    return store.data


def _portable(argv: list[str]) -> list[str]:
    """argv with absolute paths under the repository made relative, for the regenerate line."""
    out = []
    for a in argv:
        try:
            out.append(os.path.relpath(a, task_data.REPO) if os.path.isabs(a) else a)
        except ValueError:
            out.append(a)
    return out


if __name__ == "__main__":
    main()
