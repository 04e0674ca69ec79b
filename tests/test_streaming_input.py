"""Bounded, single-read input: gzip bombs, special files, a file swapped while it is read, refused
submissions that leave no copy, stored copies re-verified, stale temporary files, umask-respecting modes.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamlearn.cli import main
from streamlearn.settings import get_settings

CORPUS = Path(__file__).parent / "bad_data"
GOOD = CORPUS / "good_train.jsonl"
MEMORY_LIMIT = 1 << 30
"""Address-space limit (1 GiB) of the CLI process that is handed a gzip bomb."""
PEAK_RSS_LIMIT_MB = 250
"""Peak resident memory allowed for refusing a bomb (main took over 5 GB for the single-line one)."""
CPU_SECONDS_LIMIT = 30
"""CPU time (user + system, so machine load does not count) allowed for refusing a bomb: a bound, not a
speed claim; main spent 4 minutes and then died, refusing takes about a second here."""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLEARN_")}
    return {**env, "STREAMLEARN_HOME": str(home), "STREAMLEARN_DEVICE": "cpu", **extra}


def _bomb(path: Path, member: bytes, members: int, head: bytes = b"") -> Path:
    """Write a multi-member gzip: `head` once, then `member` compressed once and repeated, never uncompressed on disk."""
    packed = gzip.compress(member, compresslevel=9)
    with open(path, "wb") as fh:
        if head:
            fh.write(gzip.compress(head))
        for _ in range(members):
            fh.write(packed)
    return path


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def _submit_limited(args: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run `streamlearn submit-task ARGS` under the memory limit; return (process, CPU seconds, peak RSS in MB).

    The peak is the process's own VmHWM, not `ru_maxrss`: Linux carries `ru_maxrss` across exec, so a
    child forked from a large pytest process would report the parent's resident size as its own.
    """
    code = ("import resource, runpy, sys; sys.argv = ['streamlearn', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('streamlearn', run_name='__main__')\n"
            "finally:\n    u = resource.getrusage(resource.RUSAGE_SELF)\n"
            "    hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0]\n"
            "    print('PEAK_RSS_KB', hwm, u.ru_utime + u.ru_stime, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code, "submit-task", *args], env=env, capture_output=True, text=True,
                          timeout=300, preexec_fn=_limited)
    usage = [line.split() for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    if not usage:
        return proc, float("nan"), float("nan")
    return proc, float(usage[0][2]), int(usage[0][1]) / 1024


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if not line.startswith("PEAK_RSS_KB")]


