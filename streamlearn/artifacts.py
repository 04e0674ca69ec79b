"""The artifact store: the only module that knows where datasets and task artifacts live.

Layout under the store root:
    datasets/<sha256>.jsonl[.gz]           content-addressed copies of submitted datasets
    tasks/<task>/<job_id>.safetensors      a task's stored tensors (safetensors, never pickle)
    tasks/<task>/<job_id>.json             its sidecar: method, labels, backbone, sha256, ...

The store is a folder (embedded mode, or a mount every machine shares) or an S3-compatible bucket
(`STREAMLEARN_ARTIFACTS=s3://bucket/prefix`); `objectstore` moves the bytes, this module decides
the keys. Every object is written whole or not at all (a folder: temporary name then rename; S3:
one PUT), so a reader (or a job that runs twice under late acknowledgement) never sees half a
file. The safetensors header records a digest of the sidecar's content, so editing the sidecar is
detected like editing the file. On S3, reads go through the local read-through cache (`cache`),
verified by sha256: a dataset by its name, an artifact by its sidecar's digest.

An artifact "path" below is a local `Path` on a folder store and an `s3://bucket/key` string on
S3; every function here accepts either.
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

from streamlearn import objectstore
from streamlearn.data import file_sha256
from streamlearn.datafile import CHUNK_BYTES, open_regular
from streamlearn.errors import ArtifactCorrupt, InvalidConfig
from streamlearn.names import check_task_name
from streamlearn.objectstore import share_mode, umask

log = logging.getLogger(__name__)

__all__ = ["ArtifactInfo", "ArtifactStore", "DatasetStaging", "read_artifact", "read_metadata", "share_mode", "umask",
           "write_artifact"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INTEGRITY = ("sha256", "bytes", "file")
"""Sidecar keys that describe the file itself and are therefore not part of the sidecar digest."""


@dataclass(frozen=True)
class ArtifactInfo:
    """Where an artifact was written and what it holds."""

    path: Path | str
    """The safetensors file (an `s3://` address on S3)."""
    sha256: str
    """Hex sha256 of the safetensors file."""
    bytes: int
    """Size of the safetensors file."""
    sidecar: Path | str
    """The JSON sidecar (same stem, `.json`)."""


def sidecar_path(path: str | Path) -> Path | str:
    """Return the sidecar of a safetensors artifact path (or `s3://` address)."""
    if objectstore.is_uri(path):
        return str(path).removesuffix(".safetensors") + ".json"
    return Path(path).with_suffix(".json")


def _atomic_write(path: Path | str, data: bytes) -> None:
    store, key = objectstore.locate(path)
    store.put_bytes(key, data)


def _name(path: Path | str) -> str:
    return str(path).rsplit("/", 1)[-1]


def _suffix(path: Path | str) -> str:
    name = _name(path)
    return ".safetensors" if name.endswith(".safetensors") else ""


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

    if not objectstore.is_uri(path):
        path = Path(path)
    if not str(path).endswith(".safetensors"):
        raise InvalidConfig(f"artifact path {path} must end in .safetensors")
    metadata = json.loads(json.dumps(metadata))
    header = {"format": "streamlearn", "sidecar_sha256": _sidecar_digest(metadata)}
    blob = save({k: v.contiguous() for k, v in tensors.items()}, metadata=header)
    sha = hashlib.sha256(blob).hexdigest()
    sidecar = sidecar_path(path)
    full = {**metadata, "file": _name(path), "bytes": len(blob), "sha256": sha}
    # the tensors first: a sidecar only ever describes a complete file
    _atomic_write(path, blob)
    _atomic_write(sidecar, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
    return ArtifactInfo(path=path, sha256=sha, bytes=len(blob), sidecar=sidecar)


def read_metadata(path: str | Path) -> dict:
    """Return an artifact's sidecar (unverified; `read_artifact` verifies)."""
    sidecar = sidecar_path(path)
    store, key = objectstore.locate(sidecar)
    try:
        return json.loads(store.get_bytes(key).decode("utf-8"))
    except objectstore.ObjectMissing:
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

    if not objectstore.is_uri(path):
        path = Path(path)
    metadata = read_metadata(path)
    try:
        blob = _artifact_bytes(path, metadata.get("sha256"))
    except objectstore.ObjectMissing:
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


