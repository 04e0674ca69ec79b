"""AdapterFusion on the stream: each task after the first as a single adapter and fused over every earlier one.

    python -m bench.fusion --threads 1                       # the full protocol (10 tasks, caps 100/300/1000, 3 seeds)
    python -m bench.fusion --tasks sst2 ag_news cr mpqa mr --caps 300 --seeds 0 1 2   # a shrunk protocol
    python -m bench.fusion --report-only                     # rebuild docs/FUSION.md from the JSON

The real service, in-process (no broker round trip): for each (train cap, seed) one embedded
catalogue in `--work`, the tasks arriving in the fixed order of `--tasks`. Each task is submitted as
an `adapter` task (its single adapter: the baseline, and a source for the later tasks); every task
after the first also as `TASK.fusion` (`--method fusion --fuse-from` every earlier task) and
`TASK.fusion-rR` (`--fusion-rank R`); each job is `pipeline.run_task`, what a worker calls. After
each task, `evaluate` (`predictor.reevaluate`) re-scores every stored task: BWT and drift must be 0.
Model selection on validation only; test accuracy is the one the job recorded with the stored tensors.
For the top-cap, first-seed stream the last task is also fused with `--fusion-top 2`, heatmaps of
the last three fused tasks are drawn, and the inference cost of the fused variants is timed.

Resumable: every finished job and re-scoring is written to `<docs-dir>/results/fusion.json` at once
and skipped when found again under the same settings; the catalogues in `--work` are kept. A stream
resumed with a fresh `--work` folder (another machine, or the folder lost) re-trains the recorded
adapters that its unfinished fused jobs fuse over, and records them under `retrained_sources` as a
reproduction of the recorded run (the report says how many scored the same), not as second runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import machine as machine_info
from bench import tasks as task_data
from bench.fusion_report import render

ORDER = ("sst2", "ag_news", "cr", "mpqa", "mr", "sms_spam", "subj", "trec", "tweet_emotion", "tweet_irony")
"""The stream's fixed order (that of bench/paper_table.py)."""
SETTING_KEYS = ("tasks", "caps", "val_cap", "test_cap", "max_length", "epochs", "batch_size", "adapter_size", "rank",
                "lrs", "backbone")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(task_data.DEFAULT_DATA_DIR))
    p.add_argument("--tasks", nargs="+", default=list(ORDER), help="The stream, in arrival order.")
    p.add_argument("--caps", type=int, nargs="+", default=[100, 300, 1000], help="Train caps (seeded, stratified).")
    p.add_argument("--seeds", type=int, nargs="+", help="Seeds (default 0 1 2; with --report-only: those of the record).")
    p.add_argument("--val-cap", type=int, default=0, help="Validation examples per task (0: all).")
    p.add_argument("--test-cap", type=int, default=0, help="Test examples per task (0: all).")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--adapter-size", type=int, default=64)
    p.add_argument("--rank", type=int, default=64, help="R of the low-rank fusion variant.")
    p.add_argument("--lr", type=float, help="One learning rate (default: each task's adapter rate from paper_table.json).")
    p.add_argument("--top", type=int, default=2, help="--fusion-top N of the pruned variant.")
    p.add_argument("--timing-texts", type=int, default=256, help="Texts of the inference-cost part.")
    p.add_argument("--backbone", help="Backbone directory (default: the packaged all-MiniLM-L6-v2).")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/streamlearn-fusion", help="Folder of the catalogues and capped data (kept).")
    p.add_argument("--docs-dir", default=str(task_data.REPO / "docs"))
    p.add_argument("--until", metavar="HH:MM", help="Start no job after this UTC time (the rest is reported as not run).")
    p.add_argument("--note", help="A paragraph the document states (e.g. how the protocol was shrunk).")
    p.add_argument("--no-extras", action="store_true",
                   help="Skip the --fusion-top run, the heatmaps and the inference timing (a second process's share).")
    p.add_argument("--merge", nargs="+", metavar="JSON", default=[],
                   help="Add the runs of other records (other processes' --docs-dir) made with the same settings but "
                        "other caps or seeds; each part's command and commit are listed in the document.")
    p.add_argument("--layer-cost", action="store_true",
                   help="Only time the fusion layer as computed (K, V folded through the sum) against the "
                        "per-source formula, side by side, and add it to the record.")
    p.add_argument("--fused", nargs="+", metavar="VARIANT",
                   help="Run only these fused variants (fusion, fusion-rR); the adapters always run, as baselines and "
                        "sources. Two processes can split one stream this way and be merged (--merge).")
    p.add_argument("--report-only", action="store_true")
    return p.parse_args(argv)


