"""docs/FUSION.md from the JSON that bench/fusion.py writes (kept apart so the runner stays short)."""

from __future__ import annotations

import math
import statistics

from bench import machine as machine_info

GOAL_POINTS, GOAL_WORST, GOAL_CAP = 1.0, -1.0, 300
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
"""Two-sided 95% Student t quantiles by degrees of freedom (n − 1)."""


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "not run"
    mean = statistics.mean(values)
    return f"{mean:.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def _interval(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:+.2f} (one task: no interval)" if values else "n/a"
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{statistics.mean(values):+.2f} ± {half:.2f}"


def _runs(data: dict) -> dict:
    return {(r["cap"], r["seed"], r["task"], r["variant"]): r for r in data.get("runs", [])}


def _variants(data: dict) -> list[str]:
    return ["fusion", f"fusion-r{data['settings']['rank']}"]


def _cap_section(data: dict, cap: int, runs: dict, seeds: list[int]) -> tuple[list[str], dict]:
    tasks, variants = data["settings"]["tasks"], _variants(data)
    lines = [f"## Train cap {cap}", "",
             f"Test accuracy (%), mean ± standard deviation over the seeds that finished (of {len(seeds)}); † n = "
             "collapsed runs (one class predicted, or no better than a constant class), counted in the mean, not hidden. "
             "Gains are fusion − single adapter per seed, then averaged. Bytes: the artifact file of one task (the "
             "sources are stored once, by their own tasks).", "",
             "| task | adapter | fusion | " + f"{variants[1]} | fusion − adapter | {variants[1]} − adapter | "
             "bytes adapter | bytes fusion | " + f"bytes {variants[1]} |",
             "|---|---|---|---|---|---|---|---|---|"]
    gains: dict[str, dict[str, float]] = {v: {} for v in variants}
    for i, task in enumerate(tasks):
        cells, per_gain, sizes = [], {}, []
        for variant in ["adapter", *variants]:
            found = [runs[(cap, s, task, variant)] for s in seeds if (cap, s, task, variant) in runs]
            acc = [100 * r["test_accuracy"] for r in found]
            bad = sum(1 for r in found if r["collapsed"])
            cells.append(("–" if i == 0 and variant != "adapter" else _mean_sd(acc)) + (f" † {bad}" if bad else ""))
            sizes.append(f"{found[0]['bytes']:,}" if found else "–")
        for variant in variants:
            diffs = [100 * (runs[(cap, s, task, variant)]["test_accuracy"] - runs[(cap, s, task, "adapter")]["test_accuracy"])
                     for s in seeds if (cap, s, task, variant) in runs and (cap, s, task, "adapter") in runs]
            per_gain[variant] = diffs
            if diffs:
                gains[variant][task] = statistics.mean(diffs)
        lines.append(f"| {task} | " + " | ".join(cells) + " | "
                     + " | ".join("–" if not per_gain[v] else f"{statistics.mean(per_gain[v]):+.2f}" for v in variants)
                     + " | " + " | ".join(sizes) + " |")
    for variant in variants:
        done = gains[variant]
        if done:
            lines.append("")
            lines.append(f"- {variant} − adapter over the {len(done)} fused tasks: {_interval(list(done.values()))} points "
                         "(mean of per-task gains, 95% t-interval across tasks); worst task "
                         f"{min(done, key=done.get)} {min(done.values()):+.2f}, best {max(done, key=done.get)} "
                         f"{max(done.values()):+.2f}.")
    collapsed = [f"{r['task']}/{r['variant']} (seed {r['seed']})" for r in data.get("runs", [])
                 if r["cap"] == cap and r["collapsed"]]
    lines += ["", "Collapsed runs at this cap: " + (", ".join(collapsed) if collapsed else "none") + "."]
    return lines + [""], gains


