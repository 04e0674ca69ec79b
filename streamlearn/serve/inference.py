"""One resident backbone serving every task: the batch step the batcher runs, and the Parallel step.

`Inference.run` turns a batch of mixed items into one outcome per item. It makes each task of the
batch resident (in order of first appearance; if the budget cannot hold them all at once, it runs
the rows prepared so far, then continues), checks each row against its task (a pair task needs a
`text_pair`, a single-text task refuses one), runs the backend once per group, and turns logits
into labels and probabilities. A row whose task is unknown, broken or refused gets that error and
the other rows are answered as usual.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from streamlearn.api import Prediction
from streamlearn.engine import check_item as engine_check
from streamlearn.errors import InvalidConfig, StreamlearnError
from streamlearn.serve.backends import Item, Loaded
from streamlearn.serve.resident import NoRoom, ResidentSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Result(Prediction):
    """One row's answer: the API's Prediction, and which artifact gave it."""

    sha256: str = ""
    """Digest of the artifact that answered."""

    def to_json(self, probabilities: bool = True) -> dict:
        """The `/v1/predict` result object."""
        out = {"task": self.task, "label": self.label, "score": self.score}
        if probabilities:
            out["probabilities"] = self.probabilities
        return out


def results(loaded: Loaded, logits: torch.Tensor) -> list[Result]:
    """Softmax a (N, C) logits tensor of one task into N results."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = probs.max(dim=-1)
    return [Result(loaded.task, loaded.labels[i], float(p), dict(zip(loaded.labels, row)), loaded.sha256)
            for p, i, row in zip(top.values.tolist(), top.indices.tolist(), probs.tolist())]


def check_item(item: Item, loaded: Loaded) -> None:
    """Refuse a row that disagrees with its task (the engine's rule) or whose text is blank.

    Checked per row before the batch runs, so one bad row fails only its own request.

    Raises:
        InvalidConfig: with one line naming the task.
    """
    if not item.text.strip() or (item.text_pair is not None and not item.text_pair.strip()):
        raise InvalidConfig(f"task {item.task!r}: text is empty")
    engine_check(loaded.parts, item)


class Inference:
    """The batch and Parallel steps on one backend and its resident set.

    Args:
        resident: The resident set (owning the backend).
        batch_size: Rows per forward inside one backend call.
    """

    def __init__(self, resident: ResidentSet, batch_size: int) -> None:
        self.resident = resident
        self.backend = resident.backend
        self.batch_size = batch_size

    def run(self, items: Sequence[Item]) -> list[Result | StreamlearnError]:
        """One outcome per item, in order (the batcher's step; runs in the inference thread)."""
        outcomes: list[Result | StreamlearnError | None] = [None] * len(items)
        rows_of: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            rows_of.setdefault(item.task, []).append(i)
        ready: list[tuple[Loaded, list[int]]] = []
        for task, rows in rows_of.items():
            try:
                loaded = self._ensure(task, {lt.task for lt, _ in ready}, ready, items, outcomes)
            except StreamlearnError as exc:
                for i in rows:
                    outcomes[i] = exc
                continue
            good = []
            for i in rows:
                try:
                    check_item(items[i], loaded)
                    good.append(i)
                except InvalidConfig as exc:
                    outcomes[i] = exc
            if good:
                ready.append((loaded, good))
        self._forward(ready, items, outcomes)
        return outcomes  # type: ignore[return-value]

    def _ensure(self, task: str, keep: set[str], ready: list, items, outcomes) -> Loaded:
        try:
            return self.resident.ensure(task, keep)
        except NoRoom:
            if not keep:
                raise
        # The batch's tasks do not fit together: answer the rows prepared so far, then go on.
        self._forward(ready, items, outcomes)
        ready.clear()
        return self.resident.ensure(task, set())

    def _forward(self, ready: list[tuple[Loaded, list[int]]], items: Sequence[Item], outcomes: list) -> None:
        if not ready:
            return
        order = [i for _, rows in ready for i in rows]
        logits = self.backend.logits([items[i] for i in order], self.batch_size)
        by_task = {loaded.task: loaded for loaded, _ in ready}
        for i, row in zip(order, logits):
            outcomes[i] = results(by_task[items[i].task], row.unsqueeze(0))[0]

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None, tasks: Sequence[str] | None) -> tuple[
            list[str], list[dict[str, Result]]]:
        """Every task's result for every text (the Parallel path; runs in the inference thread).

        Args:
            texts: The texts.
            pairs: Their second texts (pair tasks), or None.
            tasks: Task names, or None for every task with an artifact that takes this kind of
                input (single texts without `pairs`, pairs with them).

        Returns:
            (the tasks answered, per text {task: result}).

        Raises:
            UnknownTask, TaskUnavailable, NoRoom, InvalidConfig: for the first task that cannot answer.
        """
        every = tasks is None
        names = sorted(t for t, c in self.resident.tasks().items() if c.sha256) if every else list(tasks)
        loaded: dict[str, Loaded] = {}
        for task in names:
            part = self.resident.ensure(task, set(loaded))
            if every and part.pair != (pairs is not None):
                continue
            loaded[task] = part
            for text, pair in zip(texts, pairs or [None] * len(texts)):
                check_item(Item(task, text, pair), part)
        if not loaded:
            raise InvalidConfig("no task with a trained artifact takes " + ("text pairs" if pairs else "single texts"))
        answered = list(loaded)
        logits = self.backend.classify(texts, pairs, answered, self.batch_size)
        per_task = {task: results(loaded[task], logits[task]) for task in answered}
        return answered, [{task: per_task[task][i] for task in answered} for i in range(len(texts))]
