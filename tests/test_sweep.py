"""Sweep specs (presets, custom grids, seeds), trial expansion, and winner selection."""

from __future__ import annotations

import pytest

from streamlearn.errors import InvalidConfig
from streamlearn.sweep import (
    MAX_POINTS,
    PRESETS,
    SweepSpec,
    TrialResult,
    best,
    choose,
    label,
    parse_grid,
    prefer_smaller,
    resolve,
)

BASE = {
    "method": {"method": "adapter", "adapter_size": 64, "top_k": 1, "sigma": 0.01, "pooling": "mean"},
    "train": {"epochs": 3, "lr": None, "batch_size": 32, "max_length": 128, "seed": 0, "warmup": 0.1,
              "weight_decay": 0.0, "max_grad_norm": 1.0},
    "data": {"max_classes": 1000, "max_line_bytes": 1_000_000},
}


def test_paper_preset_is_the_houlsby_grid():
    """`paper` is lr {3e-5, 3e-4, 3e-3} x epochs {3, 20} x m {8, 64, 256}: 18 distinct trials."""
    spec = PRESETS["paper"]
    assert spec.values == {"m": (8, 64, 256), "lr": (3e-5, 3e-4, 3e-3), "epochs": (3, 20)}
    points = spec.points()
    assert len(points) == spec.size == 18
    assert len({tuple(sorted(p.items())) for p in points}) == 18


def test_quick_preset_has_four_points_of_three_epochs():
    """`quick` is lr {3e-4, 1e-3} x m {8, 64} at 3 epochs."""
    points = PRESETS["quick"].points()
    assert sorted((p["m"], p["lr"]) for p in points) == [(8, 3e-4), (8, 1e-3), (64, 3e-4), (64, 1e-3)]
    assert {p["epochs"] for p in points} == {3}


def test_custom_grid_parses_keys_values_and_aliases():
    """A custom grid keeps its values per key, accepts spaces, a trailing ';' and the adapter_size alias."""
    grid = parse_grid(" lr=1e-4, 1e-3 ; adapter_size=16,64;epochs=3;")
    assert dict(grid) == {"lr": (1e-4, 1e-3), "m": (16, 64), "epochs": (3,)}


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("lr=1e-4;;m=8", "empty entry"),
    ("lr", "KEY=V1,V2"),
    ("batch=32", "unknown key 'batch'"),
    ("lr=1e-4;lr=1e-3", "given twice"),
    ("lr=1e-4,,1e-3", "empty value"),
    ("lr=", "empty value"),
    ("lr=fast", "'fast' is not a number"),
    ("m=8.5", "not a whole number"),
    ("m=0", "between 1 and 8192"),
    ("lr=2", "must be in (0, 1)"),
    ("lr=nan", "must be in (0, 1)"),
    ("epochs=0", "between 1 and 1000"),
    ("m=8,8", "lists a value twice"),
])
def test_bad_grids_raise_clear_errors(text, fragment):
    """Each malformed grid raises InvalidConfig whose message names the problem."""
    with pytest.raises(InvalidConfig, match=None) as raised:
        resolve(None, text)
    assert fragment in str(raised.value)


def test_too_many_points_are_refused():
    """A grid whose points times seeds exceed MAX_POINTS is refused with the count in the message."""
    lrs = ",".join(f"{i}e-5" for i in range(1, 10))
    ms = ",".join(str(m) for m in range(1, 31))
    with pytest.raises(InvalidConfig, match=r"has 540 trials"):
        resolve(None, f"lr={lrs};m={ms}", seeds=2)
    assert resolve(None, f"lr={lrs};m={ms}").size == 270 <= MAX_POINTS


def test_resolve_flag_combinations():
    """--sweep and --grid exclude each other; --seeds/--prefer-smaller need one; unknown presets fail."""
    assert resolve(None, None) is None
    with pytest.raises(InvalidConfig, match="not both"):
        resolve("quick", "lr=1e-3")
    with pytest.raises(InvalidConfig, match="apply to a sweep"):
        resolve(None, None, seeds=3)
    with pytest.raises(InvalidConfig, match="apply to a sweep"):
        resolve(None, None, prefer_smaller=0.01)
    with pytest.raises(InvalidConfig, match="presets are paper, quick"):
        resolve("huge", None)
    with pytest.raises(InvalidConfig, match="--seeds 0"):
        resolve("quick", None, seeds=0)
    with pytest.raises(InvalidConfig, match="--prefer-smaller"):
        resolve("quick", None, prefer_smaller=1.5)
    spec = resolve("quick", None, seeds=2, prefer_smaller=0.01)
    assert (spec.name, spec.size, spec.prefer_smaller) == ("quick", 8, 0.01)


def test_seeds_repeat_each_point_from_the_base_seed():
    """--seeds 3 runs every point with seeds base, base+1, base+2 and nothing else changes."""
    spec = resolve(None, "m=8,64", seeds=3)
    points = spec.points(base_seed=5)
    assert [(p["m"], p["seed"]) for p in points] == [(8, 5), (8, 6), (8, 7), (64, 5), (64, 6), (64, 7)]


