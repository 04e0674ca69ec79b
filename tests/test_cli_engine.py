"""The engine's command line: train --json, backbone, predict, errors, settings, no torch at import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from streamlearn.cli import main
from streamlearn.storage import task_params

TRAIN_KEYS = {"method", "trainable_params", "backbone_params", "stored_params", "bytes", "artifact",
              "val_accuracy", "test_accuracy", "epochs", "train_examples_per_s", "seconds"}


@pytest.fixture()
def runner(isolated_home):
    """A click runner inside an isolated STREAMLEARN_HOME."""
    return CliRunner()


def _train(runner, files, tmp_path, *extra):
    args = ["train", str(files["train"]), "--validation", str(files["validation"]), "--test", str(files["test"]),
            "--epochs", "1", "--adapter-size", "8", "--max-length", "32", "--output", str(tmp_path / "out"), "--json", *extra]
    return runner.invoke(main, args)


def test_train_json_prints_one_object_and_writes_the_artifact(runner, tiny_task_files, tiny_backbone_dir, tmp_path):
    """`train --json` on the tiny backbone prints the documented keys and writes the artifact and sidecar."""
    result = _train(runner, tiny_task_files, tmp_path, "--backbone", tiny_backbone_dir)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert TRAIN_KEYS <= set(summary)
    assert summary["method"] == "adapter" and summary["epochs"] == 1
    assert summary["trainable_params"] == summary["stored_params"] == task_params(2, 32, 8, 2)
    assert summary["artifact"] == str(tmp_path / "out" / f"{tiny_task_files['train'].parent.name}-adapter.safetensors")
    assert (tmp_path / "out").is_dir() and len(list((tmp_path / "out").iterdir())) == 2
    assert summary["bytes"] == (tmp_path / "out" / summary["artifact"]).stat().st_size
    assert 0 <= summary["test_accuracy"] <= 1


def test_train_honours_backbone_setting_and_other_methods(runner, tiny_task_files, tiny_backbone_dir, tmp_path, monkeypatch):
    """Without --backbone, STREAMLEARN_BACKBONE is used; --method top-k stores the top layer and head."""
    monkeypatch.setenv("STREAMLEARN_BACKBONE", tiny_backbone_dir)
    result = _train(runner, tiny_task_files, tmp_path, "--method", "top-k", "--top-k", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["method"] == "top-k" and summary["backbone_params"] == 25024
    assert summary["trainable_params"] < summary["backbone_params"]


def test_invalid_data_is_one_line_exit_2_and_writes_nothing(runner, tiny_task_files, tiny_backbone_dir, tmp_path):
    """A malformed train file fails with exit code 2, one `error:` line naming file and line, and no output folder."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "good", "label": "pos"}\n{"text": "", "label": "neg"}\n')
    result = runner.invoke(main, ["train", str(bad), "--backbone", tiny_backbone_dir, "--output", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: ") and "bad.jsonl:2: field 'text': empty text" in result.stderr
    assert not (tmp_path / "out").exists()


def test_backbone_json_describes_the_backbone(runner, tiny_backbone_dir):
    """`backbone --json` prints name, path, fingerprint, layers, hidden and params."""
    result = runner.invoke(main, ["backbone", "--backbone", tiny_backbone_dir, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert {"name", "path", "fingerprint", "layers", "hidden", "params"} <= set(info)
    assert (info["layers"], info["hidden"], info["params"]) == (2, 32, 25024) and len(info["fingerprint"]) == 64


def test_predict_texts_and_input_file(runner, tiny_task_files, tiny_backbone_dir, tmp_path):
    """`predict --artifact` gives a label and probability per text, and accuracy for a labelled --input file."""
    artifact = json.loads(_train(runner, tiny_task_files, tmp_path, "--backbone", tiny_backbone_dir).stdout)["artifact"]
    result = runner.invoke(main, ["predict", "--artifact", artifact, "--backbone", tiny_backbone_dir, "--json", "good film", "bad plot"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert [r["text"] for r in rows] == ["good film", "bad plot"]
    assert all(r["label"] in ("neg", "pos") and 0.5 <= r["probability"] <= 1 for r in rows)
    result = runner.invoke(main, ["predict", "--artifact", artifact, "--backbone", tiny_backbone_dir, "--json",
                                  "--input", str(tiny_task_files["test"])])
    out = json.loads(result.stdout)
    assert len(out["predictions"]) == 16 and 0 <= out["accuracy"] <= 1
    table = runner.invoke(main, ["predict", "--artifact", artifact, "--backbone", tiny_backbone_dir, "good film"])
    assert table.exit_code == 0 and "good film" in table.stdout


def test_predict_without_input_is_an_error(runner, tmp_path):
    """`predict` with neither texts nor --input exits 2 with one line."""
    result = runner.invoke(main, ["predict", "--artifact", str(tmp_path / "x.safetensors")])
    assert result.exit_code == 2 and "nothing to predict" in result.stderr


def test_help_states_defaults_and_limits(runner):
    """Each command's help shows its defaults (method, sizes, learning rates) and limits."""
    text = " ".join(runner.invoke(main, ["train", "--help"]).stdout.split())
    for needle in ("[default: adapter]", "[default: 64", "adapter 1e-3", "full 3e-5", "STREAMLEARN_BACKBONE", "2 to 1000"):
        assert needle in text
    assert "--artifact" in runner.invoke(main, ["predict", "--help"]).stdout
    assert "fingerprint" in runner.invoke(main, ["backbone", "--help"]).stdout


def test_importing_the_cli_does_not_import_torch():
    """Importing the CLI (engine commands included) leaves torch unimported, so read commands stay instant."""
    code = "import sys, streamlearn.cli.engine; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
