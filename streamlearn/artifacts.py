"""The artifact store: the only module that knows where datasets and task artifacts live.

Layout under the store root:
    datasets/<sha256>.jsonl[.gz]           content-addressed copies of submitted datasets
    tasks/<task>/<job_id>.safetensors      a task's stored tensors (safetensors, never pickle)
    tasks/<task>/<job_id>.json             its sidecar: method, labels, backbone, sha256, ...

Every file is written to a temporary name in the same folder and then renamed, so a reader (or a
job that runs twice under late acknowledgement) never sees half a file. The safetensors header
records a digest of the sidecar's content, so editing the sidecar is detected like editing the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from streamlearn.data import file_sha256
from streamlearn.datafile import CHUNK_BYTES, open_regular
from streamlearn.errors import ArtifactCorrupt, InvalidConfig
from streamlearn.names import check_task_name

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INTEGRITY = ("sha256", "bytes", "file")
"""Sidecar keys that describe the file itself and are therefore not part of the sidecar digest."""


@dataclass(frozen=True)
class ArtifactInfo:
    """Where an artifact was written and what it holds."""

    path: Path
    """The safetensors file."""
    sha256: str
    """Hex sha256 of the safetensors file."""
    bytes: int
    """Size of the safetensors file."""
    sidecar: Path
    """The JSON sidecar (same stem, `.json`)."""


def sidecar_path(path: str | Path) -> Path:
    """Return the sidecar of a safetensors artifact path."""
    return Path(path).with_suffix(".json")


def umask() -> int:
    """This process's umask, read without changing it (Linux: /proc; elsewhere a set-and-restore)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_mode(path: str | Path) -> None:
    """Give a file made by `mkstemp` (always 0600) the mode a plain `open` would: 0666 less the umask.

    A CLI and a worker running as two users of one group can then share a store (umask 002).
    """
    os.chmod(path, 0o666 & ~umask())


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        share_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sidecar_digest(metadata: dict) -> str:
    content = {k: v for k, v in metadata.items() if k not in _INTEGRITY}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_artifact(path: str | Path, tensors: dict, metadata: dict) -> ArtifactInfo:
    """Write tensors as safetensors plus a JSON sidecar, each via a temp file and a rename.

    Args:
        path: Target `.safetensors` path; the sidecar goes next to it with `.json`.
        tensors: Name -> tensor (CPU, contiguous, no shared storage).
        metadata: JSON-serialisable description; `sha256`, `bytes` and `file` are added.

    Returns:
        The ArtifactInfo.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise InvalidConfig(f"artifact path {path} must end in .safetensors")
    metadata = json.loads(json.dumps(metadata))
    header = {"format": "streamlearn", "sidecar_sha256": _sidecar_digest(metadata)}
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=header)
    sha = hashlib.sha256(blob).hexdigest()
    sidecar = sidecar_path(path)
    full = {**metadata, "file": path.name, "bytes": len(blob), "sha256": sha}
    # the tensors first: a sidecar only ever describes a complete file
    _atomic_write(path, blob)
    _atomic_write(sidecar, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
    return ArtifactInfo(path=path, sha256=sha, bytes=len(blob), sidecar=sidecar)


def read_metadata(path: str | Path) -> dict:
    """Return an artifact's sidecar (unverified; `read_artifact` verifies)."""
    sidecar = sidecar_path(path)
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactCorrupt(f"{sidecar}: sidecar missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactCorrupt(f"{sidecar}: sidecar is not valid JSON ({exc})") from None


def read_artifact(path: str | Path, expected_sha256: str | None = None) -> tuple[dict, dict]:
    """Read and verify an artifact.

    Args:
        path: The `.safetensors` file.
        expected_sha256: The digest recorded elsewhere (e.g. the catalogue), checked too when given.

    Returns:
        (tensors, metadata).

    Raises:
        ArtifactCorrupt: A file is missing, or the file or its sidecar does not match its digest.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    metadata = read_metadata(path)
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactCorrupt(f"{path}: artifact file missing") from None
    sha = hashlib.sha256(blob).hexdigest()
    for source, want in (("sidecar", metadata.get("sha256")), ("catalogue", expected_sha256)):
        if want is not None and sha != want:
            raise ArtifactCorrupt(f"{path}: sha256 {sha[:12]} does not match the {source}'s {str(want)[:12]}")
    if metadata.get("sha256") is None:
        raise ArtifactCorrupt(f"{sidecar_path(path)}: sidecar has no sha256")
    try:
        tensors = load(blob)
        header = _header(blob)
    except (SafetensorError, ValueError) as exc:
        raise ArtifactCorrupt(f"{path}: not a readable safetensors file ({exc})") from None
    if header.get("sidecar_sha256") != _sidecar_digest(metadata):
        raise ArtifactCorrupt(f"{sidecar_path(path)}: sidecar content was modified after the artifact was written")
    return tensors, metadata


def _header(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]).get("__metadata__", {})


class ArtifactStore:
    """Paths and copies under one store root (embedded: `$STREAMLEARN_HOME/artifacts`).

    Args:
        root: The store's root folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def dataset_path(self, sha256: str, gz: bool = False) -> Path:
        """Return where the dataset with this digest is (or would be) stored."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidConfig(f"{sha256!r} is not a sha256 hex digest")
        plain = self.root / "datasets" / f"{sha256}.jsonl"
        gzipped = plain.with_suffix(".jsonl.gz")
        if gz or (not plain.exists() and gzipped.exists()):
            return gzipped
        return plain

    def put_dataset(self, path: str | Path) -> tuple[str, Path]:
        """Copy a dataset file into the store under its sha256, reading it once (hash and copy together).

        A copy already present is verified; one whose bytes no longer match its name is replaced.

        Returns:
            (sha256, stored path).
        """
        path = Path(path)
        with DatasetStaging(self) as staging:
            fh = staging.open("file", path)
            digest = hashlib.sha256()
            with open_regular(path) as source:
                while chunk := source.read(CHUNK_BYTES):
                    digest.update(chunk)
                    fh.write(chunk)
            sha = digest.hexdigest()
            return sha, staging.publish({"file": sha})["file"]

    def task_artifact_path(self, task: str, job_id: str | int) -> Path:
        """Return the `.safetensors` path of a task's artifact from one job (the sidecar: `.json`)."""
        check_task_name(task)
        if not _NAME.fullmatch(str(job_id)) or ".." in str(job_id):
            raise InvalidConfig(
                f"job id {str(job_id)!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return self.root / "tasks" / task / f"{job_id}.safetensors"

    def delete_task_artifact(self, path: str | Path) -> None:
        """Remove an artifact and its sidecar (missing files are fine)."""
        Path(path).unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)


STAGING_PREFIX = ".staged."
"""Name prefix of a submission's temporary dataset copies in `datasets/` (published or removed)."""


class DatasetStaging:
    """A submission's dataset copies, written inside the store while the files are read and validated.

    `open(split, source)` gives the file that receives the raw bytes during the one read;
    `publish(digests)` renames each copy to `datasets/<sha256>.jsonl[.gz]` once the submission is
    accepted. Leaving the context removes every copy not published, so a refused submission
    stores nothing. A copy already in the store under that digest is re-hashed: kept when it is
    intact, replaced by the fresh bytes when it is not.

    Args:
        store: The artifact store.
    """

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self._temps: dict[str, tuple[Path, BinaryIO, bool]] = {}

    def __enter__(self) -> DatasetStaging:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def open(self, split: str, source: str | Path) -> BinaryIO:
        """A new temporary file in `datasets/` for the raw bytes of `source` (its `.gz` suffix is kept)."""
        folder = self.store.root / "datasets"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=STAGING_PREFIX, suffix=".tmp")
        fh = os.fdopen(fd, "wb")
        self._temps[split] = (Path(tmp), fh, str(source).endswith(".gz"))
        return fh

    def publish(self, digests: dict[str, str]) -> dict[str, Path]:
        """Move each staged copy to its content address; return split -> stored path.

        Args:
            digests: Split -> sha256 of the bytes written to that split's copy.
        """
        stored = {}
        for split, (tmp, fh, gz) in list(self._temps.items()):
            sha = digests[split]
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            target = self.dataset_path_for(sha, gz)
            if target.exists() and file_sha256(target) == sha:
                tmp.unlink()
            else:
                if target.exists():
                    log.warning("stored dataset %s did not match its sha256; replaced by the fresh copy", target)
                share_mode(tmp)
                os.replace(tmp, target)
            del self._temps[split]
            stored[split] = target
        return stored

    def dataset_path_for(self, sha256: str, gz: bool) -> Path:
        """Where a copy with this digest and compression goes."""
        plain = self.store.dataset_path(sha256)
        return plain.parent / f"{sha256}.jsonl{'.gz' if gz else ''}"

    def discard(self) -> None:
        """Remove every copy not published."""
        for tmp, fh, _ in self._temps.values():
            fh.close()
            tmp.unlink(missing_ok=True)
        self._temps.clear()


