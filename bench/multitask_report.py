"""docs/MULTITASK.md from the JSON that bench/multitask.py writes (kept apart so the runner stays short)."""

from __future__ import annotations

import math
import statistics

GOALS = {"drop2_points": 1.0, "of_ceiling": 0.9, "mixed_k50": 0.9, "cache_3": 1.5, "half_points": 0.2}
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Two-sided 95% Student t quantiles by degrees of freedom (n − 1)."""


def _interval(values: list[float]) -> str:
    """Mean ± the 95% t half-width (over the given values), in points."""
    if not values:
        return "n/a"
    mean = statistics.mean(values)
    if len(values) < 2:
        return f"{mean:+.2f} (one task: no interval)"
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{mean:+.2f} ± {half:.2f}"


def _met(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _accuracy(data: dict) -> list[str]:
    runs = {(r["task"], r["drop"]): r for r in data.get("accuracy", [])}
    plan = data.get("accuracy_plan", {"tasks": sorted({t for t, _ in runs}), "drops": [0, 1, 2, 3]})
    drops = plan["drops"]
    done = [t for t in plan["tasks"] if all((t, n) in runs for n in drops)]
    missing = [t for t in plan["tasks"] if t not in done]
    lines = ["## AdapterDrop accuracy", "",
             "Test accuracy (%) of the adapter with AdapterDrop N (no adapters and the backbone's own LayerNorms in "
             "the embeddings and the lowest N layers; Rücklé et al. 2021, arXiv:2010.11918). Each task uses its adapter "
             "learning rate from docs/results/paper_table.json; seed " + str(data["settings"]["seed"]) + ". "
             "Evaluated through the engine from the stored artifact. † marks a collapsed run (one class predicted "
             "for every test example); collapsed runs are listed, not averaged silently.", "",
             "| task | lr | " + " | ".join(f"N={n}" for n in drops) + " | cached layers (N=1..3) |",
             "|---|---|" + "---|" * len(drops) + "---|"]
    for task in plan["tasks"]:
        cells = []
        for n in drops:
            r = runs.get((task, n))
            cells.append("not run" if r is None else f"{100 * r['test_accuracy']:.2f}" + (" †" if r["collapsed"] else ""))
        lr = next((r["lr"] for (t, _), r in runs.items() if t == task), None)
        cached = ", ".join(str(runs[(task, n)]["cached_layers"]) for n in drops[1:] if (task, n) in runs)
        lines.append(f"| {task} | {lr if lr is not None else '–'} | " + " | ".join(cells) + f" | {cached} |")
    if done:
        means = {n: statistics.mean(100 * runs[(t, n)]["test_accuracy"] for t in done) for n in drops}
        lines.append("| **mean** (" + str(len(done)) + " tasks) | | " + " | ".join(f"**{means[n]:.2f}**" for n in drops) + " | |")
        lines.append("")
        for n in drops[1:]:
            diffs = [100 * (runs[(t, n)]["test_accuracy"] - runs[(t, 0)]["test_accuracy"]) for t in done]
            lines.append(f"- N={n} − N=0: {_interval(diffs)} points (mean over the {len(done)} tasks, 95% t-interval "
                         "across tasks; one seed per task)")
        if 0 in means and 2 in means:
            # A collapsed run at any depth would decide the comparison by itself: judge the goal on
            # the tasks whose runs all learned, and say so.
            clean = [t for t in done if not any(runs[(t, n)]["collapsed"] for n in drops)]
            if clean and len(clean) < len(done):
                drop2 = statistics.mean(100 * (runs[(t, 0)]["test_accuracy"] - runs[(t, 2)]["test_accuracy"]) for t in clean)
                lines.append(f"- Goal: N=2 within {GOALS['drop2_points']} point of N=0, judged on the {len(clean)} tasks with "
                             f"no collapsed run ({', '.join(clean)}): mean N=0 − mean N=2 = {drop2:.2f} points → "
                             f"{_met(drop2 <= GOALS['drop2_points'])} (over all {len(done)} tasks, collapsed runs included: "
                             f"{means[0] - means[2]:.2f})")
            else:
                drop2 = means[0] - means[2]
                lines.append(f"- Goal: N=2 within {GOALS['drop2_points']} point of N=0: mean N=0 − mean N=2 = {drop2:.2f} "
                             f"points → {_met(drop2 <= GOALS['drop2_points'])}")
        collapsed = [f"{t} N={n}" for (t, n), r in runs.items() if r["collapsed"]]
        lines.append(f"- Collapsed runs: {', '.join(collapsed) if collapsed else 'none'}")
    if missing:
        lines.append(f"- Not run (the CPU budget ran out before them): {', '.join(missing)}")
    return lines + [""]


def _half(data: dict) -> list[str]:
    runs = [r for r in data.get("accuracy", []) if r["drop"] == 0 and "float16" in r["stores"]]
    lines = ["## Half-size artifacts", ""]
    if not runs:
        return lines + ["Not run.", ""]
    lines += ["The N=0 adapters stored as float16 and bfloat16 (`--store-dtype`: the trained float32 tensors cast once), "
              "reloaded and evaluated on the test split through the engine.", "",
              "| task | float32 bytes | float16 bytes | bfloat16 bytes | float32 acc | float16 Δ | bfloat16 Δ |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        s = r["stores"]
        lines.append(f"| {r['task']} | {s['float32']['bytes']} | {s['float16']['bytes']} | {s['bfloat16']['bytes']} | "
                     f"{100 * s['float32']['accuracy']:.2f} | {100 * (s['float16']['accuracy'] - s['float32']['accuracy']):+.2f} | "
                     f"{100 * (s['bfloat16']['accuracy'] - s['float32']['accuracy']):+.2f} |")
    lines.append("")
    for dtype in ("float16", "bfloat16"):
        ratio = sum(r["stores"][dtype]["bytes"] for r in runs) / sum(r["stores"]["float32"]["bytes"] for r in runs)
        tensor_ratio = (sum(r["stores"][dtype]["tensor_bytes"] for r in runs)
                        / sum(r["stores"]["float32"]["tensor_bytes"] for r in runs))
        diffs = [100 * (r["stores"][dtype]["accuracy"] - r["stores"]["float32"]["accuracy"]) for r in runs]
        lost = -statistics.mean(diffs)
        lines.append(f"- {dtype}: file bytes {ratio:.4f} × float32 (tensor bytes {tensor_ratio:.4f} ×; the JSON header "
                     f"and sidecar do not halve); accuracy change {_interval(diffs)} points over {len(runs)} tasks → "
                     f"goal ≤ {GOALS['half_points']} points lost: {_met(lost <= GOALS['half_points'])}")
    return lines + [""]


def _parallel(data: dict) -> list[str]:
    p = data.get("parallel")
    lines = ["## Parallel: the same texts for K tasks", ""]
    if not p:
        return lines + ["Not run.", ""]
    lines += [f"K = {p['tasks']} adapter tasks with the same AdapterDrop N on the same {p['texts']} texts: one "
              "`Engine.classify` call (the lower N layers run once, then the batch fans out) against K single-task calls. "
              f"Ceiling L·K / (N + (L−N)·K) with L = {p['layers']} (only the layers count; embeddings, heads and "
              "tokenisation are left out of it). AdapterDrop (Rücklé et al. 2021) reports 36–39% faster inference for 8 "
              "tasks with 5 of 12 layers dropped.", "",
              "| N | K single calls (CPU s) | one Parallel call (CPU s) | speed-up | ceiling | of ceiling | wall speed-up |",
              "|---|---|---|---|---|---|---|"]
    for n, r in p["by_drop"].items():
        lines.append(f"| {n} | {r['single_calls']['cpu_s']:.2f} | {r['parallel']['cpu_s']:.2f} | {r['speedup_cpu']:.2f}× | "
                     f"{r['ceiling']:.2f}× | {r['of_ceiling']:.2f} | {r['speedup_wall']:.2f}× |")
    worst = min(r["of_ceiling"] for r in p["by_drop"].values())
    lines += ["", f"- Goal ≥ {GOALS['of_ceiling']} of the ceiling at every N: worst {worst:.2f} → "
                  f"{_met(worst >= GOALS['of_ceiling'])}", ""]
    return lines


def _mixed(data: dict) -> list[str]:
    m = data.get("mixed")
    lines = ["## Mixed batches", ""]
    if not m:
        return lines + ["Not run.", ""]
    lines += [f"{m['rows']} rows, batches of {m['batch_size']}; row r belongs to task r mod K (N=0 adapters, so every "
              "layer's adapters differ per row). *mixed*: `Engine.logits` puts rows of different tasks in the same batch "
              "(each task's adapter runs once on its own rows). *switch*: each batch holds one task's rows and the "
              "adapters change between batches, the PEFT baseline S-LoRA measures (Sheng et al. 2023, arXiv:2311.03285).",
              "", "| side | CPU s | rows per CPU s | × mixed K=1 |", "|---|---|---|---|"]
    for side, v in m["sides"].items():
        lines.append(f"| {side} | {v['cpu_s']:.2f} | {v['rows_per_cpu_s']:.1f} | {m['relative_to_k1'][side]:.2f} |")
    k50 = m["relative_to_k1"]["mixed K=50"]
    lines += ["", f"- Goal: mixed K=50 ≥ {GOALS['mixed_k50']} × mixed K=1: {k50:.2f} → {_met(k50 >= GOALS['mixed_k50'])}", ""]
    return lines


def _cache_record(c: dict) -> dict:
    """The cache part's record, with the side names of records written before they became N-free."""
    for row in c["runs"]:
        for old, new in (("N=3 no cache", "no cache"), ("N=3 cache", "cache")):
            if old in row:
                row[new] = row.pop(old)
    return {"drop": 3, **c}


