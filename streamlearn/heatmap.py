"""The fusion attention heatmap: mean attention per site (rows) and source (columns) of a fused task.

Drawn from the `fusion.attention` entry of its sidecar (`{"sites", "sources", "mean"}`, measured on
the validation set when the task was trained). matplotlib only, no torch.
"""

from __future__ import annotations

from pathlib import Path


def plot(task: str, attention: dict, path: str | Path, title: str | None = None) -> Path:
    """Write the heatmap of one fused task's mean validation attention to a PNG.

    Args:
        task: The fused task (`self` in the columns is its own adapter).
        attention: `{"sites": [...], "sources": [...], "mean": [[float | None]]}`.
        path: The PNG to write.
        title: Overrides the default title.

    Raises:
        ValueError: the attention has no sites.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not attention.get("sites"):
        raise ValueError(f"task {task!r} has no fusion attention to draw")
    values = np.array([[np.nan if v is None else v for v in row] for row in attention["mean"]], dtype=float)
    sources = [f"{task} (own)" if s == "self" else s for s in attention["sources"]]
    sites = [s.replace("layers.", "L").replace(".attention", " attn").replace(".ffn", " ffn") for s in attention["sites"]]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(sources), 1.0 + 0.35 * len(sites)), dpi=120)
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(values))), aspect="auto")
    ax.set_xticks(range(len(sources)), sources, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(sites)), sites, fontsize=8)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] < 0.6 * np.nanmax(values) else "black")
    ax.set_title(title or f"{task}: mean fusion attention on validation", fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04)
    from streamlearn.storage import save_figure

    return save_figure(fig, path)
