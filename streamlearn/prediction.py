"""Prediction requests over the engine: read a prediction input file, answer TASK[,TASK…]|all.

An input line is `{"text": ..., "text_pair"?: ..., "task"?: ..., "label"?: ...}`. A line's `task`
routes it (a mixed file); lines without one take the tasks named on the command line. The pair
and empty-text rules of a task are the engine's (`engine.check_item`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from streamlearn.errors import InvalidConfig, InvalidDataset


@dataclass(frozen=True)
class Line:
    """One prediction input: its text(s), optional task and optional gold label."""

    text: str
    text_pair: str | None = None
    task: str | None = None
    label: str | int | None = None


def read_lines(path: str | Path) -> list[Line]:
    """Read a prediction input JSONL file.

    Raises:
        InvalidDataset: "FILE:LINE: field 'NAME': problem" for the first bad line.
    """
    from streamlearn.data import _read_bytes

    path = Path(path)
    out = []
    for lineno, raw in enumerate(_read_bytes(path).decode("utf-8-sig", errors="strict").splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InvalidDataset(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise InvalidDataset(f"{where}: a line must be a JSON object")
        for name, required in (("text", True), ("text_pair", False), ("task", False)):
            value = obj.get(name)
            if value is None and not required:
                continue
            if not isinstance(value, str) or not value.strip():
                raise InvalidDataset(f"{where}: field {name!r}: must be a non-empty string")
        label = obj.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
            raise InvalidDataset(f"{where}: field 'label': must be a string or an integer")
        out.append(Line(obj["text"], obj.get("text_pair"), obj.get("task"), label))
    return out


def answer(session, tasks: str | None, texts: list[str], lines: list[Line]) -> dict:
    """Predict every text and line; with several tasks (or `all`) every task on each untasked row.

    Args:
        session: An open `streamlearn.api.Session`.
        tasks: `TASK`, `TASK,TASK…` or `all`; None when every line names its own task.
        texts: Texts given on the command line (for the named tasks).
        lines: Lines of an input file (a line's own task wins).

    Returns:
        {"predictions": [{"task", "text", "label", "probability"}], and per task with labels on
        all its rows, "accuracy": {task: fraction}}.
    """
    names = None
    if tasks is not None:
        names = session.tasks() if tasks == "all" else [t for t in tasks.split(",") if t]
        if not names:
            raise InvalidConfig("no task to predict with: name one, several (A,B) or all")
    rows = [Line(t) for t in texts] + list(lines)
    if not rows:
        raise InvalidConfig("nothing to predict: give TEXT arguments or --input FILE.jsonl")
    items, gold = [], []
    for row in rows:
        for task in ([row.task] if row.task is not None else names or []):
            items.append((task, row.text, row.text_pair))
            gold.append(row.label)
        if row.task is None and names is None:
            raise InvalidConfig(f"input text {row.text[:40]!r} names no task, and none was given")
    predictions = session.predict_items(items)
    out = {"predictions": [
        {"task": p.task, "text": item[1], "label": p.label, "probability": round(p.score, 6)}
        for item, p in zip(items, predictions)
    ]}
    scored: dict[str, list[bool]] = {}
    for item, p, label in zip(items, predictions, gold):
        scored.setdefault(item[0], []).append(None if label is None else str(label) == p.label)
    accuracy = {t: sum(v) / len(v) for t, v in scored.items() if None not in v}
    if accuracy:
        out["accuracy"] = accuracy
    return out