def _goal(gains: dict, variant: str) -> str:
    done = gains.get(variant, {})
    if not done:
        return f"- {variant}: not run at cap {GOAL_CAP}."
    mean, worst = statistics.mean(done.values()), min(done.values())
    ok = mean >= GOAL_POINTS and worst >= GOAL_WORST
    return (f"- {variant}: mean gain {mean:+.2f} points (goal ≥ +{GOAL_POINTS:.1f}), worst task {worst:+.2f} (goal ≥ "
            f"{GOAL_WORST:+.1f}): **{'met' if ok else 'not met'}** on {len(done)} fused tasks.")


def _bwt(data: dict) -> list[str]:
    rescores = data.get("rescores", [])
    lines = ["## Backward transfer: every task re-scored through `evaluate` after every step", ""]
    if not rescores:
        return lines + ["Not run.", ""]
    drifts = [abs(row["drift"]) for r in rescores for row in r["rows"]]
    streams = sorted({(r["cap"], r["seed"]) for r in rescores})
    bwts = []
    for cap, seed in streams:
        steps = sorted((r for r in rescores if (r["cap"], r["seed"]) == (cap, seed)), key=lambda r: r["step"])
        first = {}
        for step in steps:
            for row in step["rows"]:
                first.setdefault(row["task"], row["accuracy"])
        final = {row["task"]: row["accuracy"] for row in steps[-1]["rows"]}
        bwts.append(statistics.mean(final[t] - first[t] for t in final))
    lines += [f"{len(rescores)} re-scorings (`predictor.reevaluate`, the code of `streamlearn evaluate --all`) over "
              f"{len(streams)} streams, {len(drifts)} task scores in all. Largest |drift| from the accuracy each job "
              f"recorded: **{max(drifts):.6f}**; BWT (final − first score, mean over tasks) per stream: "
              + ", ".join(f"{b:+.6f}" for b in bwts) + ". The sources are only read by a fused task, so every earlier task "
              "scores exactly what it scored.", ""]
    return lines


def _stage_one(data: dict, runs: dict) -> list[str]:
    pairs = [(r, runs.get((r["cap"], r["seed"], r["task"], "adapter"))) for r in data.get("runs", [])
             if r["variant"] != "adapter" and r.get("stage1_test_accuracy") is not None]
    same = sum(1 for r, a in pairs if a is not None and r["stage1_test_accuracy"] == a["test_accuracy"])
    return [f"Stage 1 of every fused job is the adapter method with the same seed: its own adapter's test accuracy "
            f"equals the single adapter's in {same} of {len(pairs)} fused runs (tested bit for bit on the tiny BERT in "
            "`tests/test_fusion.py`).", ""] + _retrained(data)


def _retrained(data: dict) -> list[str]:
    rows = data.get("retrained_sources", [])
    if not rows:
        return []
    same = [r for r in rows if r["test_accuracy"] == r["recorded_test_accuracy"]]
    differ = ", ".join(f"{r['task']} (cap {r['cap']}, seed {r['seed']}: {r['recorded_test_accuracy']:.4f} recorded, "
                       f"{r['test_accuracy']:.4f} again)" for r in rows if r not in same)
    return [f"A stream resumed in a fresh work folder re-trains the recorded adapters its unfinished fused jobs fuse "
            f"over (the record keeps the first run): {len(rows)} re-trained, {len(same)} with the recorded test "
            f"accuracy" + (f"; differing: {differ}." if differ else "."), ""]


def _timing(data: dict) -> list[str]:
    t = data.get("timing")
    lines = ["## Inference cost", ""]
    if not t or not t.get("rows"):
        return lines + ["Not run.", ""]
    base = t["rows"][0]["examples_per_s"]
    lines += [f"`streamlearn.open().predict` on {t['texts']} test texts of {t['task']} (cap {t['cap']}, seed {t['seed']}), "
              "best of 3 rounds after a warm-up, one process, batches of 64:", "",
              "| task | examples/s | × single adapter | resident bytes (own + sources) |", "|---|---|---|---|"]
    for row in t["rows"]:
        lines.append(f"| {row['task']} | {row['examples_per_s']:.1f} | {row['examples_per_s'] / base:.3f} | "
                     f"{row['resident_bytes']:,} |")
    return lines + [""]


