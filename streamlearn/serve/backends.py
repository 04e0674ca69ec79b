"""How a batch of rows of several tasks becomes logits, on the multi-task engine.

One backend, two ways of batching:

- `mixed` (`--backend engine`, the default): the whole batch is one `Engine.logits` call, so
  rows of different tasks share every forward through the backbone.
- not mixed (`--backend switch`): the batch is split by task and each task's rows run on their
  own, one task per forward: the "switch adapters between batches" baseline that S-LoRA (Sheng et
  al. 2023, arXiv:2311.03285, Sec. 7) measures its server against (PEFT serving one adapter per batch).

`load` does the slow part (read, sha256, backbone fingerprint, tensors) and changes nothing
shared; `attach`, `detach` and `logits` are only ever called from the one inference thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from streamlearn.backbone import Backbone
from streamlearn.engine import Engine, Item, LoadedTask, load_task

__all__ = ["Backend", "Item", "Loaded"]


@dataclass(frozen=True)
class Loaded:
    """A verified task artifact, ready to attach."""

    task: str
    """Task name."""
    sha256: str
    """Digest of the artifact file it came from."""
    parts: LoadedTask
    """The engine's loaded task (labels, pair, max length, parts)."""

    @property
    def labels(self) -> tuple[str, ...]:
        """Class names, in logit order."""
        return self.parts.labels

    @property
    def pair(self) -> bool:
        """True when the task classifies text pairs."""
        return self.parts.pair

    @property
    def nbytes(self) -> int:
        """Bytes of its per-task parts in memory."""
        return self.parts.nbytes


class Backend:
    """The resident tasks on one `Engine`.

    Args:
        backbone: The shared backbone.
        mixed: One forward for all of a batch's tasks (True) or one per task (False, the baseline).
    """

    def __init__(self, backbone: Backbone, mixed: bool = True) -> None:
        self.backbone = backbone
        self.mixed = mixed
        self.engine = Engine(backbone)

    @property
    def name(self) -> str:
        """`engine` or `switch`, as the `--backend` flag names it."""
        return "engine" if self.mixed else "switch"

    def load(self, task: str, path: Path, sha256: str) -> Loaded:
        """Read and verify `task`'s artifact (ArtifactCorrupt, BackboneMismatch on failure)."""
        return Loaded(task, sha256, load_task(path, self.backbone, expected_sha256=sha256, name=task))

    def attach(self, loaded: Loaded) -> None:
        """Make `loaded` the resident version of its task (the engine replaces atomically)."""
        self.engine.attach(loaded.task, loaded.parts)

    def detach(self, task: str) -> None:
        """Drop a task's parts."""
        self.engine.detach(task)

    def logits(self, items: Sequence[Item], batch_size: int) -> list[torch.Tensor]:
        """One logits row per item, in input order."""
        if self.mixed:
            return self.engine.logits(items, batch_size=batch_size)
        out: list[torch.Tensor | None] = [None] * len(items)
        rows_of: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            rows_of.setdefault(item.task, []).append(i)
        for rows in rows_of.values():
            for i, row in zip(rows, self.engine.logits([items[i] for i in rows], batch_size=batch_size)):
                out[i] = row
        return out  # type: ignore[return-value]

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None, tasks: Sequence[str],
                 batch_size: int) -> dict[str, torch.Tensor]:
        """(len(texts), C) logits per task: the engine's Parallel path (mixed), or task after task."""
        if self.mixed:
            return self.engine.classify(texts, pairs, tasks, batch_size=batch_size)
        return {t: self.engine.classify(texts, pairs, [t], batch_size=batch_size)[t] for t in tasks}


def make_backend(kind: str, backbone: Backbone) -> Backend:
    """The backend named `kind` (`engine` or `switch`) on `backbone`."""
    return Backend(backbone, mixed=kind == "engine")
