"""The Python API over the engine, for programs that want neither the CLI nor HTTP.

    import streamlearn
    with streamlearn.open() as sl:                 # $STREAMLEARN_HOME, resident backbone
        sl.predict("sst2", ["a fine film"])        # -> [Prediction(task, label, score, probabilities)]
        sl.predict_items([("sst2", "a fine film"), ("trec", "who won?")])   # mixed tasks, one call
        sl.classify(["a fine film"], tasks="all")  # Parallel: every task on the same texts

A task is loaded from the catalogue's current artifact on first use (sha256 checked against the
catalogue, backbone fingerprint checked), and stays resident for the session.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """The most likely label of one text for one task."""

    task: str
    """The task that predicted."""
    label: str
    """The most likely class."""
    score: float
    """Its probability (softmax of the logits)."""
    probabilities: dict[str, float]
    """Every class's probability."""


def _predictions(task: str, labels: Sequence[str], logits) -> list[Prediction]:
    import torch

    rows = logits if isinstance(logits, list) else list(logits)
    out = []
    for row in rows:
        probs = torch.softmax(row.float(), dim=-1).tolist()
        best = max(range(len(probs)), key=probs.__getitem__)
        out.append(Prediction(task, str(labels[best]), probs[best], {str(k): p for k, p in zip(labels, probs)}))
    return out


class Session:
    """A catalogue, its artifact store and the resident backbone with an engine over them.

    Args:
        home: A STREAMLEARN_HOME folder (its `catalogue.db` and `artifacts/`); None: the settings'
            catalogue and store ($STREAMLEARN_HOME, $STREAMLEARN_DATABASE_URL, $STREAMLEARN_ARTIFACTS).
        backbone: The backbone directory; None: $STREAMLEARN_BACKBONE, else the packaged MiniLM.
        device: `auto`, `cpu`, `cuda`, `cuda:N`; None: $STREAMLEARN_DEVICE.
    """

    def __init__(self, home: str | Path | None = None, backbone: str | None = None, device: str | None = None) -> None:
        from streamlearn.backbone import load_backbone
        from streamlearn.engine import Engine
        from streamlearn.settings import get_settings

        settings = get_settings()
        if home is None:
            self.database_url, self.artifacts = settings.database_url, settings.artifacts
        else:
            root = Path(home).expanduser()
            self.database_url, self.artifacts = f"sqlite:///{root / 'catalogue.db'}", root / "artifacts"
        self.backbone = load_backbone(backbone or settings.backbone, device or settings.device)
        self.engine = Engine(self.backbone)
        self._loading = threading.Lock()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Detach every task (the backbone stays cached for the process)."""
        for task in list(self.engine.resident()):
            self.engine.detach(task)

    def tasks(self) -> list[str]:
        """Tasks with a trained artifact, in arrival order."""
        return [row["task"] for row in self._table() if row["uri"] is not None]

    def _table(self) -> list[dict]:
        from streamlearn.catalogue.queries import task_table
        from streamlearn.catalogue.session import session_scope

        with session_scope(self.database_url, readonly=True) as s:
            return task_table(s)

    def _ensure(self, names: Iterable[str]) -> None:
        from streamlearn.artifacts import ArtifactStore
        from streamlearn.engine import load_task
        from streamlearn.errors import UnknownTask
        from streamlearn.jobs import artifact_path

        missing = [n for n in dict.fromkeys(names) if n not in self.engine.resident()]
        if not missing:
            return
        with self._loading:
            rows = {row["task"]: row for row in self._table()}
            store = ArtifactStore(self.artifacts)
            for name in missing:
                if name in self.engine.resident():
                    continue
                row = rows.get(name)
                if row is None:
                    raise UnknownTask(f"no task {name!r} in the catalogue")
                if row["uri"] is None:
                    raise UnknownTask(f"task {name!r} has no trained artifact yet (status: {row['status']})")
                self.engine.attach(name, load_task(artifact_path(row["uri"], store), self.backbone,
                                                   expected_sha256=row["sha256"], name=name))

    def predict(self, task: str, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Prediction]:
        """Predict each text (and its pair, for a pair task) with one task."""
        from streamlearn.errors import InvalidConfig

        if isinstance(texts, str):
            raise InvalidConfig("texts must be a list of strings, not one string")
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidConfig(f"{len(texts)} texts but {len(pairs)} pairs")
        return self.predict_items([(task, t, pairs[i] if pairs is not None else None) for i, t in enumerate(texts)])

    def predict_items(self, items: Sequence[tuple]) -> list[Prediction]:
        """Predict rows of several tasks in one call: each item is (task, text) or (task, text, text_pair)."""
        from streamlearn.engine import Item
        from streamlearn.errors import InvalidConfig

        try:
            rows = [Item(*item) for item in items]
        except TypeError:
            raise InvalidConfig("each item is (task, text) or (task, text, text_pair)") from None
        self._ensure(r.task for r in rows)
        logits = self.engine.logits(rows)
        return [_predictions(r.task, self.engine.loaded(r.task).labels, [row])[0] for r, row in zip(rows, logits)]

    def classify(self, texts: Sequence[str], tasks: str | Sequence[str] = "all",
                 pairs: Sequence[str] | None = None) -> list[dict[str, Prediction]]:
        """Parallel: every text with every task (`"all"`: every task with an artifact).

        Returns:
            Per text, task -> Prediction.
        """
        names = self.tasks() if tasks == "all" else ([tasks] if isinstance(tasks, str) else list(tasks))
        self._ensure(names)
        logits = self.engine.classify(list(texts), pairs, names)
        per_task = {n: _predictions(n, self.engine.loaded(n).labels, logits[n]) for n in names}
        return [{n: per_task[n][k] for n in names} for k in range(len(texts))]


def open(home: str | Path | None = None, backbone: str | None = None, device: str | None = None) -> Session:  # noqa: A001
    """Open a session on a STREAMLEARN_HOME (see `Session`); use it as a context manager."""
    return Session(home, backbone, device)