def remove_stale_temps(store: ArtifactStore, max_age: float = 3600.0) -> list[Path]:
    """Delete temporary files (`*.tmp`) older than `max_age` seconds left in the store by a killed writer.

    A writer renames its temporary file within seconds, so an hour-old one belongs to nobody.

    Returns:
        The files removed.
    """
    cutoff, removed = time.time() - max_age, []
    for path in temporary_files(store):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue
    return removed


def _files(folder: Path, pattern: str) -> list[Path]:
    return sorted(folder.rglob(pattern)) if folder.is_dir() else []


def temporary_files(store: ArtifactStore) -> list[Path]:
    """Every temporary file (`*.tmp`) in the store's `datasets/` and `tasks/` folders."""
    return _files(store.root / "datasets", "*.tmp") + _files(store.root / "tasks", "*.tmp")


def stored_datasets(store: ArtifactStore) -> dict[str, Path]:
    """sha256 -> stored dataset copy, for every copy in `datasets/`."""
    return {p.name.split(".")[0]: p for p in _files(store.root / "datasets", "*.jsonl*") if not p.name.startswith(".")}


def artifact_files(store: ArtifactStore) -> list[Path]:
    """Every task artifact (`tasks/<task>/<job>.safetensors`) in the store."""
    return _files(store.root / "tasks", "*.safetensors")
