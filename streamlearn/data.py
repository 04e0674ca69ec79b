"""Reading and validating task datasets (JSONL), label maps and the carved validation split.

Every check runs before anything is stored, and every failure names the file, the line and the
field, so a user can fix the file without reading code. Each file is read once (`datafile`): the
pass that validates its lines also hashes its bytes and, at submission, writes the store's copy.
The per-line policy (JSON checks, texts, labels) lives in `examples`.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from streamlearn.datafile import DEFAULT_MAX_BYTES, DatasetFile
from streamlearn.errors import InvalidDataset
from streamlearn.examples import Example, check_inputs, decode_line, kind, label_key, read_label, read_text

__all__ = ["DataSpec", "Dataset", "Example", "check_inputs", "file_sha256", "load_dataset", "read_input", "read_jsonl"]



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
    max_bytes: int = DEFAULT_MAX_BYTES
    """Most (decompressed) bytes a file may hold (`STREAMLEARN_MAX_DATASET_BYTES`, `--max-bytes`)."""

    def __post_init__(self) -> None:
        names = (self.text_field, self.label_field, self.pair_field)
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != 3:
            raise InvalidDataset("text, label and pair field names must be distinct, non-empty strings")
        if self.max_classes < 2:
            raise InvalidDataset("max_classes must be at least 2")
        if self.max_line_bytes < 16:
            raise InvalidDataset("max_line_bytes must be at least 16")
        if self.max_bytes < 16:
            raise InvalidDataset("max_bytes must be at least 16")


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
    digests: dict[str, str] = field(default_factory=dict)
    """Split name -> sha256 of the bytes that were read and validated (the same keys as `files`)."""

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
        return Dataset(train, self.validation, self.test, self.labels, dict(self.files), dict(self.digests))


def file_sha256(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    return [ex for _, ex in _read_numbered(DatasetFile(path, spec.max_line_bytes, spec.max_bytes), spec, require_label)]


def _read_numbered(source: DatasetFile, spec: DataSpec, require_label: bool) -> list[tuple[int, Example]]:
    """Validate every line of one pass over `source` (which hashes, and may copy, the same bytes)."""
    path = source.path
    examples: list[tuple[int, Example]] = []
    label_type: tuple[type, int] | None = None
    pair_seen: tuple[bool, int] | None = None
    spellings: dict[str | int, tuple[str | int, int]] = {}
    for lineno, line, last in source:
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        obj = decode_line(path, lineno, line, last, not examples)
        text = read_text(where, obj, spec.text_field, "--text-field")
        label = read_label(where, obj, spec.label_field) if require_label or spec.label_field in obj else None
        if label is not None:
            seen = spellings.setdefault(label_key(label), (label, lineno))
            if seen[0] != label:
                raise InvalidDataset(
                    f"{where}: field {spec.label_field!r}: label {label!r} differs from label {seen[0]!r} of line "
                    f"{seen[1]} only in case or surrounding whitespace; write every label one way"
                )
            if label_type is None:
                label_type = (type(label), lineno)
            elif type(label) is not label_type[0]:
                first = "integer" if label_type[0] is int else "string"
                raise InvalidDataset(
                    f"{where}: field {spec.label_field!r}: {kind(label)} label {label!r}, but line "
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
        pair = read_text(where, obj, spec.pair_field, "the pair field") if has_pair else None
        examples.append((lineno, Example(text, label, pair)))
    if not examples:
        raise InvalidDataset(f"{path}: file holds only whitespace, no examples")
    labels = {ex.label for _, ex in examples if ex.label is not None}
    if len(labels) > spec.max_classes:
        raise InvalidDataset(f"{path}: field {spec.label_field!r}: {len(labels):,} classes, over the limit of {spec.max_classes:,}")
    return examples


def read_input(source: DatasetFile, spec: DataSpec = DataSpec()) -> list[Example]:
    """Read prediction input: JSONL (labels optional) when its first non-blank line is an object, else one text per line.

    Raises:
        InvalidDataset: a bad JSONL line, or a plain line that is not UTF-8 (naming the line).
    """
    lines = iter(source)
    head = []
    for item in lines:
        head.append(item)
        if item[1].strip():
            break
    replay = _Replay(source.path, itertools.chain(head, lines))
    if head and head[-1][1].lstrip().startswith(b"{"):
        return [ex for _, ex in _read_numbered(replay, spec, require_label=False)]
    examples = []
    for lineno, line, _ in replay:
        if not line.strip():
            continue
        try:
            examples.append(Example(line.decode("utf-8"), None))
        except UnicodeDecodeError as exc:
            raise InvalidDataset(f"{source.path}:{lineno}: not valid UTF-8 (byte 0x{line[exc.start]:02x} at column "
                                 f"{exc.start + 1})") from None
    return examples


@dataclass
class _Replay:
    """The lines of a source, some already read: what `_read_numbered` iterates."""

    path: Path
    lines: Iterator[tuple[int, bytes, bool]]

    def __iter__(self) -> Iterator[tuple[int, bytes, bool]]:
        return self.lines


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


def _check_split(name: str, source: DatasetFile, spec: DataSpec, train: list[Example]) -> list[Example]:
    path = source.path
    numbered = _read_numbered(source, spec, require_label=True)
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
    copy_to: Callable[[str, Path], BinaryIO] | None = None,
    expected: dict[str, str] | None = None,
) -> Dataset:
    """Read and validate a task's files, each in one pass; carve a seeded, stratified validation split when none is given.

    Args:
        train: Training JSONL file.
        validation: Validation file, or None to carve `val_fraction` of train (seeded, stratified).
        test: Optional test file.
        spec: Field names and limits.
        seed: Seed of the carved split.
        val_fraction: Fraction of each class moved to validation when carving.
        copy_to: `copy_to(split, path)` returns a binary file that receives the raw bytes of that
            split's file as they are read (the store's staging copy), so the bytes validated,
            hashed and stored are the same bytes.
        expected: Split -> sha256 the bytes must have (a stored copy being loaded again).

    Returns:
        The validated Dataset, with the sha256 of each file read in `digests`.

    Raises:
        InvalidDataset: On the first problem, naming file, line and field, or a file whose bytes
            do not match `expected`.
    """
    if not 0 < val_fraction < 1:
        raise InvalidDataset(f"val_fraction must be in (0, 1), got {val_fraction}")
    sources = {split: DatasetFile(path, spec.max_line_bytes, spec.max_bytes,
                                  None if copy_to is None else functools.partial(copy_to, split, Path(path)))
               for split, path in (("train", train), ("validation", validation), ("test", test)) if path is not None}
    dataset = _load(sources, spec, seed, val_fraction)
    for split, want in (expected or {}).items():
        got = dataset.digests.get(split)
        if got != want:
            raise InvalidDataset(
                f"{sources[split].path}: the stored {split} file is corrupt (sha256 {str(got)[:12]}, recorded "
                f"{want[:12]}); submitting the original file again replaces the copy"
            )
    return dataset


def _load(sources: dict[str, DatasetFile], spec: DataSpec, seed: int, val_fraction: float) -> Dataset:
    train = sources["train"].path
    train_examples = [ex for _, ex in _read_numbered(sources["train"], spec, require_label=True)]
    labels = _sorted_labels(train_examples)
    if len(labels) < 2:
        raise InvalidDataset(
            f"{train}: field {spec.label_field!r}: only {len(labels)} class ({labels[0]!r}); a task needs at least 2"
        )
    files = {"train": str(train)}
    validation, test = sources.get("validation"), sources.get("test")
    validation, test = (None if s is None else s.path for s in (validation, test))
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
        val_examples = _check_split("validation", sources["validation"], spec, train_examples)
        files["validation"] = str(validation)
    test_examples: list[Example] = []
    if test is not None:
        test_examples = _check_split("test", sources["test"], spec, train_examples)
        files["test"] = str(test)
    digests = {split: source.sha256 for split, source in sources.items()}
    return Dataset(train_examples, val_examples, test_examples, labels, files, digests)

