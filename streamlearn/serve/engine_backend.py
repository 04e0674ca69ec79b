"""The multi-task engine as a serving backend: rows of different tasks share one forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from streamlearn.backbone import Backbone
from streamlearn.serve.backends import Item, Loaded


class EngineBackend:
    """Every resident task attached to one `Engine`; a mixed batch is one `Engine.logits` call."""

    name = "engine"

    def __init__(self, backbone: Backbone) -> None:
        from streamlearn.engine import Engine

        self.backbone = backbone
        self.engine = Engine(backbone)

    def load(self, task: str, path: Path, sha256: str) -> Loaded:
        """Read and verify `task`'s artifact (ArtifactCorrupt, BackboneMismatch on failure)."""
        from streamlearn.engine import load_task

        loaded = load_task(path, self.backbone, expected_sha256=sha256)
        return Loaded(task, tuple(loaded.labels), bool(loaded.pair), int(loaded.nbytes), sha256, loaded)

    def attach(self, loaded: Loaded) -> None:
        """Attach (or atomically replace) the task's parts in the engine."""
        self.engine.attach(loaded.task, loaded.parts)

    def detach(self, task: str) -> None:
        """Remove the task's parts from the engine."""
        self.engine.detach(task)

    def logits(self, items: Sequence[Item], batch_size: int) -> list[torch.Tensor]:
        """One logits row per item, in order; the engine mixes tasks within each forward."""
        from streamlearn.engine import Item as EngineItem

        return self.engine.logits([EngineItem(i.task, i.text, i.text_pair) for i in items], batch_size=batch_size)

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None, tasks: Sequence[str],
                 batch_size: int) -> dict[str, torch.Tensor]:
        """(len(texts), C) logits per task through the engine's Parallel path."""
        return self.engine.classify(texts, pairs, tasks)
