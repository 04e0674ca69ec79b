"""How a batch of rows of several tasks becomes logits.

Two backends share one small interface (`load`, `attach`, `detach`, `logits`, `classify`):

- `SwitchBackend` attaches one task at a time and runs its rows, then the next task's: the
  "switch adapters between batches" baseline that S-LoRA (Sheng et al. 2023, Sec. 7) measures
  PEFT against. It needs only `predictor.load_predictor`.
- `EngineBackend` hands the whole mixed batch to the multi-task engine, where rows of different
  tasks share one forward through the backbone.

`load` does the slow part (read, sha256, backbone fingerprint, tensors) and changes nothing
shared; `attach` and `logits` are only ever called from the one inference thread, so the set of
parts a batch sees never changes while it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from streamlearn.backbone import Backbone


class Item(NamedTuple):
    """One row to classify: the task, its text, and its second text for a pair task."""

    task: str
    text: str
    text_pair: str | None = None


@dataclass(frozen=True)
class Loaded:
    """A verified task artifact, ready to attach."""

    task: str
    """Task name."""
    labels: tuple[str, ...]
    """Class names, in logit order."""
    pair: bool
    """True when the task classifies text pairs."""
    nbytes: int
    """Bytes of its per-task tensors in memory."""
    sha256: str
    """Digest of the artifact file it came from."""
    parts: Any
    """What the backend attaches (a Predictor or the engine's LoadedTask)."""


def _nbytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class SwitchBackend:
    """One task attached at a time: the rows of a batch run task by task (the baseline)."""

    name = "switch"

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._tasks: dict[str, Loaded] = {}

    def load(self, task: str, path: Path, sha256: str) -> Loaded:
        """Read and verify `task`'s artifact (ArtifactCorrupt, BackboneMismatch on failure)."""
        from streamlearn.predictor import load_predictor

        predictor = load_predictor(path, self.backbone, sha256)
        return Loaded(task, predictor.labels, bool(predictor.metadata.get("pair", False)), _nbytes(predictor.task),
                      sha256, predictor)

    def attach(self, loaded: Loaded) -> None:
        """Make `loaded` the resident version of its task (replacing an older one)."""
        self._tasks[loaded.task] = loaded

    def detach(self, task: str) -> None:
        """Drop a task's parts."""
        self._tasks.pop(task, None)

    def logits(self, items: Sequence[Item], batch_size: int) -> list[torch.Tensor]:
        """One logits row per item, in order; each task's rows run with only that task attached."""
        out: list[torch.Tensor | None] = [None] * len(items)
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(item.task, []).append(i)
        for task, rows in groups.items():
            predictor = self._tasks[task].parts
            pairs = [items[i].text_pair for i in rows] if self._tasks[task].pair else None
            logits = predictor.logits([items[i].text for i in rows], pairs, batch_size=batch_size)
            for i, row in zip(rows, logits):
                out[i] = row
        return out  # type: ignore[return-value]

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None, tasks: Sequence[str],
                 batch_size: int) -> dict[str, torch.Tensor]:
        """(len(texts), C) logits per task, each task run on its own."""
        return {t: self._tasks[t].parts.logits(texts, pairs if self._tasks[t].pair else None, batch_size=batch_size)
                for t in tasks}


def make_backend(kind: str, backbone: Backbone):
    """The backend named `kind` (`engine` or `switch`) on `backbone`."""
    if kind == "switch":
        return SwitchBackend(backbone)
    try:
        from streamlearn.serve.engine_backend import EngineBackend

        return EngineBackend(backbone)
    except ModuleNotFoundError as exc:
        if exc.name != "streamlearn.engine":
            raise
        from streamlearn.errors import InvalidConfig

        raise InvalidConfig("the multi-task engine (streamlearn.engine) is not installed; use --backend switch") from None