def _cache(data: dict) -> list[str]:
    c = data.get("cache")
    lines = ["## Training from the cache of the lower layers", ""]
    if not c:
        return lines + ["Not run.", ""]
    c = _cache_record(c)
    n, top = c["drop"], data.get("backbone", {}).get("layers", 6) - 1
    lines += [f"`fit` on {c['task']} (its adapter lr; no test split, so the time is the job's training: the cache build, "
              f"the epochs and the validation passes). *N={n} cache*: the embeddings and layers 0–{n - 1} run once per "
              f"example (`streamlearn/layercache.py`), each step runs layers {n}–{top} from the cache. *N={n} no cache*: "
              "the same model, `--layer-cache-bytes 0`. Ceiling from the issue: about 1.7× at 3 epochs and 1.95× at 20 "
              "when the upper half costs half.", "",
              f"| epochs | train / val examples | N=0 (CPU s) | N={n} no cache (CPU s) | N={n} cache (CPU s) | "
              f"N=0 ÷ N={n} cache | N=0 ÷ N={n} no cache | ceiling |", "|---|---|---|---|---|---|---|---|"]
    ceilings = {3: 1.7, 20: 1.95}
    for r in c["runs"]:
        lines.append(f"| {r['epochs']} | {r['train']} / {r['validation']} | {r['N=0']['cpu_s']:.1f} | "
                     f"{r['no cache']['cpu_s']:.1f} | {r['cache']['cpu_s']:.1f} | {r['speedup_cpu']:.2f}× | "
                     f"{r['speedup_no_cache_cpu']:.2f}× | ~{ceilings.get(r['epochs'], float('nan'))}× |")
    if len(c["runs"]) < 2:
        lines.append("| (the long comparison did not finish within the CPU budget) | | | | | | | |")
    first = c["runs"][0]
    lines += ["", f"- Goal ≥ {GOALS['cache_3']}× at {first['epochs']} epochs: {first['speedup_cpu']:.2f}× → "
                  f"{_met(first['speedup_cpu'] >= GOALS['cache_3'])}",
              "- Validation accuracy of each side (the cached run trains the same tensors within fp32 rounding): " +
              "; ".join(f"{r['epochs']} epochs: " + ", ".join(f"{s} {100 * r[s]['val_accuracy']:.1f}"
                                                             for s in ("N=0", "no cache", "cache"))
                        for r in c["runs"]), ""]
    return lines


