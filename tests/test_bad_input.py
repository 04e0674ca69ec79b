"""Bad and hostile datasets: each file of the corpus in tests/bad_data/ is refused by `submit-task`
with one line naming file, line and field, exit code 2, and no trace in the queue, the catalogue or
the artifact store; the few that must be accepted are.

The corpus and the expected message of each case are listed in tests/bad_data/cases.json.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import cannot_run

from streamlearn.cli import main
from streamlearn.settings import get_settings

CORPUS = Path(__file__).parent / "bad_data"
CASES = json.loads((CORPUS / "cases.json").read_text(encoding="utf-8"))
REFUSED = [c for c in CASES if not c.get("accepted")]
ACCEPTED = [c for c in CASES if c.get("accepted")]


def _args(case: dict, corpus: Path = CORPUS) -> list[str]:
    return [a.replace("{dir}", str(corpus)) for a in case["args"]]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    return {**env, "STREAMLEARN_HOME": str(home), "STREAMLEARN_DEVICE": "cpu"}


def snapshot(home: Path) -> dict:
    """Everything a submission could leave behind: queue and store files, and catalogue rows."""
    files = {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in ("queue", "artifacts")
        for p in sorted((home / folder).rglob("*"))
        if p.is_file()
    }
    rows: dict[str, list] = {"tasks": [], "jobs": []}
    db = home / "catalogue.db"
    if db.exists():
        with sqlite3.connect(db) as con:
            rows["tasks"] = con.execute("SELECT name, dataset_sha256, files FROM tasks ORDER BY id").fetchall()
            rows["jobs"] = con.execute("SELECT id, status, attempts, enqueued_at FROM jobs ORDER BY id").fetchall()
    return {"files": files, **rows}


def queued_messages(home: Path) -> list[Path]:
    """Message files waiting in the embedded broker's queue folder."""
    folder = home / "queue" / "messages"
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def seeded_home(tmp_path_factory: pytest.TempPathFactory):
    """An isolated home (embedded broker, SQLite) holding one good task, so 'unchanged' is checked against real state."""
    home = tmp_path_factory.mktemp("bad_input") / "home"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _env(home).items():
            if name.startswith("STREAMLEARN_"):
                mp.setenv(name, value)
        for name in ("STREAMLEARN_DATABASE_URL", "STREAMLEARN_BROKER_URL", "STREAMLEARN_ARTIFACTS", "STREAMLEARN_BACKBONE"):
            mp.delenv(name, raising=False)
        get_settings.cache_clear()
        seed = CliRunner().invoke(main, ["submit-task", str(CORPUS / "good_train.jsonl"), "--name", "seed"])
        assert seed.exit_code == 0, seed.output
        yield home
    get_settings.cache_clear()


def test_corpus_holds_at_least_thirty_refused_files_each_present():
    """The corpus lists over 30 refused cases, and every file a case names exists except the deliberately missing one."""
    assert len(REFUSED) >= 30
    assert len({c["id"] for c in CASES}) == len(CASES)
    named = {a for c in CASES for a in _args(c) if a.startswith(str(CORPUS))}
    missing = {Path(a).name for a in named if not Path(a).exists()}
    assert missing == {"does_not_exist.jsonl"}
    on_disk = {p.name for p in CORPUS.iterdir()} - {"cases.json", "README.md"}
    assert on_disk <= {Path(a).name for a in named}, "a corpus file no case uses"
    assert len(on_disk) >= 30


@pytest.mark.parametrize("case", REFUSED, ids=[c["id"] for c in REFUSED])
def test_bad_dataset_is_refused_in_one_line_and_leaves_no_trace(seeded_home, case):
    """submit-task on a bad dataset exits 2 with one 'error:' line naming file, line and field, and changes nothing."""
    get_settings.cache_clear()
    before = snapshot(seeded_home)
    result = CliRunner().invoke(main, ["submit-task", *_args(case)])
    expected = case["expect"].replace("{dir}", str(CORPUS))
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert snapshot(seeded_home) == before
    assert len(queued_messages(seeded_home)) == 1  # the seed task's message only
    assert len(before["tasks"]) == 1 and len(before["jobs"]) == 1


