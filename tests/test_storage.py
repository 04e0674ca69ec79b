"""The storage law: the exact per-task parameter formula, the report's arithmetic, and the plot."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from streamlearn import storage

W_PARAMS, W_BYTES = 22_713_216, 90_852_864


def _stored(task: str, nbytes: int, m: int | None = 64, classes: int = 2,
            method: str = "adapter") -> storage.StoredTask:
    return storage.StoredTask(task, method, nbytes, 1, m, classes, nbytes // 4, "all-MiniLM-L6-v2", "f" * 64,
                              6, 384, W_PARAMS, W_BYTES)


def test_task_params_counts_adapters_layernorms_and_head() -> None:
    """MiniLM (L=6, d=384) at m=64 with 2 classes stores 605,954 parameters, counted term by term."""
    adapters = 2 * 6 * (64 * 384 + 64 + 64 * 384 + 384)  # down + bias, up + bias, 2 per layer
    layer_norms = (2 * 6 + 1) * 2 * 384  # 2 per layer + the embeddings', gain and bias each
    head = 384 * 2 + 2
    assert storage.task_params(6, 384, 64, 2) == adapters + layer_norms + head == 605_954
    assert storage.task_params(6, 384, 64, 2) / W_PARAMS == pytest.approx(0.02668, abs=1e-5)


def test_task_params_is_about_4Lmd_for_large_adapters() -> None:
    """For m large against C the formula's leading term 4Lmd dominates (within 2% at m=256)."""
    assert storage.task_params(6, 384, 256, 2) == pytest.approx(4 * 6 * 256 * 384, rel=0.02)


def test_task_params_agrees_with_the_engine() -> None:
    """The storage law and the method registry's parameter count are the same formula, AdapterDrop included."""
    from streamlearn.methods import MethodConfig, Shape, parameter_count

    for L, d, m, C, N in [(6, 384, 64, 2, 0), (2, 32, 8, 3, 1), (12, 768, 256, 1000, 5), (6, 384, 64, 2, 6)]:
        assert storage.task_params(L, d, m, C, N) == parameter_count(MethodConfig(adapter_size=m, drop_layers=N), Shape(L, d, C))
    assert storage.task_params(6, 384, 64, 2, 2) == 2 * 4 * (2 * 64 * 384 + 64 + 384) + 4 * 4 * 384 + 385 * 2


def test_build_report_accumulates_in_arrival_order() -> None:
    """Cumulative bytes, K·|w| and the law add up task by task; the ratio is stored over full copies."""
    report = storage.build_report([_stored("a", 2_424_912), _stored("b", 359_380, m=8, classes=3),
                                   _stored("c", 1_000, m=None, method="layernorm")])
    assert [t["cumulative_bytes"] for t in report["tasks"]] == [2_424_912, 2_784_292, 2_785_292]
    assert [t["full_copy_cumulative_bytes"] for t in report["tasks"]] == [W_BYTES, 2 * W_BYTES, 3 * W_BYTES]
    # A method without an adapter has no 4Lmd law: its own stored parameters stand in.
    assert [t["theoretical_task_bytes"] for t in report["tasks"]] == [2_423_816, 358_284, 1_000]
    assert report["theoretical_total_bytes"] == report["tasks"][-1]["theoretical_bytes"] == 2_783_100
    assert report["ratio"] == 2_785_292 / (3 * W_BYTES)


def test_an_empty_report_has_zero_totals_and_no_ratio() -> None:
    """With no tasks the totals are 0 and the ratios None, not a division error."""
    report = storage.build_report([])
    assert (report["tasks"], report["total_bytes"], report["ratio"], report["backbone_bytes"]) == ([], 0, None, None)


def test_human_bytes_uses_decimal_units() -> None:
    """Sizes print in kB/MB/GB with three significant digits."""
    assert [storage.human_bytes(n) for n in (512, 2_423_816, W_BYTES, 272_558_592, 1.5e12)] == [
        "512 B", "2.42 MB", "90.9 MB", "273 MB", "1.5 TB"]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    """plot() writes a readable PNG of sensible size, creating the folder."""
    report = storage.build_report([_stored(f"t{i}", 2_424_912 + i) for i in range(3)])
    path = storage.plot(report, tmp_path / "out" / "storage.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1020, 624) and len(data) > 20_000


def test_plot_refuses_an_empty_report(tmp_path: Path) -> None:
    """There is nothing to draw without tasks, and plot() says so."""
    with pytest.raises(ValueError, match="no tasks"):
        storage.plot(storage.build_report([]), tmp_path / "x.png")


def test_law_follows_each_tasks_drop_lower_depth_and_stored_dtype() -> None:
    """A task stored as float16 with drop-lower 2 is held to the law at N = 2 and 2 bytes per parameter."""
    import dataclasses

    half = dataclasses.replace(_stored("half", 1_000), drop_layers=2, dtype="float16")
    assert half.theoretical_bytes == storage.task_params(6, 384, 64, 2, 2) * 2
    assert _stored("plain", 1_000).theoretical_bytes == 605_954 * 4
    report = storage.build_report([half])
    assert report["theoretical_total_bytes"] == half.theoretical_bytes
