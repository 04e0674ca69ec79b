"""The storage law: what K tasks cost with adapters (about K·4Lmd parameters) versus K full copies (K·|w|).

Per task, the adapter method stores (Houlsby et al. 2019, arXiv:1902.00751, section 2.1)
two bottleneck adapters per layer, 2L(2md + m + d) parameters; every LayerNorm of the encoder,
(4L + 2)d; and the classification head, (d + 1)C. For m << d the first term, about 4Lmd,
dominates. `build_report` lines the measured bytes up against that law and against K·|w|, and
`plot` draws the three. A fused task (`--method fusion`) adds its fusion layers as their own term,
2L(3d² + 2d), or 2L(6dR + 2d) with `--fusion-rank R`, reported and drawn apart; the adapters it
attends over are stored (and counted) once, by their own tasks. Pure arithmetic: no catalogue, no torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BYTES_PER_PARAM = 4
"""Backbones (and artifacts by default) are stored as float32."""
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
"""Bytes per stored parameter of each `--store-dtype`."""


def task_params(L: int, d: int, m: int, C: int, N: int = 0) -> int:  # noqa: N803 (the paper's symbols)
    """Exact parameters one adapter task stores: 2(L−N)(2md+m+d) + 4(L−N)d + 2d·[N=0] + (d+1)C.

    The formula is the method registry's (`methods.parameter_count`), the one place it is written.

    Args:
        L: Transformer layers of the backbone.
        d: Hidden size.
        m: Adapter bottleneck size.
        C: Number of classes.
        N: AdapterDrop depth (layers without adapters); 0 is the faithful Houlsby method.
    """
    from streamlearn.methods import MethodConfig, Shape, parameter_count

    return parameter_count(MethodConfig(adapter_size=m, drop_layers=N), Shape(L, d, C))


def fusion_term(L: int, d: int, R: int, N: int = 0) -> int:  # noqa: N803 (the paper's symbols)
    """Parameters of a fused task's fusion layers alone: 2(L−N)(3d² + 2d), or 2(L−N)(6dR + 2d) with rank R.

    This is the registry's fusion term (`methods.fusion.fusion_params`); the task's adapter, LayerNorms
    and head are `task_params`, and the sources' adapters are stored (and counted) once, by their tasks.
    """
    from streamlearn.methods import MethodConfig, Shape
    from streamlearn.methods.fusion import fusion_params

    return fusion_params(MethodConfig(method="fusion", fusion_rank=R, drop_layers=N), Shape(L, d, 2))


@dataclass(frozen=True)
class StoredTask:
    """What the catalogue holds for one task, as `build_report` needs it."""

    task: str
    method: str
    bytes: int
    """Bytes of every artifact of the task that is on disk (normally exactly one)."""
    artifacts: int
    adapter_size: int | None
    classes: int
    stored_params: int
    backbone: str
    backbone_fingerprint: str
    layers: int
    hidden: int
    backbone_params: int
    backbone_bytes: int
    drop_layers: int = 0
    """AdapterDrop depth N the task was trained with."""
    dtype: str = "float32"
    """Dtype its tensors are stored in."""
    fusion_rank: int = 0
    """A fused task's fusion rank R (0: full d×d); unused for other methods."""

    @property
    def fusion_bytes(self) -> int:
        """The law's bytes of a fused task's fusion layers (0 for other methods): their own term."""
        if self.method != "fusion":
            return 0
        return fusion_term(self.layers, self.hidden, self.fusion_rank, self.drop_layers) * DTYPE_BYTES.get(self.dtype, 4)

    @property
    def theoretical_bytes(self) -> int:
        """The law's bytes for this task (in its stored dtype); without an adapter, its own stored parameters."""
        per = DTYPE_BYTES.get(self.dtype, BYTES_PER_PARAM)
        if self.adapter_size is None:
            return self.stored_params * per
        adapter = task_params(self.layers, self.hidden, self.adapter_size, self.classes, self.drop_layers) * per
        return adapter + self.fusion_bytes