def test_gzip_bomb_of_valid_lines_is_refused_at_the_size_cap_within_seconds(tmp_path):
    """A 3.2 GB-expanding .jsonl.gz of valid lines is refused with one line once the cap is passed, in seconds of CPU under a 1 GiB address limit."""
    line = b'{"text": "a fine film and a good plot", "label": "pos"}\n{"text": "a bad film", "label": "neg"}\n'
    member = line * (64 * 1024 * 1024 // len(line))  # 64 MiB per member, 50 members: 3.2 GB
    bomb = _bomb(tmp_path / "bomb.jsonl.gz", member, 50)
    assert bomb.stat().st_size < 20_000_000
    home = tmp_path / "home"
    proc, cpu, peak = _submit_limited([str(bomb), "--max-bytes", "2000000"], _env(home))
    assert proc.returncode == 2, proc.stderr
    assert _errors(proc) == [(f"error: {bomb}: over the limit of 2,000,000 bytes decompressed "
                              "(STREAMLEARN_MAX_DATASET_BYTES, --max-bytes)")]
    assert cpu < CPU_SECONDS_LIMIT and peak < PEAK_RSS_LIMIT_MB, (cpu, peak)
    assert [p for p in (home / "artifacts").rglob("*") if p.is_file()] == []


def test_gzip_bomb_of_one_huge_line_is_refused_at_the_line_limit_while_reading(tmp_path):
    """A 2.5 GB single line inside gzip is refused at the 1 MB line limit, reading about 1 MB, not 2.5 GB."""
    member = b"a" * (64 * 1024 * 1024)
    bomb = _bomb(tmp_path / "line.jsonl.gz", member, 40, head=b'{"text": "ok", "label": "pos"}\n{"text": "')
    proc, cpu, peak = _submit_limited([str(bomb)], _env(tmp_path / "home"))
    assert proc.returncode == 2, proc.stderr
    assert _errors(proc) == [f"error: {bomb}:2: line is longer than the limit of 1,000,000 bytes (--max-line-bytes)"]
    assert cpu < CPU_SECONDS_LIMIT and peak < PEAK_RSS_LIMIT_MB, (cpu, peak)


def test_size_cap_setting_applies_to_plain_files_too(tmp_path, isolated_home, monkeypatch):
    """STREAMLEARN_MAX_DATASET_BYTES refuses a plain file larger than it, naming the setting and the flag."""
    monkeypatch.setenv("STREAMLEARN_MAX_DATASET_BYTES", "100")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["submit-task", str(GOOD)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {GOOD}: over the limit of 100 bytes in size "
                                          "(STREAMLEARN_MAX_DATASET_BYTES, --max-bytes)"]


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom"])
def test_device_files_are_refused_before_reading(isolated_home, special):
    """/dev/zero and /dev/urandom are refused as devices at once, without reading a byte."""
    start = time.monotonic()
    result = CliRunner().invoke(main, ["submit-task", special, "--name", "dev"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {special}: is a device, not a regular file"]
    assert time.monotonic() - start < 5


def test_symlink_to_a_device_is_followed_and_refused(tmp_path, isolated_home):
    """A symlink named like a dataset that points at /dev/zero is refused as the device it is."""
    link = tmp_path / "data.jsonl"
    link.symlink_to("/dev/zero")
    result = CliRunner().invoke(main, ["submit-task", str(link)])
    assert result.stderr.splitlines() == [f"error: {link}: is a device, not a regular file"]


def test_fifo_is_refused_without_blocking_or_reading(tmp_path, isolated_home):
    """A FIFO with no writer is refused at once (no open that waits for a writer), and nothing is stored."""
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    start = time.monotonic()
    result = CliRunner().invoke(main, ["submit-task", str(fifo)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: {fifo}: is a FIFO (named pipe), not a regular file"]
    assert time.monotonic() - start < 5
    assert not (isolated_home / "artifacts").exists()


def test_file_swapped_during_the_read_is_stored_as_the_bytes_validated(tmp_path, isolated_home, monkeypatch):
    """The file is replaced after the first chunk is read: the store holds the bytes read, under their own sha256."""
    from streamlearn import datafile

    data = tmp_path / "swap.jsonl"
    first = GOOD.read_bytes()
    data.write_bytes(first)
    swapped = b'{"text": "other", "label": "x"}\n{"text": "other two", "label": "y"}\n' * 50
    real_open = datafile.DatasetFile._open

    def open_then_swap(self):
        fh = real_open(self)
        tmp = data.with_suffix(".new")
        tmp.write_bytes(swapped)
        os.replace(tmp, data)  # the path now names other bytes; our descriptor still reads the first file
        return fh

    monkeypatch.setattr(datafile.DatasetFile, "_open", open_then_swap)
    result = CliRunner().invoke(main, ["submit-task", str(data), "--json"])
    assert result.exit_code == 0, result.output
    stored = list((isolated_home / "artifacts" / "datasets").iterdir())
    assert [p.name for p in stored] == [f"{hashlib.sha256(first).hexdigest()}.jsonl"]
    assert stored[0].read_bytes() == first


def test_refused_submission_for_a_taken_name_stores_no_copy(tmp_path, isolated_home):
    """A submission refused because its task name belongs to another dataset (any case) leaves no file in the store."""
    runner = CliRunner()
    assert runner.invoke(main, ["submit-task", str(GOOD), "--name", "same"]).exit_code == 0
    before = sorted(p.name for p in (isolated_home / "artifacts").rglob("*"))
    other = tmp_path / "other.jsonl"
    other.write_text(GOOD.read_text().replace("film", "movie"))
    for name in ("same", "Same", "SAME"):
        result = runner.invoke(main, ["submit-task", str(other), "--name", name])
        assert result.exit_code == 2
        assert len(result.stderr.splitlines()) == 1
    assert sorted(p.name for p in (isolated_home / "artifacts").rglob("*")) == before


def test_task_names_are_unique_without_regard_to_case(isolated_home):
    """`Same` after `same` is refused naming the existing task, even with the same data; lookups ignore case."""
    from streamlearn.catalogue import records
    from streamlearn.catalogue.session import session_scope

    runner = CliRunner()
    assert runner.invoke(main, ["submit-task", str(GOOD), "--name", "same"]).exit_code == 0
    result = runner.invoke(main, ["submit-task", str(GOOD), "--name", "SAME"])
    assert result.exit_code == 2
    assert "task name 'SAME' is taken by task 'same' (names are unique without regard to case)" in result.stderr
    with session_scope(readonly=True) as s:
        assert records.find_task(s, "sAmE").name == "same"


def test_stored_copy_is_reverified_on_reuse_and_replaced_when_corrupt(isolated_home):
    """A stored copy whose bytes changed is replaced by the next submission of the original file."""
    runner = CliRunner()
    assert runner.invoke(main, ["submit-task", str(GOOD), "--name", "first"]).exit_code == 0
    (stored,) = (isolated_home / "artifacts" / "datasets").iterdir()
    stored.write_bytes(b'{"text": "poison", "label": "x"}\n')
    assert runner.invoke(main, ["submit-task", str(GOOD), "--name", "second"]).exit_code == 0
    assert stored.read_bytes() == GOOD.read_bytes()


def test_worker_refuses_a_stored_copy_that_does_not_match_its_sha256(isolated_home):
    """Loading a job's stored dataset checks its sha256: a changed copy fails with a message saying how to repair it."""
    from streamlearn import jobs
    from streamlearn.catalogue.session import session_scope
    from streamlearn.errors import InvalidDataset

    out = json.loads(CliRunner().invoke(main, ["submit-task", str(GOOD), "--json"]).stdout)
    (stored,) = (isolated_home / "artifacts" / "datasets").iterdir()
    stored.write_bytes(stored.read_bytes().replace(b"film", b"show"))
    from streamlearn.catalogue import records

    with session_scope(readonly=True) as s:
        plan = jobs.plan_of(records.find_job(s, out["job_id"]))
    with pytest.raises(InvalidDataset, match="the stored train file is corrupt .* submitting the original file again"):
        jobs.stored_dataset(plan)


def test_stale_temporary_files_are_removed_and_fresh_ones_kept(tmp_path):
    """`remove_stale_temps` deletes hour-old *.tmp files (a SIGKILLed writer's) and keeps a live writer's."""
    from streamlearn.artifacts import ArtifactStore, remove_stale_temps

    store = ArtifactStore(tmp_path / "store")
    old = store.root / "tasks" / "t" / ".job.safetensors.abcd.tmp"
    fresh = store.root / "datasets" / ".staged.efgh.tmp"
    for path in (old, fresh):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temps(store) == [old]
    assert not old.exists() and fresh.exists()


def test_stored_datasets_and_artifacts_respect_the_umask(tmp_path, isolated_home):
    """With umask 002, a stored dataset copy and an artifact are group-writable (0664), not 0600."""
    import torch

    from streamlearn.artifacts import write_artifact

    previous = os.umask(0o002)
    try:
        assert CliRunner().invoke(main, ["submit-task", str(GOOD)]).exit_code == 0
        info = write_artifact(tmp_path / "a.safetensors", {"w": torch.zeros(2)}, {"method": "adapter"})
    finally:
        os.umask(previous)
    (stored,) = (isolated_home / "artifacts" / "datasets").iterdir()
    assert oct(stored.stat().st_mode & 0o777) == "0o664"
    assert oct(info.path.stat().st_mode & 0o777) == "0o664"
    assert oct(info.sidecar.stat().st_mode & 0o777) == "0o664"