def test_trials_apply_each_point_to_the_base_hyperparameters():
    """Each trial's hyperparameters are the submission's with m, lr, epochs and seed set, split seed fixed."""
    base = {**BASE, "train": {**BASE["train"], "seed": 2, "batch_size": 16}}
    trials = resolve(None, "m=8,64;lr=1e-3", seeds=2).trials(base)
    assert len(trials) == 4
    assert [(t["method"]["adapter_size"], t["train"]["lr"], t["train"]["seed"]) for t in trials] == [
        (8, 1e-3, 2), (8, 1e-3, 3), (64, 1e-3, 2), (64, 1e-3, 3)]
    assert all(t["train"]["epochs"] == 3 and t["train"]["batch_size"] == 16 for t in trials)
    assert all(t["data"] == {**BASE["data"], "split_seed": 2} for t in trials)
    assert base["train"]["seed"] == 2 and "split_seed" not in base["data"]  # the base is not mutated


def test_grid_with_m_needs_the_adapter_method():
    """Sweeping m on a method without adapters is refused; a grid without m is fine."""
    full = {**BASE, "method": {**BASE["method"], "method": "full"}}
    with pytest.raises(InvalidConfig, match="--method full"):
        PRESETS["quick"].trials(full)
    assert len(resolve(None, "lr=1e-5,3e-5").trials(full)) == 2


def test_spec_round_trips_through_json_form():
    """`to_dict` then `from_dict` gives the same spec (it is stored on the sweep's job)."""
    spec = resolve(None, "lr=1e-4,1e-3;epochs=3,5", seeds=2, prefer_smaller=0.02)
    assert SweepSpec.from_dict(spec.to_dict()) == spec
    assert spec.describe() == "grid: lr {1e-4, 1e-3} x epochs {3, 5} x 2 seeds = 8 trials"


def _trial(job_id, acc, size, order=0, ok=True):
    return TrialResult(job_id, ok, acc if ok else None, size if ok else None, order)


def test_best_validation_accuracy_wins():
    """The trial with the highest validation accuracy wins, whatever its size or position."""
    trials = [_trial("a", 0.80, 100, 0), _trial("b", 0.91, 900, 1), _trial("c", 0.85, 50, 2)]
    assert best(trials).job_id == "b"
    assert choose(trials).job_id == "b"


def test_tie_goes_to_fewer_stored_bytes_then_grid_order():
    """Equal accuracy picks the smaller artifact; equal size too picks the earlier grid point."""
    assert best([_trial("big", 0.9, 900, 0), _trial("small", 0.9, 100, 1)]).job_id == "small"
    assert best([_trial("late", 0.9, 100, 3), _trial("early", 0.9, 100, 1)]).job_id == "early"
    # 0.1 + 0.2 style float noise still counts as a tie
    assert best([_trial("x", 0.3, 500, 0), _trial("y", 0.1 + 0.2, 200, 1)]).job_id == "y"


def test_failed_trials_are_ignored_and_all_failed_gives_none():
    """Failed trials never win; when every trial failed there is no winner."""
    trials = [_trial("a", None, None, ok=False), _trial("b", 0.6, 10, 1)]
    assert best(trials).job_id == "b"
    assert best([_trial("a", None, None, ok=False)]) is None
    assert prefer_smaller([], 0.1) is None


def test_prefer_smaller_keeps_the_smallest_within_eps():
    """With eps the smallest artifact within eps of the best wins; eps 0 falls back to the best."""
    trials = [_trial("m8", 0.880, 100, 0), _trial("m64", 0.895, 700, 1), _trial("m256", 0.900, 2600, 2)]
    assert best(trials).job_id == "m256"
    assert prefer_smaller(trials, 0.01).job_id == "m64"
    assert prefer_smaller(trials, 0.02).job_id == "m8"
    assert prefer_smaller(trials, 0.0).job_id == "m256"
    assert choose(trials, eps=0.02).job_id == "m8"


def test_prefer_smaller_tie_on_size_takes_higher_accuracy():
    """Two equally small artifacts within eps: the more accurate one wins."""
    trials = [_trial("lo", 0.85, 100, 0), _trial("hi", 0.87, 100, 1), _trial("top", 0.88, 900, 2)]
    assert prefer_smaller(trials, 0.05).job_id == "hi"


def test_label_is_compact():
    """A job's hyperparameters render as `m=64 lr=1e-3 ep=3`, with the seed only when not 0."""
    hp = PRESETS["quick"].trials(BASE)[3]
    assert label(hp) == "m=64 lr=1e-3 ep=3"
    assert label({**BASE, "train": {**BASE["train"], "lr": 3e-05, "seed": 2}}) == "m=64 lr=3e-5 ep=3 seed=2"
    assert label(None) == "-"


def test_label_names_adapterdrop_depth_and_the_fusion_variant():
    """Tasks that differ only in AdapterDrop depth, fusion rank or pruning show different labels."""
    drop = {**BASE, "method": {**BASE["method"], "drop_layers": 2}}
    assert label(drop) == "m=64 N=2 lr=1e-3 ep=3"
    fused = {**BASE, "method": {**BASE["method"], "method": "fusion", "fusion_rank": 64}}
    assert label(fused) == "m=64 R=64 lr=1e-3 ep=3"
    assert label({**fused, "method": {**fused["method"], "fusion_rank": 0, "fusion_top": 2}}) == "m=64 top=2 lr=1e-3 ep=3"


def test_label_shows_the_resolved_default_learning_rate():
    """A job submitted without --lr shows the rate the worker uses (the method's default), not `lr=default`."""
    assert label(BASE) == "m=64 lr=1e-3 ep=3"
    full = {**BASE, "method": {**BASE["method"], "method": "full"}}
    assert label(full) == "lr=3e-5 ep=3"