def render(data: dict) -> str:
    """The whole document."""
    prov, mach, s = data.get("provenance", {}), data.get("machine", {}), data["settings"]
    head = ["# Many tasks on one backbone (CPU)", "",
            "Generated by `bench/multitask.py` from `docs/results/multitask.json`; do not edit by hand.", "",
            f"- Commit `{prov.get('commit', 'unknown')}`, working tree {'dirty' if prov.get('dirty') else 'clean'} "
            "when the run started.",
            f"- Machine: {mach.get('cores')}-core {mach.get('cpu')}, {mach.get('torch_threads')} torch thread(s), torch "
            f"{mach.get('torch')}, transformers {mach.get('transformers')}; backbone {data.get('backbone', {}).get('name')} "
            f"(L = {data.get('backbone', {}).get('layers')}).",
            f"- Command: `{data.get('command', '')}` under `nice -n 10`.",
            f"- Protocol (as bench/paper_table.py): train cap {s['train_cap']}, validation cap {s['val_cap']}, test uncapped, "
            f"max length {s['max_length']}, {s['epochs']} epochs, batch {s['batch_size']}, adapter size {s['adapter_size']}, "
            f"seed {s['seed']}.",
            "- Every ratio is measured in one process, side by side, in **CPU seconds** of this process "
            "(`time.process_time`, one torch thread): the machine is shared with other jobs, which stretch wall time "
            "by a varying factor but not a process's own CPU time. Wall-clock values are kept in the JSON.",
            "- The speed parts (Parallel, mixed) use tasks built by the adapter method with seeded random values "
            "(the same parts and shapes as trained ones: the compute does not depend on the values).", ""]
    for m in data.get("merged", []):
        head.insert(-1, f"- Part(s) {', '.join(m.get('parts', ['accuracy']))} were run by another process of the same benchmark at commit "
                        f"`{(m.get('provenance') or {}).get('commit', 'unknown')}` (working tree "
                        f"{'dirty' if (m.get('provenance') or {}).get('dirty') else 'clean'}): `{m.get('command')}`, "
                        "each in its own process; merged into this record with `--report-only --merge`.")
    for old in data.get("superseded", []):
        before = old.get("before", {})
        ceiling = ", ".join(f"N={n} {v:.2f}" for n, v in sorted(before.get("parallel_of_ceiling", {}).items()))
        mixed = before.get("mixed_k50_over_k1")
        head.insert(-1, f"- Part(s) {', '.join(old['parts'])} were measured again, {old['why']}; the superseded run (commit "
                        f"`{before.get('commit', 'unknown')}`) gave Parallel of ceiling {ceiling or '?'}"
                        + (f" and mixed K=50 ÷ K=1 {mixed:.2f}" if mixed is not None else "") + ".")
    note = data.get("timing_note")
    if note:
        head += ["## How the protocol was shrunk", "", note, ""]
    body = _accuracy(data) + _parallel(data) + _mixed(data) + _cache(data) + _half(data)
    return "\n".join(head + body)
