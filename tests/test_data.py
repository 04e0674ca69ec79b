"""Dataset reading and validation: every error names file, line and field; good files load."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from streamlearn.data import DataSpec, load_dataset, read_jsonl
from streamlearn.errors import InvalidDataset


def _write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def _lines(*objs) -> str:
    return "".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs)


GOOD = ({"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"})

BAD_LINES = [
    ("not_utf8", b'{"text": "ok", "label": "a"}\n{"text": "caf\xe9", "label": "b"}\n', r":2: not valid UTF-8"),
    ("not_object", _lines(GOOD[0], "[1, 2]"), r":2: not a JSON object \(got array\)"),
    ("not_json", _lines(GOOD[0], "hello"), r":2: not a JSON object"),
    ("missing_text", _lines(GOOD[0], {"label": "b"}), r":2: field 'text': missing"),
    ("empty_text", _lines(GOOD[0], {"text": "  ", "label": "b"}), r":2: field 'text': empty text"),
    ("control_only_text", _lines(GOOD[0], {"text": "\u0001\u0002", "label": "b"}), r":2: field 'text': empty text"),
    ("nonstring_text", _lines(GOOD[0], {"text": 5, "label": "b"}), r":2: field 'text': must be a string, got integer"),
    ("missing_label", _lines(GOOD[0], {"text": "x"}), r":2: field 'label': missing label"),
    ("null_label", _lines(GOOD[0], {"text": "x", "label": None}), r":2: field 'label': missing label"),
    ("nested_label", _lines(GOOD[0], {"text": "x", "label": ["a"]}), r":2: field 'label': .*got array"),
    ("float_label", _lines(GOOD[0], {"text": "x", "label": 1.5}), r":2: field 'label': .*got float"),
    ("bool_label", _lines(GOOD[0], {"text": "x", "label": True}), r":2: field 'label': .*got boolean"),
    ("mixed_labels", _lines(GOOD[0], {"text": "x", "label": 1}), r":2: field 'label': integer label 1, but line 1 has a string"),
    ("empty_file", "", r"file is empty"),
    ("whitespace_file", "  \n\n \r\n", r"only whitespace"),
    ("truncated_line", _lines(GOOD[0]) + '{"text": "abc", "lab', r":2: truncated line"),
    ("pair_some_lines", _lines({"text": "a", "text_pair": "b", "label": "x"}, {"text": "c", "label": "y"}),
     r":2: field 'text_pair': present on line 1"),
]


@pytest.mark.parametrize("name,content,message", BAD_LINES, ids=[b[0] for b in BAD_LINES])
def test_invalid_line_is_reported_with_file_line_and_field(tmp_path, name, content, message):
    """Each kind of malformed file raises InvalidDataset naming the file and the offending line or field."""
    path = _write(tmp_path / f"{name}.jsonl", content)
    with pytest.raises(InvalidDataset, match=message) as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


def test_line_over_byte_limit_is_refused(tmp_path):
    """A line longer than max_line_bytes is refused with its line number and the limit."""
    path = _write(tmp_path / "long.jsonl", _lines(GOOD[0], {"text": "x" * 500, "label": "b"}))
    with pytest.raises(InvalidDataset, match=r"long.jsonl:2: line is longer than the limit of 100 bytes"):
        read_jsonl(path, DataSpec(max_line_bytes=100))


def test_too_many_classes_is_refused(tmp_path):
    """More distinct labels than max_classes is refused."""
    path = _write(tmp_path / "many.jsonl", _lines(*({"text": f"t{i}", "label": f"c{i}"} for i in range(5))))
    with pytest.raises(InvalidDataset, match=r"field 'label': 5 classes, over the limit of 3"):
        read_jsonl(path, DataSpec(max_classes=3))


def test_unknown_text_field_lists_the_fields_present(tmp_path):
    """A --text-field that no line has names the field and lists the fields the line does have."""
    path = _write(tmp_path / "t.jsonl", _lines(*GOOD))
    with pytest.raises(InvalidDataset, match=r"t.jsonl:1: field 'sentence': missing \(the line has fields: label, text; see --text-field\)"):
        read_jsonl(path, DataSpec(text_field="sentence"))


def test_single_class_is_refused(tmp_path):
    """A train file with one class is refused because a classifier needs at least two."""
    path = _write(tmp_path / "one.jsonl", _lines({"text": "a", "label": "x"}, {"text": "b", "label": "x"}))
    with pytest.raises(InvalidDataset, match=r"one.jsonl: field 'label': only 1 class \('x'\)"):
        load_dataset(path)


def test_validation_label_not_in_train_is_refused(tmp_path):
    """A validation or test label absent from train is refused with its file and line."""
    train = _write(tmp_path / "train.jsonl", _lines(*GOOD))
    val = _write(tmp_path / "val.jsonl", _lines(GOOD[0], {"text": "meh", "label": "neutral"}))
    with pytest.raises(InvalidDataset, match=r"val.jsonl:2: field 'label': label 'neutral' does not occur in the train file"):
        load_dataset(train, validation=val)
    with pytest.raises(InvalidDataset, match=r"val.jsonl:2"):
        load_dataset(train, validation=train, test=val)


def test_bom_crlf_gzip_and_unicode_are_accepted(tmp_path):
    """A BOM, CRLF line ends, gzip compression, CJK and emoji texts all load unchanged."""
    rows = [{"text": "好电影 🎉", "label": "pos"}, {"text": "糟糕 😞", "label": "neg"}]
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n"
    plain = _write(tmp_path / "bom.jsonl", b"\xef\xbb\xbf" + body.encode("utf-8"))
    gz = _write(tmp_path / "data.jsonl.gz", gzip.compress(body.encode("utf-8")))
    for path in (plain, gz):
        examples = read_jsonl(path)
        assert [e.text for e in examples] == ["好电影 🎉", "糟糕 😞"]
        assert [e.label for e in examples] == ["pos", "neg"]


def test_control_characters_are_stripped_but_tab_and_newline_kept(tmp_path):
    """C0 control characters other than tab/newline/CR are removed from texts."""
    path = _write(tmp_path / "c.jsonl", _lines({"text": "a\u0000b\u0007c\td\ne", "label": "x"}, {"text": "z", "label": "y"}))
    assert read_jsonl(path)[0].text == "abc\td\ne"


def test_integer_labels_sort_numerically(tmp_path):
    """Integer labels are kept as integers and their names sort numerically (2 before 10)."""
    rows = [{"text": f"t{i}", "label": lab} for i, lab in enumerate([10, 2, 10, 2, 1, 1])]
    data = load_dataset(_write(tmp_path / "int.jsonl", _lines(*rows)), validation=_write(tmp_path / "v.jsonl", _lines(*rows)))
    assert data.labels == ("1", "2", "10")
    assert data.label_index(10) == 2


def test_carved_validation_is_seeded_and_stratified(tmp_path):
    """Without a validation file, 10% of each class moves to validation, the same for the same seed."""
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    path = _write(tmp_path / "train.jsonl", _lines(*rows))
    first, again, other = load_dataset(path, seed=1), load_dataset(path, seed=1), load_dataset(path, seed=2)
    assert [e.text for e in first.validation] == [e.text for e in again.validation]
    assert [e.text for e in first.validation] != [e.text for e in other.validation]
    assert sorted(e.label for e in first.validation).count("b") == 5
    assert len(first.validation) == 20 and len(first.train) == 180
    assert "validation" not in first.files
    assert not {e.text for e in first.validation} & {e.text for e in first.train}


def test_train_cap_keeps_every_class(tmp_path):
    """capped(n) returns a seeded subset of n train examples that still holds every class."""
    rows = [{"text": f"t{i}", "label": "a" if i % 10 else "b"} for i in range(100)]
    data = load_dataset(_write(tmp_path / "train.jsonl", _lines(*rows)))
    small = data.capped(20, seed=0)
    assert len(small.train) == 20
    assert {e.label for e in small.train} == {"a", "b"}
    assert small.validation == data.validation


def test_sentence_pairs_are_read(tmp_path):
    """A text_pair field present on every line is read as the example's second text."""
    path = _write(tmp_path / "p.jsonl", _lines({"text": "a", "text_pair": "b", "label": 0}, {"text": "c", "text_pair": "d", "label": 1}))
    assert [(e.text, e.text_pair) for e in read_jsonl(path)] == [("a", "b"), ("c", "d")]
