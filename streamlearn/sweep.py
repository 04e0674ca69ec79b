"""Hyperparameter sweeps: which grid points to train, and which trial a task keeps.

Houlsby et al. 2019 (arXiv:1902.00751), Sec. 3, pick each task's learning rate from
{3e-5, 3e-4, 3e-3}, its number of epochs from {3, 20} and its adapter size m from {8, 64, 256} on
the validation set, and re-run unstable points with several seeds. `PRESETS["paper"]` is that grid;
`PRESETS["quick"]` is a CPU-sized one; `parse_grid` reads a custom one (`lr=1e-4,1e-3;m=16,64`).

Pure and torch-free: `submit-task` builds specs here, and selection (`choose`) is a function of
numbers, so a test can construct the metrics of a case and check the pick.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streamlearn.errors import InvalidConfig
from streamlearn.rates import DEFAULT_LR

KEYS = ("m", "lr", "epochs")
"""Grid keys in expansion order: adapter size, peak learning rate, epochs."""
ALIASES = {"adapter_size": "m", "adapter-size": "m", "learning_rate": "lr", "learning-rate": "lr", "epoch": "epochs"}
"""Other spellings accepted in a custom grid."""
MAX_POINTS = 512
"""Most trials one sweep may fan out to (grid points x seeds)."""
MAX_SEEDS = 32
"""Most seeds per grid point (`--seeds`)."""
TIE = 1e-12
"""Accuracies closer than this count as equal (they are ratios of counts on one validation set)."""


def _number(key: str, raw: str) -> float | int:
    """Parse one grid value and check its range; the message names the key and the value."""
    try:
        if key == "lr":
            value: float | int = float(raw)
        else:
            value = int(raw)
    except ValueError:
        kind = "a number like 1e-3" if key == "lr" else "a whole number"
        raise InvalidConfig(f"grid: {key}={raw!r} is not {kind}") from None
    if key == "lr" and not (math.isfinite(value) and 0 < value < 1):
        raise InvalidConfig(f"grid: lr={raw} must be in (0, 1)")
    if key == "m" and not 1 <= value <= 8192:
        raise InvalidConfig(f"grid: m={raw} must be between 1 and 8192")
    if key == "epochs" and not 1 <= value <= 1000:
        raise InvalidConfig(f"grid: epochs={raw} must be between 1 and 1000")
    return value


@dataclass(frozen=True)
class SweepSpec:
    """A grid of hyperparameters, each point trained `seeds` times; stored on the sweep's job."""

    name: str
    """`paper`, `quick`, or `grid` for a custom grid."""
    grid: tuple[tuple[str, tuple[float | int, ...]], ...]
    """(key, values) pairs, keys from `KEYS`; a key left out keeps the submission's value."""
    seeds: int = 1
    """Runs per grid point, with seeds base, base+1, ... (the paper re-ran unstable points)."""
    prefer_smaller: float | None = None
    """If set, keep the smallest artifact within this much validation accuracy of the best."""

    def __post_init__(self) -> None:
        if not self.grid:
            raise InvalidConfig("a sweep needs at least one grid key (lr, m or epochs)")
        keys = [key for key, _ in self.grid]
        if len(set(keys)) != len(keys) or set(keys) - set(KEYS):
            raise InvalidConfig(f"grid keys {keys} must be distinct and among {', '.join(KEYS)}")
        for key, values in self.grid:
            if not values:
                raise InvalidConfig(f"grid: {key} has no values")
            if len(set(values)) != len(values):
                raise InvalidConfig(f"grid: {key} lists a value twice ({', '.join(map(str, values))})")
            for value in values:
                _number(key, str(value))
        if not 1 <= self.seeds <= MAX_SEEDS:
            raise InvalidConfig(f"--seeds {self.seeds} must be between 1 and {MAX_SEEDS}")
        if self.prefer_smaller is not None and not 0 <= self.prefer_smaller < 1:
            raise InvalidConfig(f"--prefer-smaller {self.prefer_smaller} must be in [0, 1) (an accuracy difference)")
        if self.size > MAX_POINTS:
            raise InvalidConfig(
                f"the sweep has {self.size} trials ({self.describe()}); at most {MAX_POINTS} are allowed"
            )

    @property
    def size(self) -> int:
        """Number of trials: grid points times seeds."""
        return math.prod(len(values) for _, values in self.grid) * self.seeds

    @property
    def values(self) -> dict[str, tuple[float | int, ...]]:
        """Key -> values, in `KEYS` order."""
        given = dict(self.grid)
        return {key: given[key] for key in KEYS if key in given}

    def points(self, base_seed: int = 0) -> list[dict[str, float | int]]:
        """Every trial's settings, in a fixed order: m, then lr, then epochs, then seed.

        Args:
            base_seed: The submission's seed; the seeds of a point are base_seed, base_seed + 1, ...
        """
        values = self.values
        combos = itertools.product(*values.values(), range(base_seed, base_seed + self.seeds))
        return [dict(zip((*values, "seed"), combo)) for combo in combos]

    def trials(self, base: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The hyperparameters of each trial job: the submission's `base` with one point applied.

        Args:
            base: A train job's hyperparameters, `{"method": {...}, "train": {...}, "data": {...}}`.

        Raises:
            InvalidConfig: the grid varies m but the method is not `adapter`.
        """
        if "m" in self.values and base["method"]["method"] != "adapter":
            raise InvalidConfig(f"the grid varies the adapter size m, which --method {base['method']['method']} "
                                "does not have; use --method adapter or a --grid without m")
        # Every trial keeps the submission's validation split: the seed also seeds the carved split,
        # and trials selected on different validation sets would not be comparable.
        split_seed = int(base["train"].get("seed", 0))
        out = []
        for point in self.points(split_seed):
            method, train = dict(base["method"]), dict(base["train"])
            if "m" in point:
                method["adapter_size"] = point["m"]
            train.update({k: point[k] for k in ("lr", "epochs", "seed") if k in point})
            out.append({**base, "method": method, "train": train,
                        "data": {**base.get("data", {}), "split_seed": split_seed}})
        return out

    def describe(self) -> str:
        """A one-line summary, e.g. `quick: m {8, 64} x lr {3e-4, 1e-3} x epochs {3}`."""
        axes = " x ".join(f"{k} {{{', '.join(fmt(k, v) for v in vs)}}}" for k, vs in self.values.items())
        seeds = f" x {self.seeds} seeds" if self.seeds > 1 else ""
        return f"{self.name}: {axes}{seeds} = {self.size} trials"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, stored as the sweep job's hyperparameters."""
        return {"name": self.name, "grid": {k: list(v) for k, v in self.values.items()}, "seeds": self.seeds,
                "prefer_smaller": self.prefer_smaller}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepSpec:
        """Inverse of `to_dict`."""
        return cls(name=data["name"], grid=tuple((k, tuple(v)) for k, v in data["grid"].items()),
                   seeds=int(data.get("seeds", 1)), prefer_smaller=data.get("prefer_smaller"))


PRESETS: dict[str, SweepSpec] = {
    "paper": SweepSpec("paper", (("m", (8, 64, 256)), ("lr", (3e-5, 3e-4, 3e-3)), ("epochs", (3, 20)))),
    "quick": SweepSpec("quick", (("m", (8, 64)), ("lr", (3e-4, 1e-3)), ("epochs", (3,)))),
}
"""Named grids: `paper` (Houlsby et al. 2019, Sec. 3: 18 points) and `quick` (4 points, for a CPU)."""


def parse_grid(text: str) -> tuple[tuple[str, tuple[float | int, ...]], ...]:
    """Parse `lr=1e-4,1e-3;m=16,64;epochs=3` into (key, values) pairs.

    Raises:
        InvalidConfig: an empty spec or entry, an unknown key, a key or value given twice, an empty
            value, or a value that is not a number in range; the message names the culprit.
    """
    entries = [entry.strip() for entry in text.strip().removesuffix(";").split(";")]
    if not text.strip():
        raise InvalidConfig("--grid is empty; write it like 'lr=1e-4,1e-3;m=16,64;epochs=3'")
    grid: dict[str, tuple[float | int, ...]] = {}
    for entry in entries:
        if not entry:
            raise InvalidConfig(f"grid {text.strip()!r} has an empty entry (two ';' in a row?)")
        key, eq, raw = entry.partition("=")
        key = ALIASES.get(key.strip().lower(), key.strip().lower())
        if not eq or not key:
            raise InvalidConfig(f"grid entry {entry!r} is not KEY=V1,V2,... (entries are separated by ';')")
        if key not in KEYS:
            raise InvalidConfig(f"grid: unknown key {key!r}; the keys are {', '.join(KEYS)}")
        if key in grid:
            raise InvalidConfig(f"grid: {key} is given twice; list all its values once, e.g. {key}=A,B")
        parts = [part.strip() for part in raw.split(",")]
        if any(not part for part in parts):
            raise InvalidConfig(f"grid: {key} has an empty value in {raw.strip()!r}")
        values = tuple(_number(key, part) for part in parts)
        if len(set(values)) != len(values):
            raise InvalidConfig(f"grid: {key} lists a value twice in {raw.strip()!r}")
        grid[key] = values
    return tuple(grid.items())


def resolve(sweep: str | None, grid: str | None, seeds: int | None = None,
            prefer_smaller: float | None = None) -> SweepSpec | None:
    """The spec of `submit-task --sweep NAME | --grid SPEC [--seeds N] [--prefer-smaller EPS]`.

    Returns:
        None when neither --sweep nor --grid is given (a plain training job).

    Raises:
        InvalidConfig: both or neither of --sweep/--grid with sweep-only flags, an unknown preset,
            or an invalid grid.
    """
    if sweep is not None and grid is not None:
        raise InvalidConfig("give --sweep or --grid, not both")
    if sweep is None and grid is None:
        if seeds not in (None, 1) or prefer_smaller is not None:
            raise InvalidConfig("--seeds and --prefer-smaller apply to a sweep: add --sweep quick|paper or --grid SPEC")
        return None
    if sweep is not None:
        if sweep not in PRESETS:
            raise InvalidConfig(f"unknown sweep {sweep!r}; the presets are {', '.join(PRESETS)} (or use --grid)")
        return SweepSpec(sweep, PRESETS[sweep].grid, 1 if seeds is None else seeds, prefer_smaller)
    return SweepSpec("grid", parse_grid(grid or ""), 1 if seeds is None else seeds, prefer_smaller)


@dataclass(frozen=True)
class TrialResult:
    """What selection needs to know about one finished trial."""

    job_id: str
    succeeded: bool
    val_accuracy: float | None = None
    """Validation accuracy of the trial's kept epoch (None if it failed)."""
    bytes: int | None = None
    """Size of its stored artifact (None if it failed)."""
    order: int = 0
    """Position in the grid; the last tie-break, so the pick never depends on finishing order."""


def _candidates(trials: Iterable[TrialResult]) -> list[TrialResult]:
    return [t for t in trials if t.succeeded and t.val_accuracy is not None and t.bytes is not None]


def best(trials: Iterable[TrialResult]) -> TrialResult | None:
    """The highest validation accuracy; a tie goes to fewer stored bytes, then grid order, then id.

    Returns:
        None when no trial succeeded.
    """
    pool = _candidates(trials)
    if not pool:
        return None
    top = max(t.val_accuracy for t in pool)
    tied = [t for t in pool if t.val_accuracy >= top - TIE]
    return min(tied, key=lambda t: (t.bytes, t.order, t.job_id))


def prefer_smaller(trials: Iterable[TrialResult], eps: float) -> TrialResult | None:
    """The smallest artifact whose validation accuracy is within `eps` of the best.

    A storage-aware choice the paper does not make: with eps = 0.005 a task keeps m=8 over m=256
    when the larger adapter gains less than half a point. Ties go to higher accuracy, then grid
    order, then id.

    Returns:
        None when no trial succeeded.
    """
    pool = _candidates(trials)
    if not pool:
        return None
    top = max(t.val_accuracy for t in pool)
    near = [t for t in pool if t.val_accuracy >= top - eps - TIE]
    return min(near, key=lambda t: (t.bytes, -t.val_accuracy, t.order, t.job_id))


def choose(trials: Sequence[TrialResult], eps: float | None = None) -> TrialResult | None:
    """The sweep's winner: `best`, or `prefer_smaller(eps)` when `eps` is given."""
    return best(trials) if eps is None else prefer_smaller(trials, eps)


def fmt(key: str, value: Any) -> str:
    """A compact value: learning rates as `3e-4`, everything else as is."""
    if key == "lr" and isinstance(value, int | float):
        mantissa, exponent = f"{value:e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return str(value)


def label(hyperparameters: Mapping[str, Any] | None) -> str:
    """A job's chosen settings as a short column, e.g. `m=64 lr=1e-3 ep=3` (seed shown when not 0; AdapterDrop's
    `N=`, fusion's `R=` and `top=` when set)."""
    if not hyperparameters or "train" not in hyperparameters:
        return "-"
    method, train = hyperparameters.get("method", {}), hyperparameters["train"]
    parts = []
    if method.get("method", "adapter") in ("adapter", "fusion") and method.get("adapter_size") is not None:
        parts.append(f"m={method['adapter_size']}")
    for key, short in (("drop_layers", "N"), ("fusion_rank", "R"), ("fusion_top", "top")):
        if method.get(key):  # shown when set: AdapterDrop depth, low-rank and pruned fusion
            parts.append(f"{short}={method[key]}")
    lr = train.get("lr")
    if lr is None:  # the method's default, which the worker resolves the same way
        lr = DEFAULT_LR.get(method.get("method", "adapter"))
    parts.append(f"lr={fmt('lr', lr)}" if lr is not None else "lr=default")
    parts.append(f"ep={train.get('epochs', '?')}")
    if train.get("seed"):
        parts.append(f"seed={train['seed']}")
    return " ".join(parts)