@pytest.mark.parametrize("case", ACCEPTED, ids=[c["id"] for c in ACCEPTED])
def test_unusual_but_valid_dataset_is_accepted_and_queued(isolated_home, case):
    """A BOM + CRLF file, a .jsonl.gz, CJK/emoji text, control characters and blank lines are accepted and queued once."""
    result = CliRunner().invoke(main, ["submit-task", *_args(case), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["status"] == "queued"
    assert case["expect"] == f"queued: task {out['task']}"
    state = snapshot(isolated_home)
    assert [t[0] for t in state["tasks"]] == [out["task"]]
    assert [(j[0], j[1]) for j in state["jobs"]] == [(out["job_id"], "queued")]
    assert len(queued_messages(isolated_home)) == 1
    stored = [f for f in state["files"] if f.startswith("artifacts/datasets/")]
    assert len(stored) == 1 and stored[0].endswith(".jsonl.gz" if case["id"] == "gzip" else ".jsonl")


def test_control_characters_are_stripped_from_the_stored_task_texts():
    """The accepted control-character file keeps tab and drops the other C0 characters and DEL."""
    from streamlearn.data import read_jsonl

    texts = [e.text for e in read_jsonl(CORPUS / "control_chars.jsonl")[:4]]
    assert texts == ["good film[31m", "bad\tfilm", "fine", "dull"]


def test_cjk_and_emoji_labels_survive_unchanged():
    """CJK labels and emoji texts are read exactly as written."""
    from streamlearn.data import load_dataset

    data = load_dataset(CORPUS / "cjk_emoji.jsonl", validation=CORPUS / "cjk_emoji.jsonl")
    assert data.labels == ("好", "悪い")
    assert data.train[0].text == "这部电影很好看 🎉"


def _run_cli(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamlearn", *args], env=env, capture_output=True, text=True,
                          timeout=120, **kwargs)


def test_refusal_through_the_installed_command_is_one_line_and_exit_2(tmp_path):
    """The real `streamlearn` process (not CliRunner) prints one error line and exits 2 on a bad dataset."""
    home = tmp_path / "home"
    proc = _run_cli(["submit-task", str(CORPUS / "label_float.jsonl")], _env(home))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"error: {CORPUS / 'label_float.jsonl'}:2: field 'label': a label must be a string or an integer, got float"
    ]
    assert snapshot(home) == {"files": {}, "tasks": [], "jobs": []}


def _drop_root_file_override() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so that root obeys file modes."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")


def test_unreadable_file_is_refused_without_a_traceback(tmp_path):
    """A file without read permission is refused with 'permission denied' (as root, the CLI runs without the capabilities that let root read mode-000 files)."""
    data = tmp_path / "secret.jsonl"
    shutil.copyfile(CORPUS / "good_train.jsonl", data)
    data.chmod(0o000)
    home = tmp_path / "home"
    kwargs = {}
    if os.geteuid() == 0:
        probe = subprocess.run([sys.executable, "-c", f"open({str(data)!r}).close()"], capture_output=True,
                               preexec_fn=_drop_root_file_override)
        if probe.returncode == 0 or b"PermissionError" not in probe.stderr:
            cannot_run("running as root and cannot drop CAP_DAC_OVERRIDE here, so mode 000 does not stop a read")
        kwargs["preexec_fn"] = _drop_root_file_override
    proc = _run_cli(["submit-task", str(data)], _env(home), **kwargs)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {data}: cannot be read (permission denied)"]
    assert snapshot(home) == {"files": {}, "tasks": [], "jobs": []}


@pytest.mark.parametrize("command", ["train", "submit-task"])
def test_help_states_every_data_limit(command):
    """`train --help` and `submit-task --help` state the class, line-size, encoding and task-name limits."""
    text = " ".join(CliRunner().invoke(main, [command, "--help"]).stdout.split())
    for needle in ("--max-classes", "[default: 1000;", "--max-line-bytes", "[default: 1000000;", "UTF-8", "gzip",
                   "control characters"):
        assert needle in text, needle
    if command == "submit-task":
        assert "1-64" in text


@pytest.mark.parametrize("name", ["a_directory.jsonl", "label_float.jsonl", "json_array.jsonl", "classes_1001.jsonl"])
def test_train_refuses_the_same_files_in_one_line_and_writes_nothing(tmp_path, name):
    """`streamlearn train` validates through the same reader: one error line, exit 2, no output folder."""
    case = next(c for c in REFUSED if c["args"] == ["{dir}/" + name])
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["train", str(CORPUS / name), "--output", str(out)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: " + case["expect"].replace("{dir}", str(CORPUS))]
    assert not out.exists()


def test_predict_input_file_is_validated_before_any_model_is_loaded(tmp_path):
    """`predict --input` with a malformed file fails on its line before the artifact or backbone is touched."""
    result = CliRunner().invoke(main, ["predict", "--artifact", str(tmp_path / "none.safetensors"),
                                       "--input", str(CORPUS / "trailing_comma_in_object.jsonl")])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {CORPUS / 'trailing_comma_in_object.jsonl'}:2: not a JSON object (trailing comma")


def test_readme_limits_section_states_every_data_limit():
    """The README's Limits section names the class, line-size, encoding, name and control-character limits."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    limits = " ".join(readme.split("\n## Limits", 1)[1].split("\n## ", 1)[0].split())
    for needle in ("1000 classes", "`--max-classes`", "1 MB", "`--max-line-bytes`", "UTF-8", "BOM", "`.jsonl.gz`",
                   "control characters", "1-64 characters", "exit code 2"):
        assert needle in limits, needle


def test_readme_counts_of_the_bad_data_corpus_match_it():
    """The README's sentence on tests/bad_data/ states the real numbers of files, cases, refusals and acceptances."""
    import re

    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split())
    found = re.search(r"`tests/bad_data/` holds (\d+) files for (\d+) cases \(`tests/bad_data/cases.json`\): (\d+) "
                      r"refused, each with the message it gets, and (\d+) unusual but valid inputs", readme)
    assert found, "the README no longer states the corpus's numbers"
    files = [p for p in CORPUS.iterdir() if p.name not in ("cases.json", "README.md")]
    assert tuple(map(int, found.groups())) == (len(files), len(CASES), len(REFUSED), len(ACCEPTED))
