"""Speed ratios, each measured side by side in one run: A B A B ..., medians of the repeats.

    python -m bench.speed                                  # every section, real task sst2
    python -m bench.speed --sections train inference       # a subset (merged into the JSON)
    python -m bench.speed --report-only                    # rebuild docs/SPEED.md from the JSON

Sections:
- train: training examples/s, adapter ÷ full fine-tuning, on the same batches (the engine's loop);
- inference: examples/s of the backbone with an adapter attached ÷ the bare backbone (same batches);
- speedups: length bucketing on/off, inference_mode vs no_grad, bf16 autocast on/off, and what a
  tokenization cache could save at most;
- service: (submit -> succeeded wall time) ÷ (in-process load + fit + save wall time) for the same
  files, with a warm worker subprocess, in embedded mode (SQLite + filesystem broker) and with Redis;
- residency: on a fresh worker, the first and second job's times (the backbone is loaded once).

Writes `<docs-dir>/SPEED.md` and `<docs-dir>/results/speed.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from bench import machine as machine_info
from bench import tasks as task_data
from bench.worker import Worker, env_for, in_this_process

SECTIONS = ("train", "inference", "speedups", "service", "residency")
TARGETS = {"train": 1.3, "inference": 0.9, "service": 1.05}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=str(task_data.DEFAULT_DATA_DIR), help="Folder of task folders (default: ../shared/data).")
    p.add_argument("--task", default="sst2", help="The real task whose texts are timed (default: sst2).")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--repeats", type=int, default=5, help="Timed repeats of each side (median reported; at least 5 for the docs).")
    p.add_argument("--train-examples", type=int, default=256, help="Examples per timed training pass.")
    p.add_argument("--infer-examples", type=int, default=512, help="Examples per timed inference pass.")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--service-train-cap", type=int, default=1000, help="Train examples of the service-overhead task.")
    p.add_argument("--service-eval-cap", type=int, default=200, help="Validation and test examples of that task.")
    p.add_argument("--service-epochs", type=int, default=1)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/11",
                   help="Broker of the Redis run ('' skips it); a private queue name is used on it.")
    p.add_argument("--backbone", default=None, help="Backbone directory (default: $STREAMLEARN_BACKBONE or all-MiniLM-L6-v2).")
    p.add_argument("--device", default=None, help="auto, cpu, cuda (default: $STREAMLEARN_DEVICE, auto).")
    p.add_argument("--threads", type=int, default=0, help="torch threads here and in the workers (0 = torch's default).")
    p.add_argument("--docs-dir", default=str(task_data.REPO / "docs"), help="Where SPEED.md and results/speed.json go.")
    p.add_argument("--report-only", action="store_true", help="Only rebuild SPEED.md from the JSON.")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ timing

def interleaved(sides: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict:
    """Run each side once untimed, then `repeats` rounds of A B (C ...), alternating the order.

    Each side returns its own measurement (examples/s or seconds). Returns per side the values
    and their median, plus the per-round ratios first/second (for two sides).
    """
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    values: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            values[name].append(sides[name]())
    out = {"values": values, "median": {n: statistics.median(v) for n, v in values.items()}, "repeats": repeats}
    if len(names) == 2:
        a, b = names
        out["ratio_of_medians"] = out["median"][a] / out["median"][b]
        out["median_of_ratios"] = statistics.median(x / y for x, y in zip(values[a], values[b]))
    return out


def _examples(args):
    ds = task_data.load(args.data_dir, args.task, seed=0)
    return ds


def _batch_list(examples, ds, backbone, args, shuffle=True, bucket_batches=50, by_length=False):
    from streamlearn.batches import Batches

    index = {name: i for i, name in enumerate(ds.labels)}
    b = Batches(examples, backbone.tokenizer, index, args.batch_size, args.max_length, shuffle=shuffle, seed=0,
                bucket_batches=bucket_batches, by_length=by_length)
    return list(b)


def train_pass(backbone, method: str, batches: list, classes: int, autocast: bool = False) -> float:
    """One engine training epoch of a fresh task over `batches`; returns training examples/s."""
    import torch

    from streamlearn import training
    from streamlearn.engine import TaskModel
    from streamlearn.methods import MethodConfig, build_parts, default_lr

    torch.manual_seed(0)
    model = TaskModel(backbone, build_parts(backbone, MethodConfig(method=method), classes))
    cfg = training.TrainConfig(epochs=1, lr=default_lr(method), seed=0)
    cast = torch.autocast(backbone.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with cast:
        log = training.train(model, batches, [], cfg)
    return log.train_examples_per_s


def timed_forward(get_model: Callable, mode: str = "inference", autocast: bool = False) -> Callable[[dict], float]:
    """A function timing one forward of a batch (without autograd); attaching happens outside the timing.

    Args:
        get_model: Returns a context manager yielding the model (e.g. `nullcontext(TaskModel(...))`).
        mode: "inference" (`torch.inference_mode`) or "no_grad".
        autocast: Run under bf16 autocast.
    """
    import torch

    def run(batch: dict) -> float:
        with get_model() as model:
            model.eval()
            device = next(model.parameters()).device
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            guard = torch.inference_mode() if mode == "inference" else torch.no_grad()
            cast = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
            with guard, cast:
                start = time.perf_counter()
                model(**inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                return time.perf_counter() - start

    return run


def interleaved_batches(sides: dict[str, Callable[[dict], float]], batches: list, repeats: int) -> dict:
    """Like `interleaved`, but alternating the sides batch by batch (A B, B A, ...) inside every round.

    The finest interleaving there is: a burst of load from other processes hits both sides alike.
    Each round's value is examples/s over all batches; one untimed round warms both sides up.
    """
    names = list(sides)
    n = sum(len(b["input_ids"]) for b in batches)
    for b in batches:
        for name in names:
            sides[name](b)
    values: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        spent = dict.fromkeys(names, 0.0)
        for i, b in enumerate(batches):
            for name in (names if (r + i) % 2 == 0 else names[::-1]):
                spent[name] += sides[name](b)
        for name in names:
            values[name].append(n / spent[name])
    out = {"values": values, "median": {k: statistics.median(v) for k, v in values.items()}, "repeats": repeats,
           "interleaving": "per batch"}
    if len(names) == 2:
        a, b = names
        out["ratio_of_medians"] = out["median"][a] / out["median"][b]
        out["median_of_ratios"] = statistics.median(x / y for x, y in zip(values[a], values[b]))
    return out


def section_train(args, backbone, ds) -> dict:
    examples = task_data.stratified(ds.train, args.train_examples, seed=0)
    batches = _batch_list(examples, ds, backbone, args)
    res = interleaved({m: (lambda m=m: train_pass(backbone, m, batches, len(ds.labels))) for m in ("adapter", "full")},
                      args.repeats)
    res["examples"] = len(examples)
    res["unit"] = "training examples/s"
    return res


def section_inference(args, backbone, ds) -> dict:
    import torch

    from streamlearn.engine import TaskModel
    from streamlearn.engine.parts import TaskParts
    from streamlearn.methods import MethodConfig, build_parts

    examples = task_data.stratified(ds.test, args.infer_examples, seed=0)
    batches = _batch_list(examples, ds, backbone, args, shuffle=False, by_length=True)
    torch.manual_seed(0)
    task = TaskModel(backbone, build_parts(backbone, MethodConfig(method="adapter"), len(ds.labels))).eval()
    # the bare backbone: a task with a head only, through the same engine path
    bare = TaskModel(backbone, TaskParts(len(ds.labels), backbone.info.hidden, "mean").to(backbone.device)).eval()

    res = interleaved_batches({"adapter": timed_forward(lambda: contextlib.nullcontext(task)),
                               "bare": timed_forward(lambda: contextlib.nullcontext(bare))}, batches, args.repeats)
    res["examples"] = len(examples)
    res["unit"] = "inference examples/s (forward, mean pooling + head)"
    return res


def section_speedups(args, backbone, ds) -> dict:
    """Length bucketing, inference_mode, bf16 autocast, tokenization cost."""
    import torch

    from streamlearn.batches import Batches
    from streamlearn.engine import TaskModel
    from streamlearn.methods import MethodConfig, build_parts

    out: dict = {}
    examples = task_data.stratified(ds.train, args.train_examples, seed=0)
    bucketed = _batch_list(examples, ds, backbone, args, bucket_batches=50)
    plain = _batch_list(examples, ds, backbone, args, bucket_batches=1)
    pad = lambda bl: 1 - sum(int(b["attention_mask"].sum()) for b in bl) / sum(b["attention_mask"].numel() for b in bl)  # noqa: E731
    out["bucketing"] = interleaved({
        "bucketed": lambda: train_pass(backbone, "adapter", bucketed, len(ds.labels)),
        "unbucketed": lambda: train_pass(backbone, "adapter", plain, len(ds.labels)),
    }, args.repeats)
    out["bucketing"]["padding_fraction"] = {"bucketed": pad(bucketed), "unbucketed": pad(plain)}
    out["bucketing"]["unit"] = "adapter training examples/s"

    infer_examples = task_data.stratified(ds.test, args.infer_examples, seed=0)
    infer_batches = _batch_list(infer_examples, ds, backbone, args, shuffle=False, by_length=True)
    torch.manual_seed(0)
    task = TaskModel(backbone, build_parts(backbone, MethodConfig(method="adapter"), len(ds.labels))).eval()

    def infer(mode: str, autocast: bool = False) -> Callable[[dict], float]:
        return timed_forward(lambda: contextlib.nullcontext(task), mode=mode, autocast=autocast)

    out["inference_mode"] = interleaved_batches({"inference_mode": infer("inference"), "no_grad": infer("no_grad")},
                                                infer_batches, args.repeats)
    out["inference_mode"]["unit"] = "adapter inference examples/s"
    out["bf16_train"] = interleaved({
        "bf16": lambda: train_pass(backbone, "adapter", bucketed, len(ds.labels), autocast=True),
        "fp32": lambda: train_pass(backbone, "adapter", bucketed, len(ds.labels)),
    }, args.repeats)
    out["bf16_train"]["unit"] = "adapter training examples/s"
    out["bf16_infer"] = interleaved_batches({"bf16": infer("inference", autocast=True), "fp32": infer("inference")},
                                            infer_batches, args.repeats)
    out["bf16_infer"]["unit"] = "adapter inference examples/s"

    # Tokenization: what a per-dataset cache could save at most, against one real fit's time.
    index = {name: i for i, name in enumerate(ds.labels)}

    def tokenize() -> float:
        start = time.perf_counter()
        for split in (ds.train, ds.validation, ds.test):
            Batches(split, backbone.tokenizer, index, args.batch_size, args.max_length)
        return time.perf_counter() - start

    tok = [tokenize() for _ in range(args.repeats)]
    out["tokenization"] = {
        "seconds": tok, "median_seconds": statistics.median(tok),
        "examples": len(ds.train) + len(ds.validation) + len(ds.test),
    }
    return out


# ------------------------------------------------------------------------------------------ service

def wait_job(job_id: str, poll: float = 0.2, timeout: float = 3600) -> dict:
    """Poll the job's status (one light query every `poll` s) until it ends; return its full status dict.

    The poll is light and slow on purpose: on a 2-core machine a busy poller would steal CPU from
    the worker it is timing. The job's end time comes from the catalogue, not from the poll.
    """
    from sqlalchemy import select

    from streamlearn.catalogue.models import Job
    from streamlearn.catalogue.queries import job_status
    from streamlearn.catalogue.session import session_scope

    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with session_scope(readonly=True) as s:
            status = str(s.scalar(select(Job.status).where(Job.id == job_id)))
        if status in ("succeeded", "failed"):
            with session_scope(readonly=True) as s:
                info = job_status(s, job_id)
            if info["status"] == "failed":
                raise RuntimeError(f"job {job_id} failed: {info['error']}")
            return info
        time.sleep(poll)
    raise RuntimeError(f"job {job_id} did not finish in {timeout} s")


def submit_and_wait(files: dict[str, Path], name: str, method_cfg, train_cfg) -> tuple[float, dict]:
    """Seconds from calling `submit_task` to the job's `finished_at` in the catalogue (succeeded).

    The returned job info gains `phases`: from the submit call to the worker starting the job
    (validate, store, record, enqueue, pick up), the job's run on the worker, and from its end to
    this process seeing it (the poll's delay, not counted in the returned seconds).
    """
    from streamlearn.pipeline import submit_task

    wall0 = time.time()
    sub = submit_task(files["train"], name=name, validation=files["validation"], test=files["test"],
                      method=method_cfg, train_config=train_cfg, force=True)
    info = wait_job(sub.job_id)
    seen = time.time()
    started, finished = _timestamp(info.get("started_at")), _timestamp(info.get("finished_at"))
    if started is None or finished is None:
        raise RuntimeError(f"job {sub.job_id} has no start or finish time in the catalogue")
    info["phases"] = {"to_start": started - wall0, "run": finished - started, "to_seen": seen - finished}
    return finished - wall0, info


def _timestamp(value) -> float | None:
    """A catalogue ISO timestamp as POSIX seconds (naive ones are UTC)."""
    if not value:
        return None
    dt = datetime.fromisoformat(str(value))
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def in_process(files: dict[str, Path], backbone, method_cfg, train_cfg, out_dir: Path) -> float:
    """Wall seconds of what `streamlearn train` does once the backbone is loaded: load, fit, save."""
    from streamlearn.data import load_dataset
    from streamlearn.pipeline import fit, save

    start = time.perf_counter()
    ds = load_dataset(files["train"], files["validation"], files["test"], seed=train_cfg.seed)
    result = fit(ds, method_cfg, train_cfg, backbone)
    save(result, out_dir / "in-process.safetensors")
    return time.perf_counter() - start


def _job_run_seconds(info: dict) -> float | None:
    started, finished = info.get("started_at"), info.get("finished_at")
    if not started or not finished:
        return None
    return (datetime.fromisoformat(str(finished)) - datetime.fromisoformat(str(started))).total_seconds()


def section_service(args, backbone, ds, work: Path) -> dict:
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    capped = task_data.load(args.data_dir, args.task, args.service_train_cap, args.service_eval_cap, args.service_eval_cap)
    files = task_data.write_files(capped, work / "task")
    method_cfg = MethodConfig(method="adapter")
    train_cfg = TrainConfig(epochs=args.service_epochs, max_length=args.max_length, batch_size=args.batch_size)
    modes = [("embedded", None)] + ([("redis", args.redis_url)] if args.redis_url else [])
    out: dict = {"task": args.task, "examples": {"train": len(capped.train), "validation": len(capped.validation),
                                                   "test": len(capped.test)}, "epochs": args.service_epochs}
    for mode, broker in modes:
        home = work / f"home-{mode}"
        queue = f"bench-speed-{os.getpid()}" if broker else None
        env = env_for(home, args.backbone, args.device, broker, queue)
        with in_this_process(env):
            if broker and not _redis_up(broker):
                out[mode] = {"skipped": f"no Redis at {broker}"}
                continue
            worker = Worker(env, work / f"worker-{mode}.log")
            try:
                ready = worker.wait_ready()
                submit_and_wait(files, "warmup", method_cfg, train_cfg)  # the worker is warm from here on
                counter, phases = iter(range(1000)), []

                def service() -> float:
                    seconds, info = submit_and_wait(files, f"speed-{next(counter)}", method_cfg, train_cfg)
                    phases.append(info.get("phases"))
                    return seconds

                res = interleaved({
                    "service": service,
                    "in_process": lambda: in_process(files, backbone, method_cfg, train_cfg, work),
                }, args.repeats, warmup=0)
            finally:
                worker.stop()
        res["worker_ready_seconds"] = ready
        res["phases"] = phases
        if phases and all(phases):
            res["phase_medians"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        res["overhead_seconds"] = res["median"]["service"] - res["median"]["in_process"]
        res["unit"] = "wall seconds per job"
        out[mode] = res
    return out


def _redis_up(url: str) -> bool:
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        return True
    except Exception:
        return False


def section_residency(args, backbone, ds, work: Path) -> dict:
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    capped = task_data.load(args.data_dir, args.task, args.service_train_cap, args.service_eval_cap, args.service_eval_cap)
    files = task_data.write_files(capped, work / "task")
    method_cfg = MethodConfig(method="adapter")
    train_cfg = TrainConfig(epochs=args.service_epochs, max_length=args.max_length, batch_size=args.batch_size)
    env = env_for(work / "home-residency", args.backbone, args.device)
    with in_this_process(env):
        worker = Worker(env, work / "worker-residency.log")
        try:
            # Submitted at once, before the worker is ready: the first job waits for the boot.
            first_wall, first = submit_and_wait(files, "first", method_cfg, train_cfg)
            ready = time.perf_counter() - worker.started
            second_wall, second = submit_and_wait(files, "second", method_cfg, train_cfg)
        finally:
            worker.stop()
    t0 = time.perf_counter()
    _load_fresh_backbone(args)
    load_seconds = time.perf_counter() - t0
    return {
        "first": {"submit_to_succeeded": first_wall, "run_seconds": _job_run_seconds(first)},
        "second": {"submit_to_succeeded": second_wall, "run_seconds": _job_run_seconds(second)},
        "worker_start_to_first_done": ready,
        "backbone_load_seconds": load_seconds,
    }


def _load_fresh_backbone(args) -> None:
    """Load the backbone in a new process (what a worker pays once, at boot)."""
    code = ("import sys; from streamlearn.backbone import load_backbone; "
            "load_backbone(sys.argv[1] or None, sys.argv[2] or None)")
    subprocess.run([sys.executable, "-c", code, args.backbone or "", args.device or ""], check=True,
                   capture_output=True)


# ------------------------------------------------------------------------------------------ report

def _met(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "n/a"
    return "**met**" if (value >= target if higher else value <= target) else "**not met**"


def render(data: dict, docs_dir: Path) -> str:
    mach = data["machine"]
    s = data["sections"]
    out = ["# Speed: adapters vs fine-tuning, and the service's overhead", "",
           "Generated by `bench/speed.py`; never edit by hand. Regenerate:", "", "```",
           data.get("command", "python -m bench.speed"), "```", "",
           f"Machine: {machine_info.sentence(mach)}; device **{mach['device']}**"
           + ("" if mach.get("gpu") else " (no GPU was lent to this session)") + ".",
           f"Backbone: {data['backbone']['name']} ({data['backbone']['params']:,} parameters). Texts: the real task "
           f"`{data['task']}`, max length {data['settings']['max_length']}, batch {data['settings']['batch_size']}.",
           "Method: each ratio's two sides run in the same process after one untimed warm-up of each. Training and service "
           "sides alternate whole passes or jobs (A B, B A, ...); inference sides alternate batch by batch inside every pass. "
           "The tables give the medians of the repeats and the median of the per-round ratios. The CPU is shared with "
           "other work, so single values vary; the interleaving makes the ratios fair.",
           f"Last updated {data.get('updated_at', '?')} (each section records when it ran)."]
    if data["settings"].get("threads") == 1:
        out.append("Threads: one torch thread per process (`--threads 1`, also passed to the workers). With two threads per "
                   "process on this shared 2-core CPU, the OpenMP threads wait on each other whenever another process "
                   "takes a core, which hurts the adapters' many small operations most; one thread measures the work, "
                   "not the scheduler.")
    out.append("")
    out += ["## Targets", "", "| ratio | median A | median B | A ÷ B (medians) | median of per-round ratios | target | |",
            "|---|---:|---:|---:|---:|---:|---|"]
    if "train" in s:
        t = s["train"]
        out.append(f"| training examples/s, adapter ÷ full ({t['examples']} examples, {t['repeats']} repeats) | "
                   f"{t['median']['adapter']:.1f} | {t['median']['full']:.1f} | {t['ratio_of_medians']:.3f} | "
                   f"{t['median_of_ratios']:.3f} | ≥ {TARGETS['train']} | {_met(t['ratio_of_medians'], TARGETS['train'])} |")
    if "inference" in s:
        t = s["inference"]
        out.append(f"| inference examples/s, adapter ÷ bare backbone ({t['examples']} examples, {t['repeats']} repeats) | "
                   f"{t['median']['adapter']:.1f} | {t['median']['bare']:.1f} | {t['ratio_of_medians']:.3f} | "
                   f"{t['median_of_ratios']:.3f} | ≥ {TARGETS['inference']} | {_met(t['ratio_of_medians'], TARGETS['inference'])} |")
    if "service" in s:
        sv = s["service"]
        for mode in ("embedded", "redis"):
            t = sv.get(mode)
            if not t:
                continue
            if "skipped" in t:
                out.append(f"| service overhead, {mode} | | | | | ≤ {TARGETS['service']} | not measured: {t['skipped']} |")
                continue
            out.append(f"| service overhead, {mode}: submit → succeeded ÷ in-process load+fit+save (s) | "
                       f"{t['median']['service']:.2f} s | {t['median']['in_process']:.2f} s | {t['ratio_of_medians']:.3f} | "
                       f"{t['median_of_ratios']:.3f} | ≤ {TARGETS['service']} | {_met(t['ratio_of_medians'], TARGETS['service'], higher=False)} |")
    if "service" in s:
        sv = s["service"]
        out += ["", "## Service overhead", "",
                f"The same files (`{data['task']}` capped to {sv['examples']['train']} train, {sv['examples']['validation']} "
                f"validation, {sv['examples']['test']} test; adapter, {sv['epochs']} epoch) trained in this process "
                "(load + fit + save, backbone already loaded) and through `submit_task` to a warm `streamlearn worker` "
                "subprocess (a warm-up job first), timed from the `submit_task` call to the job's `finished_at` in the catalogue "
                "(the client polls its status every 0.2 s with one light query, so that it does not steal the worker's "
                "CPU: an earlier version polled a full status query every 20 ms, and on 2 cores that poller alone made "
                "the worker's run about 10% slower)."]
        for mode in ("embedded", "redis"):
            t = sv.get(mode)
            if t and "skipped" not in t:
                out.append(f"- {mode}: service {', '.join(f'{v:.2f}' for v in t['values']['service'])} s; in-process "
                           f"{', '.join(f'{v:.2f}' for v in t['values']['in_process'])} s; overhead "
                           f"{t['overhead_seconds']:+.2f} s per job (medians); worker ready {t['worker_ready_seconds']:.1f} s after start."
                           + (f" Phases of a service job (medians): submit → worker starts it {t['phase_medians']['to_start']:.2f} s, "
                              f"run on the worker {t['phase_medians']['run']:.2f} s, end → seen by the client "
                              f"{t['phase_medians']['to_seen']:.2f} s." if t.get("phase_medians") else ""))
        out.append("- Outside the run, the overhead is a fixed cost per job (validating and copying the files, catalogue "
                   "rows, the queue hop), so its ratio falls as jobs grow; inside the run, the worker also writes "
                   "progress and heartbeats from a thread, stores the artifact and records it in one transaction.")
    if "residency" in s:
        r = s["residency"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f} s"  # noqa: E731
        out += ["", "## Backbone residency", "",
                "A fresh worker subprocess; job 1 is submitted at once (it waits for the boot, which loads the backbone), "
                "job 2 after job 1 succeeded, same files and settings.", "",
                "| | submit → succeeded | running → succeeded (catalogue) |", "|---|---:|---:|",
                f"| job 1 (fresh worker) | {fmt(r['first']['submit_to_succeeded'])} | {fmt(r['first']['run_seconds'])} |",
                f"| job 2 (same worker) | {fmt(r['second']['submit_to_succeeded'])} | {fmt(r['second']['run_seconds'])} |", "",
                f"Loading the backbone in a new process takes {r['backbone_load_seconds']:.1f} s (imports included). "
                "Job 1's submit → succeeded includes waiting for the worker's boot, where it loads the backbone once; "
                + (f"the two jobs' run times differ by {r['second']['run_seconds'] - r['first']['run_seconds']:+.2f} s, "
                   f"{'far below' if abs(r['second']['run_seconds'] - r['first']['run_seconds']) < 0.5 * r['backbone_load_seconds'] else 'not clearly below'} "
                   "the load time: no job pays the backbone load, and the second job reuses the resident backbone."
                   if r['first']['run_seconds'] is not None and r['second']['run_seconds'] is not None else "")]
    if "speedups" in s:
        sp = s["speedups"]
        out += ["", "## Speed-ups tried", "", "| speed-up | on | off | on ÷ off | kept |", "|---|---:|---:|---:|---|"]
        b = sp["bucketing"]
        out.append(f"| length bucketing (sort by length within windows of 50 shuffled batches), adapter training ex/s; "
                   f"padding {100 * b['padding_fraction']['bucketed']:.0f}% vs {100 * b['padding_fraction']['unbucketed']:.0f}% of tokens | "
                   f"{b['median']['bucketed']:.1f} | {b['median']['unbucketed']:.1f} | {b['ratio_of_medians']:.3f} | "
                   f"{'yes (engine default)' if b['ratio_of_medians'] > 1 else 'no gain here; kept, it never costs accuracy'} |")
        im = sp["inference_mode"]
        out.append(f"| `torch.inference_mode` vs `no_grad` for evaluation, ex/s | {im['median']['inference_mode']:.1f} | "
                   f"{im['median']['no_grad']:.1f} | {im['ratio_of_medians']:.3f} | yes (engine default; never slower in principle) |")
        bt, bi = sp["bf16_train"], sp["bf16_infer"]
        out.append(f"| bf16 autocast, adapter training ex/s | {bt['median']['bf16']:.1f} | {bt['median']['fp32']:.1f} | "
                   f"{bt['ratio_of_medians']:.3f} | {'option (`--autocast bf16` in the paper table)' if bt['ratio_of_medians'] > 1.05 else 'no: not faster here'} |")
        out.append(f"| bf16 autocast, adapter inference ex/s | {bi['median']['bf16']:.1f} | {bi['median']['fp32']:.1f} | "
                   f"{bi['ratio_of_medians']:.3f} | {'option' if bi['ratio_of_medians'] > 1.05 else 'no: not faster here'} |")
        out.append("")
        if bt["ratio_of_medians"] < 1 and bi["ratio_of_medians"] < 1:
            out.append("bf16 autocast is slower on this device for both training and inference, so it is not used and its "
                       "accuracy cost was not measured in the paper table; `python -m bench.paper_table --autocast bf16` "
                       "runs that check where bf16 is fast (a GPU).")
        else:
            out.append("bf16 autocast is faster here for at least one side; check its accuracy cost with "
                       "`python -m bench.paper_table --autocast bf16 --docs-dir <another folder>` before using it.")
        tk = sp["tokenization"]
        out.append("")
        out.append(f"Tokenization cache: tokenizing all of `{data['task']}` ({tk['examples']:,} examples, three splits) takes "
                   f"{tk['median_seconds']:.2f} s (median of {len(tk['seconds'])}). A cache keyed by the dataset's sha256 could save "
                   "at most that per job, and only when the same dataset is trained again; "
                   + (f"against a training pass of {tk['examples'] / s['train']['median']['adapter']:.0f} s for the same examples "
                      f"that is {100 * tk['median_seconds'] / (tk['examples'] / s['train']['median']['adapter']):.1f}%, "
                      if "train" in s else "")
                   + "so it is not implemented.")
    out.append("")
    (docs_dir / "SPEED.md").write_text("\n".join(out), encoding="utf-8")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    docs_dir = Path(args.docs_dir)
    json_path = docs_dir / "results" / "speed.json"
    if args.report_only:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        render(data, docs_dir)
        print(f"wrote {docs_dir / 'SPEED.md'}")
        return data
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the worker subprocesses inherit it
    from streamlearn.backbone import load_backbone

    backbone = load_backbone(args.backbone, args.device)
    ds = task_data.load(args.data_dir, args.task, seed=0)
    data = json.loads(json_path.read_text(encoding="utf-8")) if json_path.exists() else {}
    if data.get("task") not in (None, args.task) or data.get("backbone", {}).get("fingerprint") not in (None, backbone.info.fingerprint):
        data = {}  # other texts or another backbone: the old sections are not comparable
    data.setdefault("sections", {})
    data.update({
        "task": args.task, "machine": machine_info.describe(backbone.device),
        "backbone": {k: getattr(backbone.info, k) for k in ("name", "fingerprint", "params")},
        "settings": {"max_length": args.max_length, "batch_size": args.batch_size, "repeats": args.repeats,
                     "threads": args.threads or None},
        "command": "python -m bench.speed" + (" " + shlex.join(argv) if argv else ""),
    })
    work = Path(tempfile.mkdtemp(prefix="bench-speed-"))
    try:
        for name in args.sections:
            print(f"speed: {name} ...", flush=True)
            start = time.perf_counter()
            if name == "train":
                res = section_train(args, backbone, ds)
            elif name == "inference":
                res = section_inference(args, backbone, ds)
            elif name == "speedups":
                res = section_speedups(args, backbone, ds)
            elif name == "service":
                res = section_service(args, backbone, ds, work)
            else:
                res = section_residency(args, backbone, ds, work)
            res["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            data["sections"][name] = res
            print(f"speed: {name} done in {time.perf_counter() - start:.0f} s: {_brief(res)}", flush=True)
            data["updated_at"] = res["measured_at"]
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    render(data, docs_dir)
    print(f"wrote {docs_dir / 'SPEED.md'} and {json_path}", flush=True)
    return data


def _brief(res: dict) -> str:
    if "ratio_of_medians" in res:
        return f"ratio {res['ratio_of_medians']:.3f}"
    parts = [f"{k} {v['ratio_of_medians']:.3f}" for k, v in res.items() if isinstance(v, dict) and "ratio_of_medians" in v]
    return ", ".join(parts) or "ok"


if __name__ == "__main__":
    main()
