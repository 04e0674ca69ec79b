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
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from streamlearn.data import file_sha256
from streamlearn.errors import ArtifactCorrupt, InvalidConfig

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


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
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
        """Copy a dataset file into the store under its sha256 (no-op when present).

        Returns:
            (sha256, stored path).
        """
        path = Path(path)
        sha = file_sha256(path)
        target = self.dataset_path(sha, gz=path.suffix == ".gz")
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            os.close(fd)
            try:
                shutil.copyfile(path, tmp)
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return sha, target

    def task_artifact_path(self, task: str, job_id: str | int) -> Path:
        """Return the `.safetensors` path of a task's artifact from one job (the sidecar: `.json`)."""
        for kind, value in (("task name", task), ("job id", str(job_id))):
            if not _NAME.fullmatch(value) or value in (".", ".."):
                raise InvalidConfig(
                    f"{kind} {value!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
                )
        return self.root / "tasks" / task / f"{job_id}.safetensors"

    def delete_task_artifact(self, path: str | Path) -> None:
        """Remove an artifact and its sidecar (missing files are fine)."""
        Path(path).unlink(missing_ok=True)
        sidecar_path(path).unlink(missing_ok=True)
