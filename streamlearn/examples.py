"""One JSONL line -> one `Example`: the JSON checks, the text and label policy, and prediction inputs.

Text policy: C0 control characters other than tab, newline and carriage return (and DEL) are
stripped from texts and string labels, because tokenizers drop or mangle them anyway; a text or
label that is empty after stripping is refused. Two labels that differ only in case or surrounding
whitespace are refused by the reader (`label_key`), never merged.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from streamlearn.errors import InvalidConfig, InvalidDataset

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled (or, for prediction input, unlabelled) text."""

    text: str
    """The text to classify (control characters already stripped)."""
    label: str | int | None
    """The label as written in the file (string or integer); None only in prediction input."""
    text_pair: str | None = None
    """Second text of a sentence-pair task, or None."""


def decode_line(path: Path, lineno: int, line: bytes, last: bool, first: bool) -> dict:
    """Parse one line as a JSON object, or raise InvalidDataset naming the line and what is wrong."""
    where = f"{path}:{lineno}"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidDataset(f"{where}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as dup:
        raise InvalidDataset(f"{where}: field {dup.args[0]!r}: appears twice on the line") from None
    except RecursionError:
        raise InvalidDataset(f"{where}: not a JSON object (nested too deeply)") from None
    except json.JSONDecodeError as exc:
        if first and text.lstrip().startswith("["):
            raise InvalidDataset(f"{where}: {_ARRAY_HINT}") from None
        if _TRAILING_COMMA.match(text, exc.pos - 1 if exc.pos else 0) or (
            exc.msg == "Extra data" and text.rstrip().endswith(",")
        ):
            raise InvalidDataset(
                f"{where}: not a JSON object (trailing comma at column {exc.colno}; JSON allows none, and "
                "JSON Lines puts no commas between lines)"
            ) from None
        if text.lstrip().startswith("{") and (exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string")):
            hint = " (the file ends mid-line)" if last else ""
            raise InvalidDataset(f"{where}: truncated line, the JSON object ends early{hint}") from None
        raise InvalidDataset(f"{where}: not a JSON object ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        if first and isinstance(obj, list):
            raise InvalidDataset(f"{where}: {_ARRAY_HINT}")
        raise InvalidDataset(f"{where}: not a JSON object (got {kind(obj)})")
    return obj


_ARRAY_HINT = "not a JSON object (got an array: the file looks like one JSON array; write JSON Lines, one object per line)"
_TRAILING_COMMA = re.compile(r",\s*[}\]]")


class _DuplicateKey(ValueError):
    """A JSON object names one field twice (json.loads would silently keep the last)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def kind(value: object) -> str:
    """The JSON name of a value's type, for messages (`integer`, `array`, `null`, ...)."""
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def read_text(where: str, obj: dict, name: str, flag: str) -> str:
    """The text field `name` of a decoded line, cleaned by the text policy; `flag` is named when it is missing."""
    if name not in obj:
        fields = ", ".join(sorted(obj)) or "none"
        raise InvalidDataset(f"{where}: field {name!r}: missing (the line has fields: {fields}; see {flag})")
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidDataset(f"{where}: field {name!r}: must be a string, got {kind(value)}")
    value = _CONTROL.sub("", value)
    if not value.strip():
        raise InvalidDataset(f"{where}: field {name!r}: empty text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:  # a JSON escape such as "\ud800" decodes to a lone surrogate
        raise InvalidDataset(
            f"{where}: field {name!r}: invalid Unicode (unpaired surrogate \\u{ord(value[exc.start]):04x} "
            f"at character {exc.start + 1})"
        ) from None
    return value


def read_label(where: str, obj: dict, name: str) -> str | int:
    """The label field `name` of a decoded line: an integer, or a string cleaned by the text policy (interned)."""
    if name not in obj or obj[name] is None:
        fields = ", ".join(sorted(obj)) or "none"
        raise InvalidDataset(f"{where}: field {name!r}: missing label (the line has fields: {fields}; see --label-field)")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidDataset(f"{where}: field {name!r}: a label must be a string or an integer, got {kind(value)}")
    if isinstance(value, str):
        value = _CONTROL.sub("", value)  # the text policy, applied to labels too
        if not value.strip():
            raise InvalidDataset(f"{where}: field {name!r}: empty label")
        value = sys.intern(value)  # a task has few labels and many lines: one string object per label
    return value


def label_key(label: str | int) -> str | int:
    """Labels with one key look alike to a reader ("pos", "Pos ", "POS"): a file may use only one of them."""
    return label.strip().casefold() if isinstance(label, str) else label


def check_inputs(texts: Sequence[str], pairs: Sequence[str] | None, pair_task: bool) -> tuple[list[str], list[str] | None]:
    """Check prediction inputs against the task and clean them by the training text policy.

    A pair task needs a second text for every input, a single-text task takes none, and a text
    that is empty once control characters are removed is refused, as training refuses it.

    Args:
        texts: The texts to classify.
        pairs: The second texts, or None.
        pair_task: Whether the task was trained on text pairs.

    Returns:
        (texts, pairs) with control characters removed.

    Raises:
        InvalidConfig: one line naming the first input that disagrees with the task.
    """
    if pair_task and pairs is None:
        raise InvalidConfig("this is a sentence-pair task: every input needs a text_pair (its second text)")
    if not pair_task and pairs is not None:
        raise InvalidConfig("this task takes single texts, but the input has text_pair; drop the second texts")
    if pairs is not None and len(pairs) != len(texts):
        raise InvalidConfig(f"{len(texts)} texts but {len(pairs)} text pairs")
    cleaned = []
    for kind, values in (("text", texts), ("text_pair", pairs or ())):
        out = []
        for i, value in enumerate(values, 1):
            if not isinstance(value, str):
                raise InvalidConfig(f"input {i}: {kind} must be a string, got {kind(value)}")
            value = _CONTROL.sub("", value)
            if not value.strip():
                raise InvalidConfig(f"input {i}: empty {kind}")
            out.append(value)
        cleaned.append(out)
    return cleaned[0], cleaned[1] if pairs is not None else None
