"""The online setting of the paper: the tasks arrive one after another through the real service.

    python -m bench.stream                       # every task of ../shared/data, CPU-sized caps
    python -m bench.stream --report-only         # rebuild docs/STREAM.md from the JSON

A fresh STREAMLEARN_HOME (embedded mode: SQLite catalogue, filesystem broker), one
`streamlearn worker` subprocess, and for each task in turn: `streamlearn submit-task ... --wait`,
then `streamlearn evaluate --all --json`, whose accuracies fill row t of the matrix R[t, j]
(accuracy on task j's test split after the stream has learned tasks 1..t). Then
`streamlearn storage --json --plot`. Everything goes through the CLI, as a user would run it.

Reports the average accuracy, backward transfer BWT = mean_j<T (R[T, j] - R[j, j]) and forgetting
mean_j<T max_t<T (R[t, j] - R[T, j]) (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018). Both are 0 by
construction (frozen backbone, immutable per-task artifacts); measuring them checks that the artifacts
and the backbone are unchanged and that evaluation is deterministic, not that a learning method
avoided forgetting. Each task's collapsed flag (`streamlearn.training.collapsed`) comes from `tasks`.
Writes `<docs-dir>/STREAM.md`, `<docs-dir>/stream_storage.png` and `<docs-dir>/results/stream.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import machine as machine_info
from bench import tasks as task_data
from bench.worker import Worker, env_for


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(task_data.DEFAULT_DATA_DIR), help="Folder of task folders (default: ../shared/data).")
    p.add_argument("--tasks", nargs="+", help="Tasks in arrival order (default: every task under --data-dir, sorted).")
    p.add_argument("--train-cap", type=int, default=1000, help="Train examples per task, seeded + stratified; 0 = all.")
    p.add_argument("--val-cap", type=int, default=500, help="Validation examples per task; 0 = all.")
    p.add_argument("--test-cap", type=int, default=0, help="Test examples per task; 0 = all (default).")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--method", default="adapter", choices=("adapter", "full", "top-k", "layernorm"))
    p.add_argument("--lr", type=float, default=None, help="Learning rate (default: the service's default for the method).")
    p.add_argument("--backbone", default=None, help="Backbone directory (default: $STREAMLEARN_BACKBONE or all-MiniLM-L6-v2).")
    p.add_argument("--device", default=None, help="auto, cpu, cuda (default: $STREAMLEARN_DEVICE, auto).")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the worker and CLI processes (0 = torch's default).")
    p.add_argument("--docs-dir", default=str(task_data.REPO / "docs"), help="Where STREAM.md, the plot and results/stream.json go.")
    p.add_argument("--keep-home", action="store_true", help="Keep the temporary STREAMLEARN_HOME (printed) for inspection.")
    p.add_argument("--report-only", action="store_true", help="Only rebuild STREAM.md from the JSON.")
    return p.parse_args(argv)


def cli(env: dict[str, str], *args: str, timeout: float = 7200) -> str:
    """Run `python -m streamlearn ARGS` with the stream's environment; return stdout (raise on failure)."""
    proc = subprocess.run([sys.executable, "-m", "streamlearn", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"streamlearn {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def metrics(names: list[str], matrix: list[dict[str, float]]) -> dict:
    """Average accuracy, BWT and forgetting of an accuracy matrix (row t: accuracies after task t)."""
    T = len(matrix)  # noqa: N806
    if T == 0:
        return {"average_accuracy": None, "bwt": None, "forgetting": None}
    last = matrix[-1]
    avg = statistics.fmean(last[n] for n in names[:T])
    if T == 1:
        return {"average_accuracy": avg, "bwt": 0.0, "forgetting": 0.0, "max_abs_change": 0.0}
    bwt = statistics.fmean(last[names[j]] - matrix[j][names[j]] for j in range(T - 1))
    forgetting = statistics.fmean(max(matrix[t][names[j]] for t in range(j, T - 1)) - last[names[j]] for j in range(T - 1))
    change = max(abs(matrix[t][names[j]] - matrix[j][names[j]]) for j in range(T) for t in range(j, T))
    return {"average_accuracy": avg, "bwt": bwt, "forgetting": forgetting, "max_abs_change": change}


def run(args, argv: list[str], json_path: Path) -> dict:
    names = task_data.discover(args.data_dir, args.tasks)
    home = Path(tempfile.mkdtemp(prefix="bench-stream-home-"))
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    env = env_for(home, args.backbone, args.device)
    from streamlearn.methods import default_lr
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    data: dict = {
        "command": "python -m bench.stream" + (" " + shlex.join(argv) if argv else ""),
        "settings": {"train_cap": args.train_cap, "val_cap": args.val_cap, "test_cap": args.test_cap,
                     "max_length": args.max_length, "epochs": args.epochs, "method": args.method,
                     "lr": args.lr, "threads": args.threads or None},
        "lr_used": args.lr if args.lr else default_lr(args.method),
        "lr_source": "--lr" if args.lr else "the service's default for the method (no --lr sent)",
        "provenance": machine_info.provenance(),
        "data_dir": args.data_dir, "tasks": names, "rows": [], "jobs": [],
    }
    worker = Worker(env, work / "worker.log")
    started = time.perf_counter()
    try:
        worker.wait_ready()
        info = json.loads(cli(env, "backbone", "--json"))
        data["backbone"] = {k: info[k] for k in ("name", "fingerprint", "layers", "hidden", "params", "bytes")}
        for t, name in enumerate(names, 1):
            ds = task_data.load(args.data_dir, name, args.train_cap, args.val_cap, args.test_cap, seed=0)
            files = task_data.write_files(ds, work / name)
            t0 = time.perf_counter()
            sub = json.loads(cli(env, "submit-task", str(files["train"]), "--name", name, "--validation", str(files["validation"]),
                                 "--test", str(files["test"]), "--method", args.method, "--epochs", str(args.epochs),
                                 "--max-length", str(args.max_length), *(["--lr", repr(args.lr)] if args.lr else []),
                                 "--wait", "--json"))
            seconds = time.perf_counter() - t0
            if sub["status"] != "succeeded":
                raise RuntimeError(f"task {name}: job {sub['job_id']} {sub['status']}: {worker.tail()}")
            rows = json.loads(cli(env, "evaluate", "--all", "--json"))
            row = {r["task"]: r["accuracy"] for r in rows}
            data["rows"].append(row)
            listed = {r["task"]: r for r in json.loads(cli(env, "tasks", "--json"))}
            data["jobs"].append({"task": name, "job_id": sub["job_id"], "seconds": seconds, "classes": len(ds.labels),
                                 "examples": {"train": len(ds.train), "validation": len(ds.validation), "test": len(ds.test)},
                                 "evaluate": rows, "collapsed": listed[name]["collapsed"]})
            missing = [n for n in names[:t] if n not in row]
            if missing:
                raise RuntimeError(f"evaluate --all after {name} lacks {missing}")
            print(f"[{t:>2}/{len(names)}] {name:<14} learned in {seconds:.0f} s"
                  + (" (COLLAPSED)" if data["jobs"][-1]["collapsed"] else "") + f"; R[{t}, :] = "
                  + " ".join(f"{row[n]:.4f}" for n in names[:t]), flush=True)
            _save(data, json_path)
        docs_dir = json_path.parent.parent
        plot = docs_dir / "stream_storage.png"
        data["storage"] = json.loads(cli(env, "storage", "--json", "--plot", str(plot)))
        data["machine"] = machine_info.describe(_device(args.device, args.threads))
        data["seconds"] = time.perf_counter() - started
        data["updated_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _save(data, json_path)
    finally:
        worker.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.keep_home:
            print(f"STREAMLEARN_HOME kept at {home}", flush=True)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return data


def _device(setting: str | None, threads: int = 0):
    import torch

    from streamlearn.backbone import resolve_device

    if threads:
        torch.set_num_threads(threads)  # so the machine line states what the worker used

    return resolve_device(setting)


def _save(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def render(data: dict, docs_dir: Path) -> str:
    names, matrix = data["tasks"], data["rows"]
    m = metrics(names, matrix)
    st, bb, mach = data["settings"], data["backbone"], data.get("machine")
    cap = lambda n: "all" if not n else f"at most {n:,}"  # noqa: E731
    prov = data.get("provenance") or {"git_commit": (mach or {}).get("git_commit", "unknown"), "git_dirty": None}
    collapsed = [j["task"] for j in data["jobs"] if j.get("collapsed")]
    unknown = [j["task"] for j in data["jobs"] if j.get("collapsed") is None]
    lr = data.get("lr_used") or st.get("lr")
    out = ["# The task stream: R[t, j], backward transfer and forgetting", "",
           *machine_info.dirty_warning(prov), f"Provenance: {machine_info.tree(prov)}.", "",
           "Generated by `bench/stream.py`; never edit by hand. Regenerate:", "", "```", data["command"], "```", "",
           (f"Machine: {machine_info.sentence(mach)}; device **{mach['device']}**"
            + ("" if mach.get("gpu") else " (no GPU was lent to this session)") + f". Whole stream: {data['seconds'] / 60:.0f} min."
            if mach else f"**Unfinished stream**: {len(matrix)} of {len(names)} tasks learned when this document was "
            "written from the partial JSON; the machine line and the storage table come at the end of a run."),
           "",
           f"The {len(names)} tasks of `{_shown(data['data_dir'])}` arrive one after another (in the order of the rows) at the real service in "
           "embedded mode: a fresh `STREAMLEARN_HOME` (SQLite catalogue, filesystem broker), one `streamlearn worker` "
           f"subprocess holding the frozen {bb['name']} backbone. Each task: `streamlearn submit-task --method {st['method']} "
           f"--epochs {st['epochs']} --max-length {st['max_length']}" + (f" --lr {st['lr']:g}" if st.get("lr") else "")
           + f" --wait` on its files (train {cap(st['train_cap'])} examples, "
           f"validation {cap(st['val_cap'])}, test {cap(st['test_cap'])}; seeded, stratified caps for CPU time), then "
           "`streamlearn evaluate --all --json`, which reloads every stored artifact and re-measures its test accuracy: "
           "that is row t of R. "
           + (f"Learning rate: {lr:g}, " + ("given with `--lr`." if st.get("lr") else "the service's default for the "
              f"{st['method']} method (no `--lr` sent), i.e. what a user who sets nothing gets.") if lr else ""), "",
           f"**Collapsed tasks** (`streamlearn.training.collapsed` on the test split, as `streamlearn tasks` reports it: "
           f"every prediction one class, or a macro-F1 at or below the majority-class level): **{len(collapsed)} of "
           f"{len(data['jobs']) - len(unknown)}**" + (f" ({', '.join(f'`{t}`' for t in collapsed)}); they are marked ⚠ below and count in "
                                        "every average" if collapsed else "")
           + (f"; not recorded for {', '.join(unknown)} (run before the flag existed)" if unknown else "") + ".", "",
           "## Accuracy matrix R[t, j] (test accuracy on task j after learning tasks 1..t)", ""]
    short = [n[:10] for n in names]
    out.append("| after task t | " + " | ".join(f"{j + 1}. `{s}`" for j, s in enumerate(short)) + " |")
    out.append("|---|" + "---:|" * len(names))
    for t, row in enumerate(matrix):
        cells = [f"{row[n]:.4f}" if j <= t else "" for j, n in enumerate(names)]
        flag = " ⚠" if t < len(data["jobs"]) and data["jobs"][t].get("collapsed") else ""
        out.append(f"| {t + 1}. `{names[t]}`{flag} | " + " | ".join(cells) + " |")
    out += ["", "## Continual-learning metrics", "",
            f"- Average accuracy after all {len(matrix)} tasks: **{m['average_accuracy']:.4f}**"
            + (f" ({len(collapsed)} collapsed task(s) included)." if collapsed else " (no task collapsed)."),
            f"- Backward transfer BWT = mean over j < T of (R[T, j] − R[j, j]) = **{m['bwt']:.4g}**"
            + (" (exactly 0)." if m["bwt"] == 0 else " (**not 0**: an artifact, the backbone or the evaluation changed)."),
            f"- Forgetting = mean over j < T of max over t < T of (R[t, j] − R[T, j]) = **{m['forgetting']:.4g}**"
            + (" (exactly 0)." if m["forgetting"] == 0 else " (**not 0**)."),
            f"- Largest change of any task's accuracy after it was learned: {m['max_abs_change']:.4g}; largest drift "
            f"`evaluate` reported against the catalogue: {max(abs(r['drift']) for j in data['jobs'] for r in j['evaluate']):.4g}.",
            "- What this shows, and what it does not: BWT = 0 and forgetting = 0 **follow from the design**, not from a "
            "learning result: the backbone is frozen and shared, and each task's adapters, LayerNorms and head live in "
            "their own immutable artifact, so learning task t cannot change task j's function. What the measurement proves "
            "is that the design holds in the running service: the stored artifacts are unchanged (`evaluate` checks each "
            "file's sha256 against the catalogue), the backbone is unchanged (its fingerprint is re-checked after every "
            "job), and the computation is deterministic (the same batch size and ordering as the first measurement, so "
            "every float repeats). It is a check of those three properties, not a target met by the method."]
    out += _cross_check(data, docs_dir)
    s = data.get("storage") or {}
    if s.get("tasks"):
        out += ["", "## Storage", "",
                "| K | task | classes | bytes | cumulative | K·\\|w\\| (full copies) | cumulative ÷ K·\\|w\\| |",
                "|---:|---|---:|---:|---:|---:|---:|"]
        for k, r in enumerate(s["tasks"], 1):
            out.append(f"| {k} | `{r['task']}` | {r['classes']} | {r['bytes']:,} | {r['cumulative_bytes']:,} | "
                       f"{r['full_copy_cumulative_bytes']:,} | {100 * r['cumulative_bytes'] / r['full_copy_cumulative_bytes']:.2f}% |")
        out += ["", f"After K={s['task_count']} tasks the service stores **{s['total_bytes'] / 1e6:.2f} MB** of task "
                f"artifacts against {s['full_copy_total_bytes'] / 1e6:.1f} MB for K full copies of the backbone "
                f"(**{100 * s['ratio']:.2f}%**, {1 / s['ratio']:.0f}× less); measured ÷ the 4Lmd law's bytes = "
                f"{s['measured_over_theoretical']:.4f} (the difference is the safetensors headers).", "",
                "![cumulative storage vs K](stream_storage.png)", "",
                "Drawn by `streamlearn storage --plot docs/stream_storage.png` on the stream's catalogue."]
    out += ["", "## Time per task", "", "| task | train / validation / test | submit → succeeded |", "|---|---|---:|"]
    for j in data["jobs"]:
        e = j["examples"]
        out.append(f"| `{j['task']}` | {e['train']:,} / {e['validation']:,} / {e['test']:,} | {j['seconds']:.0f} s |")
    out.append("")
    (docs_dir / "STREAM.md").write_text("\n".join(out), encoding="utf-8")
    return "\n".join(out)


def _shown(path: str) -> str:
    """A path as the docs show it: relative to the repository when it is nearby (`../shared/data` wherever the run's checkout was)."""
    parts = Path(path).resolve().parts
    if parts[-2:] == ("shared", "data"):
        return "../shared/data"
    rel = os.path.relpath(path, task_data.REPO)
    return rel if rel.count("..") <= 2 else path


def _cross_check(data: dict, docs_dir: Path) -> list[str]:
    """Compare R[j, j] with the in-process runs of the paper table made with the same settings, if any."""
    path = docs_dir / "results" / "paper_table.json"
    st = dict(data["settings"], lr=data["settings"].get("lr") or data.get("lr_used"))
    if not path.exists() or st.get("lr") is None:
        return []
    table = json.loads(path.read_text(encoding="utf-8"))
    ts = table.get("settings", {})
    if any(ts.get(k) != st.get(k) for k in ("train_cap", "val_cap", "test_cap", "max_length", "epochs")):
        return []
    runs = [r for r in table["runs"]
            if r["method"] == st["method"] and r["seed"] == 0 and abs(r["lr"] - st["lr"]) <= 1e-12 * st["lr"]]
    same = {r["task"]: r["test_accuracy"] for r in runs}
    pairs = [(n, data["rows"][j][n], same[n]) for j, n in enumerate(data["tasks"]) if n in same and j < len(data["rows"])]
    if not pairs:
        return []
    equal = [n for n, a, b in pairs if a == b]
    return ["", f"Cross-check with the in-process runs of RESULTS.md (same files, caps, seed, lr {st['lr']:g}): R[j, j] equals "
            f"the in-process test accuracy exactly on {len(equal)} of {len(pairs)} tasks"
            + ("." if len(equal) == len(pairs) else "; differing: " + ", ".join(f"`{n}` {a:.4f} vs {b:.4f}" for n, a, b in pairs if a != b) + ".")
            + _versions(runs, data)]


def _versions(runs: list[dict], data: dict) -> str:
    """Which code made each side: equal numbers are only expected from the same code and libraries."""
    theirs = sorted({str(r.get("git_commit", "?")) for r in runs})
    ours = data.get("provenance", {}).get("git_commit", "?")
    if theirs == [ours]:
        return ""
    return (f" The in-process runs came from commit(s) {', '.join(theirs)} and this stream from commit {ours}: training is "
            "seeded, so the two agree exactly only when the code and the libraries (torch, transformers) are the same.")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    docs_dir = Path(args.docs_dir)
    json_path = docs_dir / "results" / "stream.json"
    if args.report_only:
        data = json.loads(json_path.read_text(encoding="utf-8"))
    else:
        data = run(args, argv, json_path)
    render(data, docs_dir)
    m = metrics(data["tasks"], data["rows"])
    print(f"wrote {docs_dir / 'STREAM.md'}: average accuracy {m['average_accuracy']:.4f}, BWT {m['bwt']:.4g}, "
          f"forgetting {m['forgetting']:.4g}", flush=True)
    return data


if __name__ == "__main__":
    main()
