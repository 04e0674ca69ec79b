"""`predict`: labels and probabilities from a stored artifact, for texts, a file, or standard input.

torch is imported inside the command only, so the other commands stay instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from streamlearn.cli import main
from streamlearn.cli.console import echo_json, make_console, plain
from streamlearn.cli.engine import backbone_option
from streamlearn.errors import InvalidConfig


def predict_rows(artifact: str | Path, texts: list[str], input_file: str | None, backbone_dir: str | None,
                 expected_sha256: str | None = None, top: int | None = 1) -> dict:
    """Predict the likely labels and their probabilities for each text (and each line of `input_file`).

    Args:
        artifact: The task artifact.
        texts: Texts given as arguments.
        input_file: JSONL (labels optional) or plain text, one input per line; `-` reads standard input.
        backbone_dir: The backbone (None: the configured one).
        expected_sha256: The artifact's digest in the catalogue, checked too.
        top: Classes reported per text, best first (None: every class).

    Returns:
        {"artifact", "predictions": [{"text", "label", "probability"} (+ "text_pair" for pair
        inputs, + "scores": [{"label", "probability"}] when `top` is not 1)], and, when the input
        file carries labels on every line, "accuracy" and "macro_f1"}.
    """
    import sys

    from streamlearn.backbone import load_backbone
    from streamlearn.data import DataSpec, Example, read_input
    from streamlearn.datafile import DatasetFile
    from streamlearn.predictor import load_predictor
    from streamlearn.settings import get_settings

    examples = [Example(t, None) for t in texts]
    if input_file is not None:
        spec = DataSpec(max_bytes=get_settings().max_dataset_bytes)
        stdin = input_file == "-"
        source = DatasetFile("<stdin>" if stdin else input_file, spec.max_line_bytes, spec.max_bytes,
                             stream=sys.stdin.buffer if stdin else None)
        examples += read_input(source, spec)
    if not examples:
        raise InvalidConfig("nothing to predict: give TEXT arguments or --input FILE (- for standard input)")
    if len({ex.text_pair is None for ex in examples}) > 1:
        raise InvalidConfig("mix of single texts and text pairs; a task takes one kind")
    predictor = load_predictor(artifact, load_backbone(backbone_dir), expected_sha256)
    pairs = [ex.text_pair for ex in examples] if examples[0].text_pair is not None else None
    ranked = predictor.ranked([ex.text for ex in examples], pairs, top)
    rows = []
    for ex, classes in zip(examples, ranked):
        row = {"text": ex.text, "label": classes[0][0], "probability": round(classes[0][1], 6)}
        if ex.text_pair is not None:
            row["text_pair"] = ex.text_pair
        if top != 1:
            row["scores"] = [{"label": label, "probability": round(p, 6)} for label, p in classes]
        rows.append(row)
    out: dict = {"artifact": str(artifact), "predictions": rows}
    if all(ex.label is not None for ex in examples):
        metrics = predictor.evaluate(examples)
        out.update(accuracy=metrics.accuracy, macro_f1=metrics.macro_f1)
    return out


def render_predictions(result: dict, as_json: bool, as_jsonl: bool = False) -> None:
    """Print `predict_rows` output as JSON, as JSON Lines (one prediction per line), or as a table."""
    if as_json:
        echo_json(result)
        return
    if as_jsonl:
        import json

        for row in result["predictions"]:
            click.echo(json.dumps(row))
        if "accuracy" in result:
            click.echo(f"accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}", err=True)
        return
    from rich.table import Table

    tasks = "task" in (result["predictions"][0] if result["predictions"] else {})
    scores = any("scores" in row for row in result["predictions"])
    table = Table(*(("task",) if tasks else ()), "text", "label", "probability", *(["scores"] if scores else []))
    for row in result["predictions"]:
        text = row["text"] if len(row["text"]) <= 80 else row["text"][:77] + "..."
        extra = [plain(", ".join(f"{s['label']} {s['probability']:.3f}" for s in row["scores"]))] if scores else []
        table.add_row(*((plain(row["task"]),) if tasks else ()), plain(text), plain(str(row["label"])),
                      f"{row['probability']:.3f}", *extra)
    console = make_console()
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
@click.option("--input", "input_file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Inputs, one per line: JSONL ({\"text\": ..., optional \"text_pair\", \"label\" and \"task\"}; "
                   "with a label on every line of a task, its accuracy is printed; without --artifact a line's "
                   "own \"task\" routes it, a mixed file) or plain text lines. '-' reads standard input.")
@click.option("--all-scores", is_flag=True, help="Report every class's probability, best first.")
@click.option("--top", type=click.IntRange(min=1), default=None, metavar="K",
              help="Report the K most likely classes with their probabilities.")
@backbone_option
@click.option("--server", envvar="STREAMLEARN_SERVER", default=None,
              help="URL of a running `streamlearn serve` (default: $STREAMLEARN_SERVER) to ask instead of loading "
                   "the backbone here (not with --artifact). Sends $STREAMLEARN_API_TOKEN when set.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--jsonl", "as_jsonl", is_flag=True,
              help="Print one JSON object per prediction and line (for large batches; accuracy goes to stderr).")
def predict_command(texts, artifact, input_file, all_scores, top, backbone_dir, server, as_json, as_jsonl) -> None:
    """Print the most likely label and its probability for each TEXT and each --input line.

    Usage: `predict TASK[,TASK...]|all [TEXT ...]` (the catalogue's current artifacts; several
    tasks run in one pass over the shared backbone, each text with every task),
    `predict --input FILE.jsonl` (each line may name its task), or `predict --artifact FILE [TEXT ...]`.
    Every artifact's sha256 (also against the catalogue's, for a task) and its backbone fingerprint
    are checked first; an artifact trained on another backbone is refused, and an unknown task is
    an error that names it. Inputs must fit the task: a sentence-pair task needs "text_pair" on
    every input (JSONL), a single-text task takes none, and a text empty after removing control
    characters is refused (one line, exit code 2). Texts and labels are printed as plain text,
    with control and bidi characters escaped; JSON output is exact. With --server URL (or
    STREAMLEARN_SERVER) a running `streamlearn serve` answers instead, with the same output.
    """
    if as_json and as_jsonl:
        raise click.UsageError("give --json or --jsonl, not both")
    if all_scores and top is not None:
        raise click.UsageError("give --all-scores or --top K, not both")
    k = None if all_scores else (top or 1)
    if artifact is not None:
        render_predictions(predict_rows(artifact, list(texts), input_file, backbone_dir, top=k), as_json, as_jsonl)
        return
    if not texts and input_file is None:
        raise click.UsageError("give TASK[,TASK...]|all (see `streamlearn tasks`), --input FILE or --artifact FILE")
    import streamlearn
    from streamlearn.prediction import answer, read_lines

    lines = read_lines(input_file) if input_file is not None else []
    tasks, texts = (texts[0], list(texts[1:])) if texts else (None, [])
    if server:
        from streamlearn.serve.client import ServerSession

        render_predictions(answer(ServerSession(server), tasks, texts, lines, top=k), as_json, as_jsonl)
        return
    with streamlearn.open(backbone=backbone_dir) as session:
        render_predictions(answer(session, tasks, texts, lines, top=k), as_json, as_jsonl)
