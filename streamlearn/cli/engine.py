"""Engine commands: `train` (in-process, no queue or catalogue) and `backbone`; `predict` is in `cli/predict.py`.

torch and transformers are imported inside the commands, never at module level, so that the
read-only commands of the other CLI modules stay instant.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from streamlearn.cli import main
from streamlearn.cli.console import echo_json, make_console, plain
from streamlearn.methods import METHODS

BACKBONE_HELP = (
    "Backbone model directory (BERT, RoBERTa or DistilBERT layout). "
    "Default: $STREAMLEARN_BACKBONE, else the packaged all-MiniLM-L6-v2."
)


DATA_LIMITS = """\b
Limits (an input over one is refused with FILE:LINE: field 'NAME': reason, exit code 2):
  classes        2 to 1000 (--max-classes)
  line length    1,000,000 bytes (--max-line-bytes), measured after gunzip, while reading
  file size      1 GiB after gunzip (--max-bytes, STREAMLEARN_MAX_DATASET_BYTES), while reading
  file kind      a regular file (symlinks followed); a directory, device or FIFO is refused
                 before it is read
  encoding       UTF-8 (a BOM and CRLF line ends are fine); .jsonl.gz is read as gzip
  text           a non-empty string; C0 control characters other than tab/newline/CR are
                 removed, and a text empty after that is refused
  labels         strings or integers (not floats, booleans, null or nested), one type per file;
                 control characters are removed as in texts; two labels that differ only in
                 case or surrounding whitespace ("pos", "Pos ") are refused, naming both
  validation/test  labels must occur in DATA; text_pair on every line of every file or on none"""
"""The dataset limits every command that reads a dataset states in its --help."""


def with_data_limits(*extra_lines: str):
    """Append DATA_LIMITS (and `extra_lines`, indented like it) to a command's docstring.

    Put it innermost (right above `def`), so click reads the completed docstring.
    """

    def decorate(func):
        extra = "".join(f"\n  {line}" for line in extra_lines)
        func.__doc__ = f"{inspect.cleandoc(func.__doc__ or '')}\n\n{DATA_LIMITS}{extra}"
        return func

    return decorate


def training_options(func):
    """The training flags shared by `train` and `submit-task`."""
    options = [
        click.option("--method", type=click.Choice(list(METHODS)), default="adapter", show_default=True,
                     help="; ".join(f"{m.name}: {m.help}" for m in METHODS.values()) + "."),
        click.option("--adapter-size", type=click.IntRange(1, 8192), default=64, show_default=True,
                     help="Adapter bottleneck width m."),
        click.option("--top-k", type=click.IntRange(1, None), default=1, show_default=True,
                     help="Layers fine-tuned by --method top-k (at most L)."),
        click.option("--sigma", type=click.FloatRange(0, 1, min_open=True), default=1e-2, show_default=True,
                     help="Std of the adapters' truncated-normal init."),
        click.option("--pooling", type=click.Choice(["mean", "cls"]), default="mean", show_default=True,
                     help="Head pooling over token states."),
        click.option("--drop-lower", "drop_layers", type=click.IntRange(0, None), default=0, show_default=True,
                     help="AdapterDrop N (adapter, layernorm): no per-task parts in the lowest N layers or the "
                          "embeddings, whose LayerNorms stay the backbone's; 0 is the faithful Houlsby method."),
        click.option("--fuse-from", default="all", show_default=True,
                     help="--method fusion: the source tasks whose adapters the fusion attends over, comma-separated, "
                          "or 'all' (every earlier adapter task on this backbone, in arrival order; for `train`, every "
                          "NAME-adapter.safetensors in --output)."),
        click.option("--fusion-rank", type=click.IntRange(0, 8192), default=0, show_default=True,
                     help="--method fusion: rank R of the fusion layer's query, key and value (d×R then R×d, value = "
                          "identity + a zero-initialised low-rank term); 0 = full d×d (3d²+2d parameters per site)."),
        click.option("--fusion-top", type=click.IntRange(0, None), default=0, show_default=True,
                     help="--method fusion: keep only the N sources with the largest mean attention on validation "
                          "(the task's own adapter is always kept); 0 keeps all."),
        click.option("--store-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
                     show_default=True,
                     help="Dtype of the stored tensors, cast once after training; the recorded metrics are "
                          "measured with the cast tensors (float16/bfloat16 halve the artifact)."),
        click.option("--epochs", type=click.IntRange(1, 1000), default=3, show_default=True,
                     help="Passes over the training set."),
        click.option("--lr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="Peak learning rate. Default per method: adapter 1e-3, layernorm 1e-3, top-k 1e-4, full 3e-5."),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=32, show_default=True,
                     help="Examples per step."),
        click.option("--max-length", type=click.IntRange(2, None), default=128, show_default=True,
                     help="Tokens per example after truncation (at most the backbone's position limit, 512 for MiniLM)."),
        click.option("--seed", type=click.IntRange(0, None), default=0, show_default=True,
                     help="Seed of init, shuffling, dropout and the carved validation split."),
        click.option("--warmup", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
                     help="Fraction of steps warming the learning rate up linearly."),
        click.option("--weight-decay", type=click.FloatRange(0, None), default=0.0, show_default=True,
                     help="AdamW decoupled weight decay."),
        click.option("--max-grad-norm", type=click.FloatRange(0, None), default=1.0, show_default=True,
                     help="Clip gradients to this global norm (0: no clipping)."),
        click.option("--text-field", default="text", show_default=True, help="JSON field holding the text."),
        click.option("--label-field", default="label", show_default=True,
                     help="JSON field holding the label (string or integer)."),
        click.option("--max-classes", type=click.IntRange(2, None), default=1000, show_default=True,
                     help="Most distinct labels a task may have."),
        click.option("--max-line-bytes", type=click.IntRange(16, None), default=1_000_000, show_default=True,
                     help="Longest accepted line, in bytes (after gunzip)."),
        click.option("--max-bytes", type=click.IntRange(16, None), default=None,
                     help="Most bytes a dataset file may hold after gunzip; larger files are refused as soon as "
                          "the limit is passed. Default: $STREAMLEARN_MAX_DATASET_BYTES, else 1073741824 (1 GiB)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def backbone_option(func):
    """Add the shared `--backbone DIR` option (envvar STREAMLEARN_BACKBONE)."""
    return click.option(
        "--backbone", "backbone_dir", type=click.Path(file_okay=False), envvar="STREAMLEARN_BACKBONE", default=None, help=BACKBONE_HELP
    )(func)


@main.command("train")
# Unchecked paths (readable=False only turns click's check off): data.py checks them, so a
# directory or an unreadable file gets the one-line error of every other bad input.
@click.argument("data", type=click.Path(readable=False))
@click.option("--validation", type=click.Path(readable=False), help="Validation JSONL. Default: a seeded, stratified 10% of DATA.")
@click.option("--test", "test_file", type=click.Path(readable=False), help="Test JSONL (optional); reported for the best epoch.")
@training_options
@click.option("--train-cap", type=click.IntRange(2, None), default=None, help="Train on a seeded, stratified subset of at most N examples.")
@click.option("--layer-cache-bytes", type=click.IntRange(0, None), envvar="STREAMLEARN_LAYER_CACHE_BYTES",
              default=1 << 30, show_default=True,
              help="Memory budget of the cache of the frozen lower layers' outputs (with --drop-lower N, or below "
                   "top-k's layers): they run once per job instead of every step; over budget, they are recomputed "
                   "every step. 0 turns the cache off. Env: STREAMLEARN_LAYER_CACHE_BYTES.")
@click.option("--layer-cache-dtype", type=click.Choice(["float32", "float16"]), envvar="STREAMLEARN_LAYER_CACHE_DTYPE",
              default="float32", show_default=True,
              help="Storage dtype of the cached states (float16 halves the cache). Env: STREAMLEARN_LAYER_CACHE_DTYPE.")
@backbone_option
@click.option("--output", type=click.Path(file_okay=False), default="artifacts", show_default=True,
              help="Folder for the artifact: <name>-<method>.safetensors + .json sidecar, where <name> is DATA's "
                   "stem (its folder's name for a file called train.jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table; no progress bar.")
@with_data_limits()
def train_command(data, validation, test_file, method, adapter_size, top_k, sigma, pooling, drop_layers, fuse_from,
                  fusion_rank, fusion_top, store_dtype,
                  epochs, lr, batch_size, max_length, seed, warmup, weight_decay, max_grad_norm, text_field,
                  label_field, max_classes, max_line_bytes, max_bytes, train_cap, layer_cache_bytes, layer_cache_dtype,
                  backbone_dir, output, as_json) -> None:
    """Train one task in this process (no queue, no catalogue) and write its artifact.

    DATA is a JSONL (or .jsonl.gz) file with one {"text": ..., "label": ...} object per line, and
    optionally "text_pair" on every line for sentence-pair tasks. Labels may be strings or integers
    (one type per file). Every line is validated before training starts; nothing is written when a
    file is invalid. Device: $STREAMLEARN_DEVICE (auto = CUDA when present).
    """
    from streamlearn.data import DataSpec, load_dataset
    from streamlearn.settings import get_settings

    spec = DataSpec(text_field=text_field, label_field=label_field, max_classes=max_classes,
                    max_line_bytes=max_line_bytes, max_bytes=max_bytes or get_settings().max_dataset_bytes)
    dataset = load_dataset(data, validation, test_file, spec=spec, seed=seed)
    if train_cap is not None:
        dataset = dataset.capped(train_cap, seed=seed)
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    method_cfg = MethodConfig(method=method, adapter_size=adapter_size, top_k=top_k, sigma=sigma, pooling=pooling,
                              drop_layers=drop_layers, fuse_from=fuse_from, fusion_rank=fusion_rank, fusion_top=fusion_top)
    train_cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
                            warmup=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                            store_dtype=store_dtype)
    target = Path(output) / f"{_task_name(Path(data))}-{method}.safetensors"
    from streamlearn.layercache import CacheConfig

    cache = CacheConfig(budget_bytes=layer_cache_bytes, dtype=layer_cache_dtype)
    sources = folder_sources(Path(output), method_cfg, target) if method == "fusion" else ()
    summary = run_train(dataset, method_cfg, train_cfg, backbone_dir, target, show_progress=not as_json, cache=cache,
                        sources=sources)
    if as_json:
        echo_json(summary)
    else:
        _render_summary(summary)


def _task_name(data: Path) -> str:
    """Name an artifact after its data file, or after the folder when the file is a generic train.jsonl."""
    stem = data.name.split(".")[0]
    if stem.lower() in ("", "train", "training", "data") and data.resolve().parent.name:
        return data.resolve().parent.name
    return stem or "task"


def folder_sources(output: Path, method_cfg, target: Path) -> list:
    """`train --method fusion`'s sources: NAME-adapter.safetensors files in the output folder (no catalogue).

    `all` takes every one (oldest first) but the task's own; names pick `<output>/<name>-adapter.safetensors`.
    """
    from streamlearn.artifacts import read_metadata
    from streamlearn.engine.loading import SourceRef
    from streamlearn.errors import InvalidConfig

    own = target.name.removesuffix("-fusion.safetensors")
    if method_cfg.sources is None:
        files = sorted(output.glob("*-adapter.safetensors"), key=lambda f: (f.stat().st_mtime, f.name))
        files = [f for f in files if f.name.removesuffix("-adapter.safetensors") != own]
    else:
        files = [output / f"{name}-adapter.safetensors" for name in method_cfg.sources]
    missing = [f.name for f in files if not f.is_file()]
    if missing or not files:
        raise InvalidConfig(f"no adapter artifact to fuse in {output}: "
                            f"{', '.join(missing) if missing else 'train some tasks with --method adapter first'}")
    return [SourceRef(f.name.removesuffix("-adapter.safetensors"), read_metadata(f)["sha256"], f.name) for f in files]


def run_train(dataset, method_cfg, train_cfg, backbone_dir: str | None, target: Path, show_progress: bool,
              cache=None, sources=()) -> dict:
    """Fit and save one task; return the `train --json` summary."""
    from streamlearn.backbone import load_backbone
    from streamlearn.pipeline import fit, save

    backbone = load_backbone(backbone_dir)
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        columns = (TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn())
        with Progress(*columns, console=make_console(stderr=True), transient=True) as bar:
            task_id = bar.add_task("train", total=None, epoch=1, loss=float("nan"))

            def on_progress(epoch: int, step: int, total: int, loss: float) -> None:
                bar.update(task_id, completed=step, total=total, epoch=epoch, loss=loss)

            result = fit(dataset, method_cfg, train_cfg, backbone, on_progress, cache=cache, sources=sources,
                         locate=target.parent.joinpath, name=target.stem)
    else:
        result = fit(dataset, method_cfg, train_cfg, backbone, cache=cache, sources=sources,
                     locate=target.parent.joinpath, name=target.stem)
    info = save(result, target)
    return {
        "method": method_cfg.method,
        "trainable_params": result.trainable_params,
        "backbone_params": result.backbone_params,
        "stored_params": result.stored_params,
        "bytes": info.bytes,
        "artifact": str(info.path),
        "val_accuracy": round(result.val.accuracy, 4),
        "val_macro_f1": round(result.val.macro_f1, 4),
        "test_accuracy": round(result.test.accuracy, 4) if result.test else None,
        "test_macro_f1": round(result.test.macro_f1, 4) if result.test else None,
        # The test split's verdict (validation's without a test split): see training.collapsed.
        "collapsed": (result.test or result.val).collapsed,
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "train_examples_per_s": round(result.train_examples_per_s, 1),
        "seconds": round(result.seconds, 1),
        "cached_layers": result.cached_layers,
        "sources": [src["task"] for src in result.metadata.get("sources", [])],
    }


def _render_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in summary.items():
        table.add_row(key, plain(f"{value:,}" if isinstance(value, int) else value))
    make_console().print(table)


@main.command("backbone")
@backbone_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def backbone_command(backbone_dir, as_json) -> None:
    """Describe the backbone: name, path, fingerprint (sha256 of its tensors), layers L, hidden d, params |w|."""
    import dataclasses

    from streamlearn.backbone import load_backbone

    info = dataclasses.asdict(load_backbone(backbone_dir, device="cpu").info)
    if as_json:
        echo_json(info)
    else:
        _render_summary(info)
