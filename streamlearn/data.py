"""Reading and validating task datasets (JSONL), label maps and the carved validation split.

Every check runs before anything is stored, and every failure names the file, the line and the
field, so a user can fix the file without reading code. Text policy: C0 control characters other
than tab, newline and carriage return (and DEL) are stripped from texts, because tokenizers drop
or mangle them anyway; a text that is empty after stripping is rejected as empty.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from streamlearn.errors import InvalidDataset

_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Example:
    """One labelled (or, for prediction input, unlabelled) text."""

    text: str
    """The text to classify (control characters already stripped)."""
    label: str | int | None
    """The label as written in the file (string or integer); None only in prediction input."""
    text_pair: str | None = None
    """Second text of a sentence-pair task, or None."""


@dataclass(frozen=True)
class DataSpec:
    """Field names and limits used when reading a dataset."""

    text_field: str = "text"
    """JSON field holding the text (`--text-field`)."""
    label_field: str = "label"
    """JSON field holding the label (`--label-field`)."""
    pair_field: str = "text_pair"
    """Optional JSON field holding the second text of a pair task."""
    max_classes: int = 1000
    """Most distinct labels a task may have."""
    max_line_bytes: int = 1_000_000
    """Longest line accepted, in bytes (guards against a file that is one huge line)."""

    def __post_init__(self) -> None:
        names = (self.text_field, self.label_field, self.pair_field)
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != 3:
            raise InvalidDataset("text, label and pair field names must be distinct, non-empty strings")
        if self.max_classes < 2:
            raise InvalidDataset("max_classes must be at least 2")
        if self.max_line_bytes < 16:
            raise InvalidDataset("max_line_bytes must be at least 16")


@dataclass(frozen=True)
class Dataset:
    """A validated task: its three splits and its sorted label names."""

    train: list[Example]
    """Training examples."""
    validation: list[Example]
    """Validation examples (model selection); carved from train when no file was given."""
    test: list[Example]
    """Test examples (may be empty)."""
    labels: tuple[str, ...]
    """Label names as strings, sorted (numerically when the labels are integers)."""
    files: dict[str, str] = field(default_factory=dict)
    """Split name -> path given by the user; "validation" is absent when it was carved from train."""

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise InvalidDataset("a dataset needs at least 2 distinct labels")

    def label_index(self, label: str | int) -> int:
        """Return the class index of `label` (a name from the file, string or integer)."""
        try:
            return self.labels.index(str(label))
        except ValueError:
            raise InvalidDataset(f"label {label!r} is not one of {list(self.labels)}") from None

    @property
    def is_pair(self) -> bool:
        """True when the examples carry a second text."""
        return self.train[0].text_pair is not None

    def capped(self, n: int, seed: int = 0) -> Dataset:
        """Return a copy whose train split is a seeded, stratified subset of at most `n` examples."""
        if n < len(self.labels):
            raise InvalidDataset(f"a train cap of {n} cannot hold one example of each of {len(self.labels)} classes")
        if n >= len(self.train):
            return self
        keep = _stratified_pick(self.train, n / len(self.train), seed, min_per_class=1)
        train = [ex for i, ex in enumerate(self.train) if i in keep]
        return Dataset(train, self.validation, self.test, self.labels, dict(self.files))


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_bytes(path: Path) -> bytes:
    if path.is_dir():
        raise InvalidDataset(f"{path}: is a directory, not a JSONL file")
    if not path.exists():
        raise InvalidDataset(f"{path}: no such file")
    try:
        raw = path.read_bytes()
    except PermissionError:
        raise InvalidDataset(f"{path}: cannot be read (permission denied)") from None
    except OSError as exc:
        raise InvalidDataset(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise InvalidDataset(f"{path}: not a valid gzip file ({exc})") from None
    if not raw:
        raise InvalidDataset(f"{path}: file is empty")
    if raw.startswith(_BOM):
        raw = raw[len(_BOM) :]
    if not raw.strip():
        raise InvalidDataset(f"{path}: file holds only whitespace, no examples")
    return raw


def _decode(path: Path, lineno: int, line: bytes, last: bool, first: bool, spec: DataSpec) -> dict:
    where = f"{path}:{lineno}"
    if len(line) > spec.max_line_bytes:
        raise InvalidDataset(f"{where}: line is {len(line):,} bytes, over the limit of {spec.max_line_bytes:,}")
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
        raise InvalidDataset(f"{where}: not a JSON object (got {_kind(obj)})")
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


def _kind(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _text(where: str, obj: dict, name: str, flag: str) -> str:
    if name not in obj:
        fields = ", ".join(sorted(obj)) or "none"
        raise InvalidDataset(f"{where}: field {name!r}: missing (the line has fields: {fields}; see {flag})")
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidDataset(f"{where}: field {name!r}: must be a string, got {_kind(value)}")
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


def _label(where: str, obj: dict, name: str) -> str | int:
    if name not in obj or obj[name] is None:
        fields = ", ".join(sorted(obj)) or "none"
        raise InvalidDataset(f"{where}: field {name!r}: missing label (the line has fields: {fields}; see --label-field)")
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidDataset(f"{where}: field {name!r}: a label must be a string or an integer, got {_kind(value)}")
    if isinstance(value, str) and not value.strip():
        raise InvalidDataset(f"{where}: field {name!r}: empty label")
    return value


def read_jsonl(path: str | Path, spec: DataSpec = DataSpec(), require_label: bool = True) -> list[Example]:
    """Read and validate one JSONL (or .jsonl.gz) file of examples.

    Args:
        path: The file; a UTF-8 BOM and CRLF line ends are accepted.
        spec: Field names and limits.
        require_label: False for prediction input, where labels are optional.

    Returns:
        The examples in file order.

    Raises:
        InvalidDataset: With a "FILE:LINE: field 'NAME': problem" message for the first bad line.
    """
    return [ex for _, ex in _read_numbered(Path(path), spec, require_label)]


def _read_numbered(path: Path, spec: DataSpec, require_label: bool) -> list[tuple[int, Example]]:
    lines = _read_bytes(path).split(b"\n")
    examples: list[tuple[int, Example]] = []
    label_type: tuple[type, int] | None = None
    pair_seen: tuple[bool, int] | None = None
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip(b"\r")
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = _decode(path, lineno, line, lineno == len(lines), not examples, spec)
        text = _text(where, obj, spec.text_field, "--text-field")
        label = _label(where, obj, spec.label_field) if require_label or spec.label_field in obj else None
        if label is not None:
            if label_type is None:
                label_type = (type(label), lineno)
            elif type(label) is not label_type[0]:
                first = "integer" if label_type[0] is int else "string"
                raise InvalidDataset(
                    f"{where}: field {spec.label_field!r}: {_kind(label)} label {label!r}, but line "
                    f"{label_type[1]} has a {first} label; use one type for every label"
                )
        has_pair = spec.pair_field in obj
        if pair_seen is None:
            pair_seen = (has_pair, lineno)
        elif has_pair != pair_seen[0]:
            state = "present" if pair_seen[0] else "absent"
            raise InvalidDataset(
                f"{where}: field {spec.pair_field!r}: {state} on line {pair_seen[1]} but not here; "
                "a sentence-pair task needs it on every line"
            )
        pair = _text(where, obj, spec.pair_field, "the pair field") if has_pair else None
        examples.append((lineno, Example(text, label, pair)))
    labels = {ex.label for _, ex in examples if ex.label is not None}
    if len(labels) > spec.max_classes:
        raise InvalidDataset(f"{path}: field {spec.label_field!r}: {len(labels):,} classes, over the limit of {spec.max_classes:,}")
    return examples


def _sorted_labels(examples: list[Example]) -> tuple[str, ...]:
    values = {ex.label for ex in examples}
    return tuple(str(v) for v in sorted(values))  # one type per file is enforced, so sorting is well defined


def _stratified_pick(examples: list[Example], fraction: float, seed: int, min_per_class: int) -> set[int]:
    """Indices of a seeded per-class sample of about `fraction` of each class."""
    rng = random.Random(seed)
    by_class: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        by_class.setdefault(str(ex.label), []).append(i)
    picked: set[int] = set()
    for key in sorted(by_class):
        idx = by_class[key]
        rng.shuffle(idx)
        picked.update(idx[: max(min_per_class, round(len(idx) * fraction))])
    return picked


def _check_split(name: str, path: str | Path, spec: DataSpec, train: list[Example]) -> list[Example]:
    numbered = _read_numbered(Path(path), spec, require_label=True)
    examples = [ex for _, ex in numbered]
    known = {str(ex.label) for ex in train}
    train_type = type(train[0].label)
    for lineno, ex in numbered:
        if type(ex.label) is not train_type or str(ex.label) not in known:
            raise InvalidDataset(
                f"{path}:{lineno}: field {spec.label_field!r}: label {ex.label!r} does not occur in "
                f"the train file (train labels: {sorted(known)[:10]})"
            )
    if (examples[0].text_pair is None) != (train[0].text_pair is None):
        raise InvalidDataset(f"{path}: field {spec.pair_field!r}: the {name} file and the train file disagree on text pairs")
    return examples


def load_dataset(
    train: str | Path,
    validation: str | Path | None = None,
    test: str | Path | None = None,
    spec: DataSpec = DataSpec(),
    seed: int = 0,
    val_fraction: float = 0.1,
) -> Dataset:
    """Read and validate a task's files; carve a seeded, stratified validation split when none is given.

    Args:
        train: Training JSONL file.
        validation: Validation file, or None to carve `val_fraction` of train (seeded, stratified).
        test: Optional test file.
        spec: Field names and limits.
        seed: Seed of the carved split.
        val_fraction: Fraction of each class moved to validation when carving.

    Returns:
        The validated Dataset. Nothing is written.

    Raises:
        InvalidDataset: On the first problem, naming file, line and field.
    """
    if not 0 < val_fraction < 1:
        raise InvalidDataset(f"val_fraction must be in (0, 1), got {val_fraction}")
    train_examples = read_jsonl(train, spec)
    labels = _sorted_labels(train_examples)
    if len(labels) < 2:
        raise InvalidDataset(
            f"{train}: field {spec.label_field!r}: only {len(labels)} class ({labels[0]!r}); a task needs at least 2"
        )
    files = {"train": str(train)}
    if validation is None:
        carved = _stratified_pick(train_examples, val_fraction, seed, min_per_class=0)
        counts: dict[str, int] = {}
        for ex in train_examples:
            counts[str(ex.label)] = counts.get(str(ex.label), 0) + 1
        # a class with a single example stays in train, so the head still sees every class
        carved = {i for i in carved if counts[str(train_examples[i].label)] > 1}
        if not carved:
            raise InvalidDataset(f"{train}: too few examples to carve a validation split; pass --validation")
        val_examples = [ex for i, ex in enumerate(train_examples) if i in carved]
        train_examples = [ex for i, ex in enumerate(train_examples) if i not in carved]
    else:
        val_examples = _check_split("validation", validation, spec, train_examples)
        files["validation"] = str(validation)
    test_examples: list[Example] = []
    if test is not None:
        test_examples = _check_split("test", test, spec, train_examples)
        files["test"] = str(test)
    return Dataset(train_examples, val_examples, test_examples, labels, files)
