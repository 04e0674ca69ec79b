"""A stored task made resident: `load_task` reads an artifact (format 1 or 2) into a `LoadedTask`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from streamlearn.artifacts import read_artifact
from streamlearn.engine.fusion import attach_sources
from streamlearn.engine.parts import TaskParts
from streamlearn.errors import ArtifactCorrupt, BackboneMismatch, InvalidConfig
from streamlearn.sidecar import ArtifactMetadata, tensor_names_v2

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedTask:
    """A task's verified parts and description, ready to attach to an engine."""

    name: str
    """The task's name."""
    labels: tuple[str, ...]
    """Class names, in head order."""
    pair: bool
    """Whether the task takes a text pair."""
    max_length: int
    """Tokens per example the task was trained with."""
    nbytes: int
    """Bytes of its parts as resident."""
    sha256: str | None
    """sha256 of the artifact file it was read from (None for parts that were never stored)."""
    metadata: ArtifactMetadata
    """The artifact's typed metadata."""
    parts: TaskParts
    """The per-task modules (frozen, eval mode)."""


def parts_from_tensors(backbone, meta: ArtifactMetadata, tensors: dict, where: str) -> TaskParts:
    """Build the method's parts on `backbone` and load `tensors` (any format, any stored dtype) into them.

    Raises:
        ArtifactCorrupt: the tensors do not match the recorded method's parts exactly.
    """
    from streamlearn.methods import build_parts

    tensors = tensor_names_v2(tensors, meta)
    try:
        parts = build_parts(backbone, meta.method, len(meta.labels))
        dtype = next(parts.parameters()).dtype
        parts.load_state_dict({k: v.to(device=backbone.device, dtype=dtype) for k, v in tensors.items()}, strict=True)
    except (RuntimeError, InvalidConfig) as exc:
        raise ArtifactCorrupt(f"{where}: tensors do not match the recorded method ({str(exc).splitlines()[0]})") from None
    return parts.requires_grad_(False).eval()


@dataclass(frozen=True)
class SourceRef:
    """One source of a fused task: its task, its artifact's sha256 and where that artifact is."""

    task: str
    """The source task's name."""
    sha256: str
    """sha256 of the source artifact the fused task was trained with."""
    key: str
    """Store-relative key (`tasks/<task>/<job>.safetensors`; for `train`'s output folder, a file name)."""

    def to_dict(self) -> dict:
        """As the fused task's sidecar records it."""
        return {"task": self.task, "sha256": self.sha256, "key": self.key}


def source_location(path: str | Path, key: str) -> Path | str:
    """Where a source's artifact is, given the fused artifact's location and the source's recorded key.

    A store lays artifacts out as `<root>/tasks/<task>/<job>.safetensors` and keys are relative to
    `<root>`; `train` writes into one folder and records file names relative to it.
    """
    text = str(path)
    root = text.rsplit("/", 3)[0] if key.startswith("tasks/") else text.rsplit("/", 1)[0]
    where = f"{root}/{key}"
    return where if "://" in where else Path(where)


def load_sources(refs, backbone, owner: str, locate) -> list[tuple[str, TaskParts]]:
    """Read and verify each source artifact of a fused task (sha256 and backbone fingerprint).

    Args:
        refs: The `SourceRef`s (or their recorded dicts), in order.
        backbone: The resident backbone.
        owner: The fused task's name (for the messages).
        locate: key -> the artifact's path or URI.

    Raises:
        ArtifactCorrupt: a source artifact is missing, or not the one the fused task was trained with.
        BackboneMismatch: a source was trained on another backbone.
    """
    out = []
    for ref in refs:
        ref = ref if isinstance(ref, SourceRef) else SourceRef(**ref)
        where = locate(ref.key)
        try:
            tensors, sidecar = read_artifact(where, ref.sha256)
        except ArtifactCorrupt as exc:
            raise ArtifactCorrupt(f"fused task {owner!r} cannot load its source {ref.task!r}: {exc}") from None
        meta = ArtifactMetadata.from_sidecar(sidecar, str(where))
        if meta.backbone.get("fingerprint") != backbone.info.fingerprint:
            raise BackboneMismatch(f"fused task {owner!r}: its source {ref.task!r} was trained on backbone "
                                   f"{str(meta.backbone.get('fingerprint'))[:12]}, not on {backbone.info.fingerprint[:12]}")
        out.append((ref.task, parts_from_tensors(backbone, meta, tensors, str(where))))
    return out


def load_task(path: str | Path, backbone, expected_sha256: str | None = None, name: str | None = None) -> LoadedTask:
    """Read and verify an artifact for this backbone.

    Args:
        path: The `.safetensors` file (its `.json` sidecar next to it).
        backbone: The resident backbone it must have been trained on.
        expected_sha256: The digest the catalogue records, checked too when given.
        name: The task's name (default: the artifact folder's name, as the store lays it out).

    Raises:
        ArtifactCorrupt: a file is missing or fails its sha256, or the tensors do not fit the method.
        BackboneMismatch: the artifact was trained on a backbone with another fingerprint.
    """
    tensors, sidecar = read_artifact(path, expected_sha256)
    meta = ArtifactMetadata.from_sidecar(sidecar, str(path))
    recorded = meta.backbone
    if recorded.get("fingerprint") != backbone.info.fingerprint:
        raise BackboneMismatch(
            f"{path} was trained on backbone {recorded.get('name')!r} "
            f"({str(recorded.get('fingerprint'))[:12]}), not on {backbone.info.name!r} ({backbone.info.fingerprint[:12]})"
        )
    parts = parts_from_tensors(backbone, meta, tensors, str(path))
    name = name or Path(path).parent.name
    if meta.method.method == "fusion":
        # every source verified by its recorded sha256 and the backbone's fingerprint before use
        attach_sources(parts, load_sources(meta.sources, backbone, name, lambda key: source_location(path, key)))
    log.debug("loaded %s (format %d, %s)", path, meta.format, meta.dtype)
    return LoadedTask(name=name, labels=meta.labels, pair=meta.pair,
                      max_length=meta.max_length, nbytes=parts.nbytes + parts.source_bytes, sha256=sidecar.get("sha256"),
                      metadata=meta, parts=parts)


def loaded_from_parts(name: str, parts: TaskParts, meta: ArtifactMetadata) -> LoadedTask:
    """A LoadedTask for parts in memory (just trained, not read from a file)."""
    parts = parts.requires_grad_(False).eval()
    return LoadedTask(name=name, labels=meta.labels, pair=meta.pair, max_length=meta.max_length,
                      nbytes=parts.nbytes, sha256=None, metadata=meta, parts=parts)


def cast_like_stored(parts: TaskParts, dtype: str) -> dict[str, torch.Tensor]:
    """Round the parts to the stored dtype, in place, and return the tensors to store in that dtype.

    The parts keep the backbone's dtype but hold exactly the values the artifact will hold, so what
    is measured next (the recorded metrics) is what a later load computes: `evaluate` drift 0.
    """
    target = getattr(torch, dtype)
    stored = {k: v.to(target) for k, v in parts.stored_tensors().items()}
    with torch.no_grad():
        for name, p in parts.named_parameters():
            p.copy_(stored[name].to(p.dtype))
    return stored