def _artifact_bytes(path: Path | str, sha256: str | None) -> bytes:
    store, key = objectstore.locate(path)
    if isinstance(store, objectstore.LocalStore):
        return store.get_bytes(key)
    from streamlearn.cache import read_cache

    if sha256 is None:  # nothing to verify a cached copy by; read_artifact refuses it after
        return store.get_bytes(key)
    try:
        return read_cache().fetch(store, key, str(sha256), _suffix(path)).read_bytes()
    except ArtifactCorrupt:
        # A stored object that does not match its sidecar: read it whole so the caller's check
        # reports the mismatch with both digests, as for a local file.
        return store.get_bytes(key)


def local_artifact(path: Path | str, sha256: str) -> Path:
    """A local file of an artifact: itself on a folder store, the verified cached copy on S3."""
    if not objectstore.is_uri(path):
        return Path(path)
    from streamlearn.cache import read_cache

    store, key = objectstore.locate(path)
    return read_cache().fetch(store, key, sha256, _suffix(path))


def _header(blob: bytes) -> dict:
    size = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + size]).get("__metadata__", {})


class ArtifactStore:
    """Keys and copies in one store (embedded: `$STREAMLEARN_HOME/artifacts`; at scale a shared
    folder or `s3://bucket/prefix`).

    Args:
        root: The store's root folder (created on first write), or an `s3://bucket/prefix` URL.
    """

    def __init__(self, root: str | Path) -> None:
        self.objects = objectstore.open_store(root)
        self.remote = not isinstance(self.objects, objectstore.LocalStore)
        self.root = self.objects.root if isinstance(self.objects, objectstore.LocalStore) else self.objects.url

    @staticmethod
    def dataset_key(sha256: str, gz: bool = False) -> str:
        """The key of the dataset with this digest (`datasets/<sha256>.jsonl[.gz]`)."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise InvalidConfig(f"{sha256!r} is not a sha256 hex digest")
        return f"datasets/{sha256}.jsonl" + (".gz" if gz else "")

    def dataset_path(self, sha256: str, gz: bool = False) -> Path:
        """Return a local file of the dataset with this digest.

        On a folder store it is where the dataset is (or would be) stored. On S3 it is the
        verified copy in the read-through cache, downloaded on first use; a dataset the store
        does not hold gives a path that does not exist.
        """
        plain, gzipped = self.dataset_key(sha256), self.dataset_key(sha256, gz=True)
        if not self.remote:
            plain_path, gz_path = self.objects.path(plain), self.objects.path(gzipped)
            if gz or (not plain_path.exists() and gz_path.exists()):
                return gz_path
            return plain_path
        from streamlearn.cache import read_cache

        cache = read_cache()
        for _key, suffix in ((gzipped, ".jsonl.gz"),) if gz else ((plain, ".jsonl"), (gzipped, ".jsonl.gz")):
            hit = cache.cached(sha256, suffix)
            if hit is not None:
                return hit
        for key, suffix in ((gzipped, ".jsonl.gz"),) if gz else ((plain, ".jsonl"), (gzipped, ".jsonl.gz")):
            try:
                return cache.fetch(self.objects, key, sha256, suffix)
            except objectstore.ObjectMissing:
                continue
        return cache.entry(sha256, ".jsonl.gz" if gz else ".jsonl")

    def put_dataset(self, path: str | Path) -> tuple[str, Path | str]:
        """Copy a dataset file into the store under its sha256, reading it once (hash and copy together).

        A copy already present is verified (folder store) and refreshed, so `gc` sees the new
        reference as recent; one whose bytes no longer match its name is replaced.

        Returns:
            (sha256, stored path or `s3://` address).
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

    def task_artifact_path(self, task: str, job_id: str | int) -> Path | str:
        """Return the `.safetensors` path (S3: `s3://` address) of a task's artifact from one job (the sidecar: `.json`)."""
        key = self.task_artifact_key(task, job_id)
        return self.objects.uri(key) if self.remote else self.objects.path(key)

    @staticmethod
    def task_artifact_key(task: str, job_id: str | int) -> str:
        """The key of a task's artifact from one job (`tasks/<task>/<job_id>.safetensors`), also the catalogue's URI."""
        check_task_name(task)
        if not _NAME.fullmatch(str(job_id)) or ".." in str(job_id):
            raise InvalidConfig(
                f"job id {str(job_id)!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return f"tasks/{task}/{job_id}.safetensors"

    def location(self, key: str) -> Path | str:
        """The path (S3: `s3://` address) of a key of this store."""
        return self.objects.uri(key) if self.remote else self.objects.path(key)

    def key_of(self, path: Path | str) -> str:
        """The key of a path or address inside this store (the catalogue keeps keys, so the store may move)."""
        if self.remote:
            prefix = self.objects.uri("")
            if not str(path).startswith(prefix):
                raise InvalidConfig(f"{path} is not in the artifact store {self.objects.url}")
            return str(path)[len(prefix):]
        path = Path(path)
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def staging_path(self, path: Path | str) -> Path:
        """Where a worker keeps a finished artifact for a remote store until its upload succeeds,
        so a store outage costs an upload retry, not a retraining (`$STREAMLEARN_CACHE_DIR/staging/<key>`)."""
        from streamlearn.settings import get_settings

        return Path(get_settings().cache_dir) / "staging" / self.key_of(path)

    def publish(self, staged: Path, path: Path | str) -> None:
        """Upload a staged artifact to its place in the store: the tensors first, then the sidecar
        (a sidecar only ever describes complete tensors), each one whole PUT; then drop the staging copy."""
        for local, target in ((staged, path), (sidecar_path(staged), sidecar_path(path))):
            store, key = objectstore.locate(target)
            store.put_file(local, key)
        Path(staged).unlink(missing_ok=True)
        Path(sidecar_path(staged)).unlink(missing_ok=True)

    def exists(self, path: Path | str) -> bool:
        """True when the artifact (tensors file) at this path or address is stored."""
        store, key = objectstore.locate(path)
        return store.exists(key)

    def delete_task_artifact(self, path: str | Path) -> None:
        """Remove an artifact and its sidecar (missing files are fine)."""
        for item in (path, sidecar_path(path)):
            store, key = objectstore.locate(item)
            store.delete(key)


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
        """A new temporary file for the raw bytes of `source` (its `.gz` suffix is kept): in the store's
        `datasets/` on a folder store (published by a rename), in the local cache folder on S3."""
        if self.store.remote:
            from streamlearn.settings import get_settings

            folder = Path(get_settings().cache_dir) / "staging" / "datasets"
        else:
            folder = self.store.root / "datasets"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=STAGING_PREFIX, suffix=".tmp")
        fh = os.fdopen(fd, "wb")
        self._temps[split] = (Path(tmp), fh, str(source).endswith(".gz"))
        return fh

    def publish(self, digests: dict[str, str]) -> dict[str, Path | str]:
        """Move each staged copy to its content address; return split -> stored path (S3: address).

        Args:
            digests: Split -> sha256 of the bytes written to that split's copy.
        """
        stored: dict[str, Path | str] = {}
        for split, (tmp, fh, gz) in list(self._temps.items()):
            sha = digests[split]
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            key = self.store.dataset_key(sha, gz)
            if self.store.remote:
                # one whole PUT of bytes just read and hashed: a stored copy that went bad is replaced too
                self.store.objects.put_file(tmp, key)
                tmp.unlink(missing_ok=True)
                stored[split] = self.store.objects.uri(key)
            else:
                target = self.store.objects.path(key)
                if target.exists() and file_sha256(target) == sha:
                    tmp.unlink()
                    os.utime(target)  # a fresh reference: gc's grace period starts again
                else:
                    if target.exists():
                        log.warning("stored dataset %s did not match its sha256; replaced by the fresh copy", target)
                    share_mode(tmp)
                    os.replace(tmp, target)
                stored[split] = target
            del self._temps[split]
        return stored

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
    """Every temporary file (`*.tmp`) in the store's `datasets/` and `tasks/` folders (none on S3:
    an object there is one whole PUT)."""
    if store.remote:
        return []
    return _files(store.root / "datasets", "*.tmp") + _files(store.root / "tasks", "*.tmp")


def stored_datasets(store: ArtifactStore) -> dict[str, Path | str]:
    """sha256 -> stored dataset copy, for every copy in `datasets/`."""
    if store.remote:
        return {o.key.rsplit("/", 1)[-1].split(".")[0]: store.objects.uri(o.key) for o in store.objects.list("datasets/")}
    return {p.name.split(".")[0]: p for p in _files(store.root / "datasets", "*.jsonl*") if not p.name.startswith(".")}


def artifact_files(store: ArtifactStore) -> list[Path | str]:
    """Every task artifact (`tasks/<task>/<job>.safetensors`) in the store."""
    if store.remote:
        return [store.objects.uri(o.key) for o in store.objects.list("tasks/") if o.key.endswith(".safetensors")]
    return _files(store.root / "tasks", "*.safetensors")