def _lr_text(s: dict) -> str:
    rates = s.get("lrs", {})
    if len(set(rates.values())) == 1:
        return f"learning rate {next(iter(rates.values()))} for every task"
    return ("each task's adapter learning rate from docs/results/paper_table.json ("
            + ", ".join(f"{t} {lr:g}" for t, lr in rates.items()) + ")")


def _layer_cost(data: dict) -> list[str]:
    cost = data.get("layer_cost")
    if not cost:
        return []
    m = cost.get("machine", {})
    lines = ["## The fusion layer's own cost", "",
             f"One site's fusion layer, forward and backward on {cost['tokens']} tokens of width d = {cost['d']}, "
             f"best of {cost['rounds']} alternating rounds in one process ({cost['threads']} thread(s)), at commit "
             f"`{m.get('git_commit')}` (tree {'dirty' if m.get('git_dirty') else 'clean'}): the layer as the service "
             "computes it (K and V folded through the attention-weighted sum: 3d² per token whatever the number of "
             "sources S) against the formula applied per source ((1 + 2S)d²). The fused jobs above ran the folded "
             "form.", "",
             "| fusion | sources S | per source (ms) | folded (ms) | × faster | max |difference| |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in cost["rows"]:
        kind = f"rank {r['rank']}" if r["rank"] else "full"
        lines.append(f"| {kind} | {r['sources']} | {1000 * r['per_source_s']:.1f} | {1000 * r['folded_s']:.1f} | "
                     f"{r['speedup']:.2f} | {r['max_abs_diff']:.1e} |")
    return lines + [""]


def render(data: dict) -> str:
    s, machine = data["settings"], data.get("machine", {})
    runs, seeds = _runs(data), data.get("seeds", [0, 1, 2])
    lines = ["# AdapterFusion on the stream", ""]
    lines += machine_info.dirty_warning(machine) if machine else ["> Not run yet.", ""]
    if machine:
        lines += [f"Generated by `{data.get('command', 'python -m bench.fusion')}` at commit "
                  f"`{machine.get('git_commit')}` (tree {'dirty' if machine.get('git_dirty') else 'clean'}) on "
                  f"{machine_info.sentence(machine)}. Rebuild the document with `python -m bench.fusion --report-only` "
                  "and the same flags.", ""]
    for part in data.get("parts", []):
        where = machine_info.sentence(part["machine"]) if part.get("machine") else "the machine above"
        if "runs_added" in part:
            what = (f"{part['runs_added']} runs at train caps {', '.join(map(str, part['added_caps']))} (seeds "
                    f"{', '.join(map(str, part['added_seeds']))})")
        else:  # a part merged before the record counted what each part added
            what = (f"the runs at train caps {', '.join(map(str, part['caps']))} (seeds "
                    f"{', '.join(map(str, part.get('seeds') or []))})")
        lines += [f"Merged in (`--merge`): {what} of `{part.get('command')}` at commit "
                  f"`{part.get('git_commit')}` (tree {'dirty' if part.get('git_dirty') else 'clean'}), on {where}.", ""]
    if data.get("note"):
        lines += [f"**How this run was shrunk.** {data['note']}", ""]
    lines += ["## Protocol", "",
              f"The stream: {', '.join(s['tasks'])} (in this order), train caps {', '.join(map(str, s['caps']))}, seeds "
              f"{', '.join(map(str, seeds))} (the seed picks the capped subset, the init, the shuffling and dropout). "
              f"Validation cap {s['val_cap'] or 'none'}, test cap {s['test_cap'] or 'none'} (seeded, stratified), max "
              f"length {s['max_length']}, {s['epochs']} epochs per stage, batch {s['batch_size']}, m = {s['adapter_size']}, "
              + _lr_text(s) + " (stage 2 uses the same rate). Each task "
              "after the first is fused over every earlier task's adapter (`--fuse-from` them), full (3d²+2d parameters "
              f"per site) and with `--fusion-rank {s['rank']}` (6dR+2d). Model selection on validation only (best epoch "
              "of each stage).", ""]
    gains_at: dict[int, dict] = {}
    for cap in [c for c in s["caps"] if any(key[0] == c for key in runs)]:  # a cap with no run: under "Not run"
        section, gains = _cap_section(data, cap, runs, seeds)
        lines += section
        gains_at[cap] = gains
    lines += ["## Goal and forward transfer", ""]
    if GOAL_CAP in gains_at:
        lines += [f"Goal: fusion beats the single adapter by ≥ {GOAL_POINTS:.1f} point mean at a train cap of {GOAL_CAP} "
                  f"with no task more than {abs(GOAL_WORST):.1f} point worse.", ""]
        lines += [_goal(gains_at[GOAL_CAP], v) for v in _variants(data)] + [""]
    lines += ["Forward transfer (GEM, Lopez-Paz & Ranzato 2017) needs a task's score before it is learned, which a "
              "per-task adapter does not have; the common adaptation used here compares each task's score in the stream "
              "with the same learner trained on it alone (the single adapter, same cap and seed): FWT = mean over the "
              "tasks after the first of (fused − single adapter). It is the gain above, per cap: "
              + "; ".join(f"cap {cap}: " + ", ".join(f"{v} {statistics.mean(g[v].values()):+.2f}" for v in g if g[v])
                          for cap, g in gains_at.items() if any(g.values())) + ". The single-adapter stream's FWT is 0 "
              "by construction.", ""]
    lines += _stage_one(data, runs)
    lines += _bwt(data)
    lines += ["## Attention", ""]
    for h in data.get("heatmaps", []):
        lines += [f"![{h['task']}: mean fusion attention per site and source on validation]({h['file']})", ""]
    if not data.get("heatmaps"):
        lines += ["Not drawn.", ""]
    lines += _timing(data)
    lines += _layer_cost(data)
    top = [r for r in data.get("runs", []) if r["variant"].startswith("fusion-top")]
    for r in top:
        full = runs.get((r["cap"], r["seed"], r["task"], "fusion"))
        lines += [f"`--fusion-top` on {r['task']} (cap {r['cap']}, seed {r['seed']}): kept {', '.join(r['sources'])}, "
                  f"pruned {', '.join(r['pruned']) or 'none'}; test accuracy {100 * r['test_accuracy']:.2f} vs "
                  + (f"{100 * full['test_accuracy']:.2f} with every source." if full else "the full fusion not run."), ""]
    missing, planned = [], 0
    for c in s["caps"]:
        for sd in seeds:
            jobs = [(t, v) for i, t in enumerate(s["tasks"]) for v in (["adapter"] + (_variants(data) if i else []))]
            planned += len(jobs)
            left = [f"{t}/{v}" for t, v in jobs if (c, sd, t, v) not in runs]
            if len(left) == len(jobs):
                missing.append(f"cap {c}, seed {sd}: none of its {len(jobs)} jobs")
            elif left:
                missing.append(f"cap {c}, seed {sd}: {', '.join(left)}")
    count = sum(1 for c in s["caps"] for sd in seeds for i, t in enumerate(s["tasks"])
                for v in (["adapter"] + (_variants(data) if i else [])) if (c, sd, t, v) not in runs)
    lines += ["## Not run", "", ("Every planned job finished." if not missing else
                                 f"{count} of {planned} planned jobs did not run:"), ""]
    lines += [f"- {m}" for m in missing] + ([""] if missing else [])
    return "\n".join(lines)
