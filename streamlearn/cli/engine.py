"""Engine commands: `train` (in-process, no queue or catalogue), `backbone`, `predict` on an artifact.

torch and transformers are imported inside the commands, never at module level, so that the
read-only commands of the other CLI modules stay instant.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import click

from streamlearn.cli import echo_json, main, make_console
from streamlearn.errors import InvalidConfig
from streamlearn.methods import METHODS

BACKBONE_HELP = (
    "Backbone model directory (BERT, RoBERTa or DistilBERT layout). "
    "Default: $STREAMLEARN_BACKBONE, else the packaged all-MiniLM-L6-v2."
)


DATA_LIMITS = """\b
Limits (an input over one is refused with FILE:LINE: field 'NAME': reason, exit code 2):
  classes        2 to 1000 (--max-classes)
  line length    1,000,000 bytes (--max-line-bytes), measured after gunzip
  encoding       UTF-8 (a BOM and CRLF line ends are fine); .jsonl.gz is read as gzip
  text           a non-empty string; C0 control characters other than tab/newline/CR are
                 removed, and a text empty after that is refused
  labels         strings or integers (not floats, booleans, null or nested), one type per file
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
@backbone_option
@click.option("--output", type=click.Path(file_okay=False), default="artifacts", show_default=True,
              help="Folder for the artifact: <name>-<method>.safetensors + .json sidecar, where <name> is DATA's "
                   "stem (its folder's name for a file called train.jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table; no progress bar.")
@with_data_limits()
def train_command(data, validation, test_file, method, adapter_size, top_k, sigma, pooling, drop_layers, store_dtype,
                  epochs, lr, batch_size, max_length, seed, warmup, weight_decay, max_grad_norm, text_field,
                  label_field, max_classes, max_line_bytes, train_cap, backbone_dir, output, as_json) -> None:
    """Train one task in this process (no queue, no catalogue) and write its artifact.

    DATA is a JSONL (or .jsonl.gz) file with one {"text": ..., "label": ...} object per line, and
    optionally "text_pair" on every line for sentence-pair tasks. Labels may be strings or integers
    (one type per file). Every line is validated before training starts; nothing is written when a
    file is invalid. Device: $STREAMLEARN_DEVICE (auto = CUDA when present).
    """
    from streamlearn.data import DataSpec, load_dataset

    spec = DataSpec(text_field=text_field, label_field=label_field, max_classes=max_classes,
                    max_line_bytes=max_line_bytes)
    dataset = load_dataset(data, validation, test_file, spec=spec, seed=seed)
    if train_cap is not None:
        dataset = dataset.capped(train_cap, seed=seed)
    from streamlearn.methods import MethodConfig
    from streamlearn.training import TrainConfig

    method_cfg = MethodConfig(method=method, adapter_size=adapter_size, top_k=top_k, sigma=sigma, pooling=pooling,
                              drop_layers=drop_layers)
    train_cfg = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, seed=seed,
                            warmup=warmup, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
                            store_dtype=store_dtype)
    target = Path(output) / f"{_task_name(Path(data))}-{method}.safetensors"
    summary = run_train(dataset, method_cfg, train_cfg, backbone_dir, target, show_progress=not as_json)
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


def run_train(dataset, method_cfg, train_cfg, backbone_dir: str | None, target: Path, show_progress: bool) -> dict:
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

            result = fit(dataset, method_cfg, train_cfg, backbone, on_progress)
    else:
        result = fit(dataset, method_cfg, train_cfg, backbone)
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
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "train_examples_per_s": round(result.train_examples_per_s, 1),
        "seconds": round(result.seconds, 1),
    }


def _render_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in summary.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    Console().print(table)


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


