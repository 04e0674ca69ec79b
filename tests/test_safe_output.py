"""User data on the terminal and inputs that disagree with the task: markup, ESC and bidi characters
print verbatim-safe in tables and exactly in JSON; pair/single mismatches and empty texts are refused.
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner
from conftest import tiny_sentence, write_jsonl

from streamlearn.cli import main
from streamlearn.cli.console import visible

MARKUP_LABEL = "[red]x[/red]"
BIDI_LABEL = "\u202eneg"
HOSTILE_TEXTS = ["[/bold] hello", "[red]good[/red] film", "bad \u202egnp.exe film", "good \x1b[31mfilm"]


def _train(tmp_path, backbone_dir: str, rows: list[dict], name: str) -> str:
    from streamlearn.backbone import load_backbone
    from streamlearn.data import load_dataset
    from streamlearn.methods import MethodConfig
    from streamlearn.pipeline import fit, save
    from streamlearn.training import TrainConfig

    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    dataset = load_dataset(path, validation=path)
    result = fit(dataset, MethodConfig(adapter_size=8), TrainConfig(epochs=1, max_length=32, lr=1e-2),
                 load_backbone(backbone_dir, device="cpu"))
    return str(save(result, tmp_path / f"{name}.safetensors").path)


@pytest.fixture(scope="module")
def hostile_artifact(tmp_path_factory, tiny_backbone_dir) -> str:
    """A tiny artifact whose two labels are rich markup and a right-to-left override."""
    rng = random.Random(5)
    rows = [{"text": tiny_sentence(rng, lab), "label": MARKUP_LABEL if lab == "pos" else BIDI_LABEL}
            for lab in ("pos", "neg") * 16]
    return _train(tmp_path_factory.mktemp("hostile"), tiny_backbone_dir, rows, "hostile")


@pytest.fixture(scope="module")
def pair_artifact(tmp_path_factory, tiny_backbone_dir) -> str:
    """A tiny sentence-pair artifact."""
    rng = random.Random(6)
    rows = [{"text": tiny_sentence(rng, lab), "text_pair": tiny_sentence(rng, lab), "label": lab}
            for lab in ("pos", "neg") * 16]
    return _train(tmp_path_factory.mktemp("pair"), tiny_backbone_dir, rows, "pair")


def _predict(artifact: str, backbone: str, *args: str, stdin: str | None = None):
    return CliRunner().invoke(main, ["predict", "--artifact", artifact, "--backbone", backbone, *args], input=stdin)


def test_visible_escapes_control_and_bidi_characters():
    """ESC, NUL, C1 controls and U+202E become escapes; ordinary text, CJK and emoji stay as they are."""
    assert visible("a\x1b[31mb\x00c\x9b") == "a\\x1b[31mb\\x00c\\x9b"
    assert visible("\u202eabc\u2066") == "\\u202eabc\\u2066"
    assert visible("好 🎉 [bold]") == "好 🎉 [bold]"


def test_predict_table_prints_markup_and_bidi_labels_verbatim_safe(hostile_artifact, tiny_backbone_dir):
    """A table of markup and bidi texts and labels prints every bracket as written and every override escaped."""
    result = _predict(hostile_artifact, tiny_backbone_dir, *HOSTILE_TEXTS)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "[/bold] hello" in out and "[red]good[/red] film" in out
    assert "\x1b" not in out and "\u202e" not in out
    assert "\\u202egnp.exe" in out
    assert MARKUP_LABEL in out or "\\u202eneg" in out
    assert "good \\x1b[31mfilm" in out


def test_predict_json_keeps_texts_and_labels_exact(hostile_artifact, tiny_backbone_dir):
    """JSON output carries the texts and labels exactly as given (ESC and U+202E included)."""
    result = _predict(hostile_artifact, tiny_backbone_dir, "--json", "--all-scores", *HOSTILE_TEXTS)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert [r["text"] for r in rows] == HOSTILE_TEXTS
    assert all({s["label"] for s in r["scores"]} == {MARKUP_LABEL, BIDI_LABEL} for r in rows)
    assert all(abs(sum(s["probability"] for s in r["scores"]) - 1) < 1e-4 for r in rows)


def test_predict_top_k_and_jsonl_from_standard_input(hostile_artifact, tiny_backbone_dir):
    """`--input -` reads plain lines from stdin; `--jsonl --top 1` prints one object per input line."""
    result = _predict(hostile_artifact, tiny_backbone_dir, "--input", "-", "--jsonl", "--top", "1",
                      stdin="good film\n\nbad plot\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["good film", "bad plot"]
    assert all("scores" not in r for r in rows)


def test_predict_reads_jsonl_from_standard_input(hostile_artifact, tiny_backbone_dir):
    """`--input -` with JSON objects is read as JSONL, so labelled lines give an accuracy."""
    stdin = "".join(json.dumps({"text": t, "label": MARKUP_LABEL}) + "\n" for t in ("good film", "fine plot"))
    result = _predict(hostile_artifact, tiny_backbone_dir, "--input", "-", "--json", "--top", "2", stdin=stdin)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert len(out["predictions"]) == 2 and len(out["predictions"][0]["scores"]) == 2
    assert 0 <= out["accuracy"] <= 1


@pytest.mark.parametrize(("artifact", "args", "message"), [
    ("pair_artifact", ["good film"], "error: this is a sentence-pair task: every input needs a text_pair"),
    ("hostile_artifact", ["fine", "\x01\x02"], "error: input 2: empty text"),
], ids=["pair-task-without-pair", "empty-after-control-characters"])
def test_inputs_that_disagree_with_the_task_are_refused(request, tiny_backbone_dir, artifact, args, message):
    """A pair task without text_pair, or a text empty once control characters go, is one line and exit 2."""
    result = _predict(request.getfixturevalue(artifact), tiny_backbone_dir, *args)
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0].startswith(message)
    assert len(result.stderr.splitlines()) == 1


def test_a_pair_on_a_single_text_task_is_refused(hostile_artifact, tiny_backbone_dir):
    """JSONL input with text_pair on a single-text task is refused instead of silently ignoring the pair."""
    stdin = json.dumps({"text": "good film", "text_pair": "bad plot"}) + "\n"
    result = _predict(hostile_artifact, tiny_backbone_dir, "--input", "-", stdin=stdin)
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: this task takes single texts, but the input has text_pair; "
                                          "drop the second texts"]


def test_pair_task_predicts_pairs(pair_artifact, tiny_backbone_dir):
    """The pair task accepts JSONL pairs and reports them back."""
    stdin = json.dumps({"text": "good film", "text_pair": "great plot"}) + "\n"
    result = _predict(pair_artifact, tiny_backbone_dir, "--input", "-", "--json", stdin=stdin)
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["predictions"]
    assert row["text_pair"] == "great plot" and row["label"] in ("pos", "neg")


def test_error_messages_quoting_user_data_are_escaped(tmp_path, isolated_home):
    """A file name with ESC and U+202E in an error line reaches the terminal escaped, still on one line."""
    name = tmp_path / "x\x1b[2Jy\u202e.jsonl"
    result = CliRunner().invoke(main, ["submit-task", str(name), "--name", "t"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {visible(name)}: no such file"]
    assert "\x1b" not in result.stderr and "\u202e" not in result.stderr