def _lrs(args) -> dict[str, float]:
    if args.lr is not None:
        return {t: args.lr for t in args.tasks}
    from bench.multitask import adapter_lrs

    chosen = adapter_lrs(Path(args.docs_dir))
    return {t: chosen.get(t, 1e-3) for t in args.tasks}


class Results:
    """The JSON record, saved (temp file, rename) after every finished job or re-scoring."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        old = json.loads(path.read_text()) if path.exists() else {}
        same = old.get("settings") == settings or (
            old.get("settings") and settings.get("caps") is None
            and settings_without_caps(old["settings"]) == settings_without_caps(settings))
        if same and settings.get("caps") is None:
            settings["caps"] = old["settings"]["caps"]
        self.data = {"settings": settings, **{k: old.get(k, []) if same else [] for k in ("runs", "rescores")},
                     **({k: old[k] for k in ("timing", "heatmaps", "machine", "note", "seeds", "command", "parts",
                                               "retrained_sources")
                        if same and k in old})}

    def merge(self, path: Path) -> None:
        """Union another record's runs and re-scorings into this one (settings equal but for the caps)."""
        other = json.loads(path.read_text())
        mine, theirs = settings_without_caps(self.data["settings"]), settings_without_caps(other["settings"])
        if mine != theirs:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise SystemExit(f"{path}: made with other settings ({', '.join(diff)}); not merged")
        added = []
        for key, fields in (("runs", ("cap", "seed", "task", "variant")), ("rescores", ("cap", "seed", "step"))):
            for row in other.get(key, []):
                if not self.find(key, **{f: row[f] for f in fields}):
                    self.data[key].append(row)
                    added += [row] if key == "runs" else []
        for row in other.get("retrained_sources", []):
            if row not in self.data.get("retrained_sources", []):
                self.data.setdefault("retrained_sources", []).append(row)
        caps = sorted(set(self.data["settings"]["caps"]) | set(other["settings"]["caps"]))
        self.data["settings"]["caps"] = caps
        seeds = sorted({r["seed"] for r in other.get("runs", [])})  # a resumed part's "seeds" holds only its last call's
        self.data["seeds"] = sorted(set(self.data.get("seeds", [])) | set(seeds))
        for k in ("timing", "heatmaps"):
            if not self.data.get(k) and other.get(k):
                self.data[k] = other[k]
        # what this file added: a part copied from the record adds only its new runs (merged again, the counts add up)
        before = next((p for p in self.data.get("parts", []) if p.get("file") == str(path)), {})
        parts = [p for p in self.data.get("parts", []) if p.get("file") != str(path)]
        parts.append({"file": str(path), "command": other.get("command"), "caps": other["settings"]["caps"],
                      "seeds": seeds, "machine": other.get("machine", {}),
                      "git_commit": other.get("machine", {}).get("git_commit"),
                      "git_dirty": other.get("machine", {}).get("git_dirty"),
                      "runs_added": before.get("runs_added", 0) + len(added),
                      "added_caps": sorted(set(before.get("added_caps", [])) | {r["cap"] for r in added}),
                      "added_seeds": sorted(set(before.get("added_seeds", [])) | {r["seed"] for r in added})})
        self.data["parts"] = parts

    def find(self, key: str, **match) -> dict | None:
        return next((r for r in self.data[key] if all(r.get(k) == v for k, v in match.items())), None)

    def save(self) -> None:
        self.data["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1) + "\n", encoding="utf-8")
        tmp.replace(self.path)


def settings_without_caps(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "caps"}


def _use_home(home: Path, backbone: str | None) -> None:
    from streamlearn.settings import get_settings

    os.environ["STREAMLEARN_HOME"] = str(home)
    for name in ("STREAMLEARN_DATABASE_URL", "STREAMLEARN_BROKER_URL", "STREAMLEARN_ARTIFACTS"):
        os.environ.pop(name, None)
    if backbone:
        os.environ["STREAMLEARN_BACKBONE"] = backbone
    get_settings.cache_clear()


def run_job(args, files: dict, name: str, variant: str, lr: float, seed: int, sources: list[str]) -> dict:
    """Submit one task and run its job in-process as a worker does; return its record."""
    from streamlearn import jobs, pipeline
    from streamlearn.artifacts import read_metadata
    from streamlearn.catalogue import queries
    from streamlearn.catalogue.session import session_scope
    from streamlearn.submission import SubmitRequest, submit

    fusion = variant != "adapter"
    method = {"method": "fusion" if fusion else "adapter", "adapter_size": args.adapter_size, "top_k": 1, "sigma": 1e-2,
              "pooling": "mean", "drop_layers": 0, "fuse_from": ",".join(sources) if fusion else "all",
              "fusion_rank": args.rank if variant == f"fusion-r{args.rank}" else 0,
              "fusion_top": args.top if variant == f"fusion-top{args.top}" else 0}
    train = {"epochs": args.epochs, "lr": lr, "batch_size": args.batch_size, "max_length": args.max_length, "seed": seed,
             "warmup": 0.1, "weight_decay": 0.0, "max_grad_norm": 1.0, "store_dtype": "float32"}
    job = submit(SubmitRequest(files["train"], name=name, validation=files["validation"], test=files["test"],
                               method=method, train_config=train)).job_id
    start = time.perf_counter()
    outcome = pipeline.run_task(job)
    seconds = time.perf_counter() - start
    with session_scope(readonly=True) as s:
        state = queries.job_status(s, job)
    meta = read_metadata(jobs.artifact_path(state["artifact"]["uri"]))
    test, fused = meta["metrics"]["test"], meta.get("fusion", {})
    return {"job_id": job, "outcome": outcome, "seconds": round(seconds, 1), "bytes": state["artifact"]["bytes"],
            "stored_params": meta["stored_params"], "val_accuracy": meta["metrics"]["val"]["accuracy"],
            "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"], "collapsed": test["collapsed"],
            "sources": [x["task"] for x in meta.get("sources", [])], "pruned": fused.get("pruned", []),
            "stage1_test_accuracy": (fused.get("stage1") or {}).get("test", {}).get("accuracy"),
            "attention": fused.get("attention"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _late(args) -> bool:
    if not args.until:
        return False
    now = datetime.now(timezone.utc)
    return now.strftime("%H:%M") >= args.until


def run_stream(args, results: Results, cap: int, seed: int, lrs: dict, top_stream: bool) -> None:
    """One (cap, seed) stream: every task as adapter, then fused (full, rank R), then a re-scoring of every task."""
    from streamlearn.predictor import reevaluate

    _use_home(Path(args.work) / f"cap{cap}-seed{seed}", args.backbone)
    plan = {task: _variants(args, i, top_stream) for i, task in enumerate(args.tasks)}
    for i, task in enumerate(args.tasks):
        variants = plan[task]
        for variant in variants:
            if _late(args):
                continue
            found = results.find("runs", cap=cap, seed=seed, task=task, variant=variant)
            if found and not (variant == "adapter" and _needed_source(args, results, plan, cap, seed, i)):
                continue
            ds = task_data.load(args.data_dir, task, cap, args.val_cap, args.test_cap, seed)
            files = task_data.write_files(ds, Path(args.work) / "data" / f"{task}-cap{cap}-seed{seed}")
            name = task if variant == "adapter" else f"{task}.{variant}"
            record = run_job(args, files, name, variant, lrs[task], seed, list(args.tasks[:i]))
            if found:  # a recorded source re-trained for a later job: a reproduction, not a second run
                results.data.setdefault("retrained_sources", []).append(
                    {"cap": cap, "seed": seed, "task": task, "recorded_test_accuracy": found["test_accuracy"],
                     "test_accuracy": record["test_accuracy"], "job_id": record["job_id"],
                     "finished_at": record["finished_at"]})
            else:
                results.data["runs"].append({"cap": cap, "seed": seed, "task": task, "variant": variant,
                                             "lr": lrs[task], **record})
            results.save()
            again = " (recorded source, re-trained)" if found else ""
            print(f"cap {cap} seed {seed} {name}: test {record['test_accuracy']:.4f} ({record['seconds']} s){again}",
                  flush=True)
        done = all(results.find("runs", cap=cap, seed=seed, task=task, variant=v) for v in variants)
        if done and not results.find("rescores", cap=cap, seed=seed, step=i) and not _late(args):
            rows = reevaluate(source="cli")
            results.data["rescores"].append({"cap": cap, "seed": seed, "step": i, "after": task, "rows": [
                {k: r[k] for k in ("task", "accuracy", "catalogue_accuracy", "drift", "predicted_classes")} for r in rows]})
            results.save()


def _variants(args, i: int, top_stream: bool) -> list[str]:
    fused = [v for v in ("fusion", f"fusion-r{args.rank}") if not args.fused or v in args.fused]
    variants = ["adapter"] + (fused if i else [])
    if top_stream and i == len(args.tasks) - 1 and i > args.top:
        variants.append(f"fusion-top{args.top}")
    return variants


def _needed_source(args, results: Results, plan: dict, cap: int, seed: int, i: int) -> bool:
    """Whether task i's recorded adapter is missing from this stream's catalogue while a later job still needs it.

    A stream resumed in a fresh `--work` folder (another machine, a lost folder) has the record of its
    finished jobs but not their catalogue; a fused job fuses over the earlier adapters, so those are
    trained again. Training is seeded, so the re-trained adapter should score what the record holds.
    """
    from sqlalchemy import select

    from streamlearn.catalogue.models import Task
    from streamlearn.catalogue.session import session_scope

    later = [(t, v) for t in args.tasks[i + 1:] for v in plan[t] if v != "adapter"]
    if not any(not results.find("runs", cap=cap, seed=seed, task=t, variant=v) for t, v in later):
        return False
    with session_scope(readonly=True) as s:
        status = s.scalar(select(Task.latest_status).where(Task.name == args.tasks[i]))
    return status != "succeeded"


def timing(args, results: Results, cap: int, seed: int) -> None:
    """Inference cost of the last task: single adapter vs fused (full, rank R, top N), examples/s through the engine."""
    import streamlearn

    last = args.tasks[-1]
    names = [last] + [f"{last}.{v}" for v in ("fusion", f"fusion-r{args.rank}", f"fusion-top{args.top}")]
    home = Path(args.work) / f"cap{cap}-seed{seed}"
    _use_home(home, args.backbone)
    texts = [ex.text for ex in task_data.load(args.data_dir, last, 0, 0, args.timing_texts, seed).test]
    out = {"task": last, "cap": cap, "seed": seed, "texts": len(texts), "rows": []}
    with streamlearn.open(home) as sl:
        present = [n for n in names if n in sl.tasks()]
        for name in present:
            sl.predict(name, texts[:8])  # load and warm up
            best = min(_timed(sl, name, texts) for _ in range(3))
            out["rows"].append({"task": name, "examples_per_s": len(texts) / best, "seconds": best,
                                "resident_bytes": sl.engine.resident()[name]})
    results.data["timing"] = out
    results.save()


def _timed(sl, name: str, texts: list[str]) -> float:
    start = time.perf_counter()
    sl.predict(name, texts)
    return time.perf_counter() - start


def heatmaps(args, results: Results, cap: int, seed: int) -> None:
    """Draw the mean validation attention of the last three fully fused tasks of one stream."""
    from streamlearn.heatmap import plot

    drawn = []
    for task in args.tasks[1:][-3:]:
        run = results.find("runs", cap=cap, seed=seed, task=task, variant="fusion")
        if run and run.get("attention"):
            path = plot(f"{task}.fusion", run["attention"], Path(args.docs_dir) / f"fusion-{task}.png",
                        title=f"{task} fused over {', '.join(run['sources'])} (cap {cap}, seed {seed})")
            drawn.append({"task": task, "file": path.name})
    results.data["heatmaps"] = drawn
    results.save()


LAYER_D = 384
"""all-MiniLM-L6-v2's width, the d of the layer-cost part."""


def layer_cost(args, results: Results, sources=(2, 5, 10), rounds: int = 5) -> None:
    """Forward + backward of one site's fusion layer on 32×64 tokens: as computed vs the per-source formula.

    Both run on the same layer and inputs in one process, alternating, best of `rounds`; the
    ratio is what folding K and V through the attention-weighted sum saves.
    """
    import torch

    from streamlearn.engine.fusion import FusionLayer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    rows = []
    for rank in (0, args.rank):
        layer = FusionLayer(LAYER_D, rank)
        for n in sources:
            hidden, ups = torch.randn(32, 64, LAYER_D), 0.1 * torch.randn(32, 64, n, LAYER_D)
            with torch.no_grad():
                diff = (layer(hidden, ups)[0] - layer.forward_per_source(hidden, ups)[0]).abs().max().item()
            best = {"per_source": float("inf"), "folded": float("inf")}
            for _ in range(rounds + 1):
                for name, fn in (("per_source", layer.forward_per_source), ("folded", layer)):
                    layer.zero_grad()
                    start = time.perf_counter()
                    fn(hidden, ups)[0].sum().backward()
                    best[name] = min(best[name], time.perf_counter() - start)
            rows.append({"rank": rank, "sources": n, "per_source_s": best["per_source"], "folded_s": best["folded"],
                         "speedup": best["per_source"] / best["folded"], "max_abs_diff": diff})
            print(f"layer rank {rank} S {n}: {rows[-1]['speedup']:.2f}x", flush=True)
    results.data["layer_cost"] = {"d": LAYER_D, "tokens": "32 x 64", "rounds": rounds, "threads": args.threads,
                                  "rows": rows, "machine": machine_info.describe(torch.device("cpu"))}
    results.save()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    known = ("fusion", f"fusion-r{args.rank}")
    if args.fused and not set(args.fused) <= set(known):
        raise SystemExit(f"--fused: expected {' or '.join(known)}, got {' '.join(args.fused)}")
    docs = Path(args.docs_dir)
    (docs / "results").mkdir(parents=True, exist_ok=True)
    lrs = _lrs(args)
    settings = {k: v for k, v in {**vars(args), "lrs": lrs}.items() if k in SETTING_KEYS}
    if (args.report_only and args.merge) or args.layer_cost:
        settings["caps"] = None  # the record's caps (widened by any merged parts)
    results = Results(docs / "results" / "fusion.json", settings)
    if args.note:
        results.data["note"] = args.note
    for path in args.merge:
        results.merge(Path(path))
    if results.data["settings"].get("caps") is None:  # no record yet to take them from
        results.data["settings"]["caps"] = args.caps
    if args.merge:
        results.save()
    if args.layer_cost:
        layer_cost(args, results)
        (docs / "FUSION.md").write_text(render(results.data), encoding="utf-8")
        return 0
    if args.seeds or not args.report_only:
        results.data["seeds"] = args.seeds = args.seeds or [0, 1, 2]
    if not args.report_only:
        import torch

        torch.set_num_threads(args.threads)
        results.data["machine"] = machine_info.describe(torch.device("cpu"))
        results.data["command"] = " ".join(["python -m bench.fusion", *argv])
        top_cap = 300 if 300 in args.caps else args.caps[0]
        for cap in args.caps:
            for seed in args.seeds:
                run_stream(args, results, cap, seed, lrs,
                           top_stream=(cap == top_cap and seed == args.seeds[0] and not args.no_extras))
        if not _late(args) and not args.no_extras:
            heatmaps(args, results, top_cap, args.seeds[0])
            timing(args, results, top_cap, args.seeds[0])
        results.save()
    (docs / "FUSION.md").write_text(render(results.data), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