def predict_rows(artifact: str | Path, texts: list[str], input_file: str | None, backbone_dir: str | None,
                 expected_sha256: str | None = None) -> dict:
    """Predict a label and probability for each text (and each line of `input_file`).

    Returns:
        {"artifact", "predictions": [{"text", "label", "probability"}], and, when the input file
        carries labels on every line, "accuracy" and "macro_f1"}.
    """
    from streamlearn.backbone import load_backbone
    from streamlearn.data import Example, read_jsonl
    from streamlearn.predictor import load_predictor

    examples = [Example(t, None) for t in texts]
    if input_file is not None:
        examples += read_jsonl(input_file, require_label=False)
    if not examples:
        raise InvalidConfig("nothing to predict: give TEXT arguments or --input FILE.jsonl")
    if len({ex.text_pair is None for ex in examples}) > 1:
        raise InvalidConfig("mix of single texts and text pairs; a task takes one kind")
    predictor = load_predictor(artifact, load_backbone(backbone_dir), expected_sha256)
    pairs = [ex.text_pair for ex in examples] if examples[0].text_pair is not None else None
    preds = predictor.predict([ex.text for ex in examples], pairs)
    out: dict = {"artifact": str(artifact), "predictions": [
        {"text": ex.text, "label": label, "probability": round(prob, 6)} for ex, (label, prob) in zip(examples, preds)
    ]}
    if all(ex.label is not None for ex in examples):
        metrics = predictor.evaluate(examples)
        out.update(accuracy=metrics.accuracy, macro_f1=metrics.macro_f1)
    return out


def render_predictions(result: dict, as_json: bool) -> None:
    """Print `predict_rows` output as JSON or as a table."""
    if as_json:
        echo_json(result)
        return
    from rich.console import Console
    from rich.table import Table

    tasks = "task" in (result["predictions"][0] if result["predictions"] else {})
    table = Table(*(("task",) if tasks else ()), "text", "label", "probability")
    for row in result["predictions"]:
        text = row["text"] if len(row["text"]) <= 80 else row["text"][:77] + "..."
        table.add_row(*((row["task"],) if tasks else ()), text, str(row["label"]), f"{row['probability']:.3f}")
    console = Console()
    console.print(table)
    if isinstance(result.get("accuracy"), dict):
        for task, accuracy in result["accuracy"].items():
            console.print(f"{task}: accuracy {accuracy:.4f}")
    elif "accuracy" in result:
        console.print(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}")


@main.command("predict")
@click.argument("texts", nargs=-1)
@click.option("--artifact", type=click.Path(dir_okay=False),
              help="A task artifact (.safetensors with its .json sidecar). Without it, the first argument is "
                   "TASK, TASK,TASK... or all, and each task's current artifact in the catalogue is used.")
@click.option("--input", "input_file", type=click.Path(dir_okay=False),
              help="JSONL with a text per line (text_pair for pair tasks; labels optional: with a label on "
                   "every line of a task, its accuracy is printed). Without --artifact, a line's own "
                   "\"task\" field routes it (a mixed file).")
@backbone_option
@click.option("--server", envvar="STREAMLEARN_SERVER", default=None,
              help="URL of a running `streamlearn serve` (default: $STREAMLEARN_SERVER) to ask instead of loading "
                   "the backbone here (not with --artifact). Sends $STREAMLEARN_API_TOKEN when set.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def predict_command(texts, artifact, input_file, backbone_dir, server, as_json) -> None:
    """Print the most likely label and its probability for each TEXT and each --input line.

    Usage: `predict TASK[,TASK...]|all [TEXT ...]` (the catalogue's current artifacts; several
    tasks run in one pass over the shared backbone, each text with every task),
    `predict --input FILE.jsonl` (each line names its task), or `predict --artifact FILE [TEXT ...]`.
    Every artifact's sha256 (also against the catalogue's, for a task) and its backbone fingerprint
    are checked first; an artifact trained on another backbone is refused, and an unknown task is
    an error that names it. With --server URL (or STREAMLEARN_SERVER) a running `streamlearn serve`
    answers instead, with the same output.
    """
    if artifact is not None:
        render_predictions(predict_rows(artifact, list(texts), input_file, backbone_dir), as_json)
        return
    if not texts and input_file is None:
        raise click.UsageError("give TASK[,TASK...]|all (see `streamlearn tasks`), --input FILE or --artifact FILE")
    import streamlearn
    from streamlearn.prediction import answer, read_lines

    lines = read_lines(input_file) if input_file is not None else []
    tasks, texts = (texts[0], list(texts[1:])) if texts else (None, [])
    if server:
        from streamlearn.serve.client import ServerSession

        render_predictions(answer(ServerSession(server), tasks, texts, lines), as_json)
        return
    with streamlearn.open(backbone=backbone_dir) as session:
        render_predictions(answer(session, tasks, texts, lines), as_json)