def build_report(tasks: Iterable[StoredTask]) -> dict[str, Any]:
    """The storage report: per task in arrival order, cumulative bytes versus the law and K·|w|.

    Args:
        tasks: One entry per task with stored artifacts, in arrival order.

    Returns:
        A JSON-able dict: `backbone_params`, `backbone_bytes`, `tasks` (each with `task, method,
        bytes, cumulative_bytes, full_copy_cumulative_bytes, theoretical_bytes` — the last three
        cumulative over the first K tasks — plus `theoretical_task_bytes`, `adapter_size`,
        `classes`, `artifacts`), `total_bytes`, `full_copy_total_bytes`, `theoretical_total_bytes`,
        `ratio` (stored / full copies) and `measured_over_theoretical`. Ratios are None when empty.
    """
    rows, stored, full, theory, fused = [], 0, 0, 0, 0
    last: StoredTask | None = None
    for t in tasks:
        stored += t.bytes
        full += t.backbone_bytes
        theory += t.theoretical_bytes
        fused += t.fusion_bytes
        rows.append({
            "task": t.task, "method": t.method, "adapter_size": t.adapter_size, "classes": t.classes,
            "artifacts": t.artifacts, "bytes": t.bytes, "cumulative_bytes": stored,
            "full_copy_cumulative_bytes": full, "theoretical_task_bytes": t.theoretical_bytes,
            "theoretical_bytes": theory, "fusion_task_bytes": t.fusion_bytes, "fusion_bytes": fused,
        })
        last = t
    return {
        "backbone": last.backbone if last else None,
        "backbone_fingerprint": last.backbone_fingerprint if last else None,
        "layers": last.layers if last else None,
        "hidden": last.hidden if last else None,
        "backbone_params": last.backbone_params if last else None,
        "backbone_bytes": last.backbone_bytes if last else None,
        "bytes_per_param": BYTES_PER_PARAM,
        "task_count": len(rows),
        "tasks": rows,
        "total_bytes": stored,
        "full_copy_total_bytes": full,
        "theoretical_total_bytes": theory,
        "fusion_total_bytes": fused,
        "ratio": stored / full if full else None,
        "measured_over_theoretical": stored / theory if theory else None,
    }


def human_bytes(n: float) -> str:
    """Bytes in decimal units: `2.42 MB`, `90.9 MB`, `1.36 GB`."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def plot(report: dict[str, Any], path: str | Path) -> Path:
    """Draw cumulative storage against the number of tasks K: measured, the 4Lmd law, and K·|w|.

    Args:
        report: A `build_report` result with at least one task.
        path: Where to write the PNG.

    Returns:
        The path written.

    Raises:
        ValueError: the report has no tasks.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator

    tasks = report["tasks"]
    if not tasks:
        raise ValueError("the storage report has no tasks to plot")
    ks = range(1, len(tasks) + 1)
    measured = [t["cumulative_bytes"] for t in tasks]
    theory = [t["theoretical_bytes"] for t in tasks]
    full = [t["full_copy_cumulative_bytes"] for t in tasks]
    marker = "o" if len(tasks) <= 30 else None
    sizes = sorted({t["adapter_size"] for t in tasks if t["adapter_size"] is not None})
    m_text = "m=" + "/".join(map(str, sizes)) if sizes else "no adapters"
    L, d = report["layers"], report["hidden"]

    fig, ax = plt.subplots(figsize=(8.5, 5.2), dpi=120)
    ax.plot(ks, full, color="#c0392b", lw=2.2, marker=marker, zorder=3,
            label=f"Full fine-tuning: one backbone copy per task, K·|w|  (|w| = {human_bytes(full[0])})")
    # The measured line is wide and pale, the law thin and dashed on top: where they agree, both show.
    ax.plot(ks, measured, color="#5dade2", lw=6, marker=marker, ms=9, alpha=0.6, solid_capstyle="round",
            zorder=2, label="Measured: adapter files the catalogue holds")
    ax.plot(ks, theory, color="#1b2631", lw=1.4, ls="--", zorder=4,
            label=f"Adapter law: K·[2L(2md+m+d)+(4L+2)d+(d+1)C]·4 B ≈ K·4Lmd  (L={L}, d={d}, {m_text})")
    if any(t.get("fusion_task_bytes") for t in tasks):
        # the fusion layers are their own term of the law: drawn apart, so their share is visible
        ax.plot(ks, [max(t["fusion_bytes"], 1) for t in tasks], color="#8e44ad", lw=1.4, ls=":", marker=marker, ms=4,
                zorder=4, label="of which fusion layers: 2L(3d²+2d) per fused task, or 2L(6dR+2d) with --fusion-rank R")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5 if len(tasks) < 10 else 0, len(tasks) + (0.5 if len(tasks) < 10 else 0))
    ax.set_ylim(min(measured + theory) / 3, max(full) * 6)
    ax.set_xlabel("K, number of tasks learned")
    ax.set_ylabel("Cumulative storage (log scale; 1 MB = 10⁶ bytes)")
    backbone = report["backbone"] or "backbone"
    ax.set_title(f"Storage for K tasks on a frozen {backbone}: adapters vs full copies", fontsize=11)
    ax.annotate(
        f"K={len(tasks):,}: {human_bytes(measured[-1])} stored\nvs {human_bytes(full[-1])} for full copies "
        f"= {100 * measured[-1] / full[-1]:.2f}%, {full[-1] / measured[-1]:.0f}× less",
        xy=(ks[-1], measured[-1]), xytext=(-10, 22), textcoords="offset points", ha="right", va="bottom",
        fontsize=9, color="#1b4f72", arrowprops={"arrowstyle": "->", "color": "#1b4f72"},
    )
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.95)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (folders created) and close a matplotlib figure; the path written."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
