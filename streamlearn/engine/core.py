"""The multi-task engine: many tasks resident on one backbone, rows routed per task, Parallel.

`Engine(backbone)` installs the sites once per backbone. `attach` / `detach` are the only writers
of its table of resident tasks, under a lock; the table itself is replaced, never edited, so a
forward that began reads one consistent snapshot (old or new parts, never a mix) without a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from streamlearn.batches import Batches
from streamlearn.data import Example, check_inputs
from streamlearn.engine import encoder, fusion
from streamlearn.engine.loading import LoadedTask
from streamlearn.engine.parts import TaskParts
from streamlearn.engine.sites import prepare
from streamlearn.errors import InvalidConfig, UnknownTask

log = logging.getLogger(__name__)


class Item(NamedTuple):
    """One row to classify: its task, its text, and its second text for a pair task."""

    task: str
    text: str
    text_pair: str | None = None


class TaskModel(nn.Module):
    """One task on the shared backbone as a classifier: `forward(**batch)` returns (B, C) logits.

    Its parameters are exactly the task's parts (the backbone is held, not registered), so training
    it trains them and nothing else; `train()` switches the task's own modules and the sites'
    dropout for its forwards, never the shared modules' flags.
    """

    def __init__(self, backbone, parts: TaskParts) -> None:
        super().__init__()
        prepare(backbone)
        self.parts = parts
        self.__dict__["backbone"] = backbone

    def forward(self, input_ids, attention_mask, token_type_ids=None, **_) -> torch.Tensor:
        """Return logits of shape (batch, classes); extra batch keys such as labels are ignored."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        rows = encoder.forward(self.backbone, inputs, [self.parts] * len(input_ids), training=self.training)
        return torch.stack(rows)

    def regulariser(self) -> torch.Tensor | None:
        """The extra loss term of the task's parts: a fused task's value regulariser, else None."""
        return fusion.regulariser(self.parts)


class Engine:
    """Many tasks resident on one frozen backbone.

    Args:
        backbone: The shared backbone; its sites are installed on first use.
    """

    def __init__(self, backbone) -> None:
        prepare(backbone)
        self.backbone = backbone
        self._lock = threading.Lock()
        self._tasks: Mapping[str, LoadedTask] = {}

    def attach(self, task: str, loaded: LoadedTask) -> None:
        """Make a task resident, replacing its parts atomically if it already is."""
        loaded.parts.requires_grad_(False).eval()
        with self._lock:
            self._tasks = {**self._tasks, task: loaded}
        log.info("attached %s (%d bytes)", task, loaded.nbytes)

    def detach(self, task: str) -> None:
        """Remove a resident task (an unknown task is an error that names it)."""
        with self._lock:
            if task not in self._tasks:
                raise UnknownTask(f"task {task!r} is not resident")
            self._tasks = {k: v for k, v in self._tasks.items() if k != task}

    def resident(self) -> dict[str, int]:
        """Task -> bytes of its resident parts."""
        return {name: t.nbytes for name, t in self._tasks.items()}

    def loaded(self, task: str) -> LoadedTask:
        """The resident task's LoadedTask."""
        return self._resolve(self._tasks, [task])[task]

    @staticmethod
    def _resolve(table: Mapping[str, LoadedTask], names: Sequence[str]) -> dict[str, LoadedTask]:
        missing = [n for n in dict.fromkeys(names) if n not in table]
        if missing:
            more = f" (nor {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise UnknownTask(f"task {missing[0]!r} is not resident{more}")
        return {n: table[n] for n in dict.fromkeys(names)}

    def logits(self, items: Sequence[Item], batch_size: int = 64) -> list[torch.Tensor]:
        """Class logits of every item with its own task; rows of different tasks share batches.

        Returns:
            One CPU float tensor (C_task,) per item, in input order.

        Raises:
            UnknownTask: an item's task is not resident (the message names it).
        """
        items = [Item(*i) for i in items]
        table = self._resolve(self._tasks, [i.task for i in items])
        items = [_numbered(k, table[item.task], item) for k, item in enumerate(items, 1)]
        if not items:
            return []
        examples = [Example(i.text, None, i.text_pair) for i in items]
        # one tokenizer pass per distinct max length, so each row is truncated as its task was trained
        out: list[torch.Tensor | None] = [None] * len(items)
        for max_length in sorted({t.max_length for t in table.values()}):
            chosen = [k for k, i in enumerate(items) if table[i.task].max_length == max_length]
            batches = Batches([examples[k] for k in chosen], self.backbone.tokenizer, None, batch_size, max_length,
                              by_length=True)
            with torch.inference_mode():
                for indices in batches.order(0):
                    batch = {k: v.to(self.backbone.device) for k, v in batches.collate(indices).items()}
                    rows = encoder.forward(self.backbone, batch, [table[items[chosen[j]].task].parts for j in indices])
                    for j, row in zip(indices, rows):
                        out[chosen[j]] = row.float().cpu()
        return out

    def classify(self, texts: Sequence[str], pairs: Sequence[str] | None, tasks: Sequence[str],
                 batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Parallel: every task on the same texts; shared layers run once, fanned out where tasks differ.

        Returns:
            Task -> (len(texts), C_task) CPU float logits.
        """
        table = self._resolve(self._tasks, list(tasks))
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidConfig(f"{len(texts)} texts but {len(pairs)} pairs")
        for t in table.values():
            texts, pairs = _checked(t, texts, pairs)
        out = {n: torch.empty((len(texts), len(t.labels))) for n, t in table.items()}
        if not texts:
            return out
        examples = [Example(t, None, pairs[i] if pairs is not None else None) for i, t in enumerate(texts)]
        for max_length in sorted({t.max_length for t in table.values()}):
            group = [n for n, t in table.items() if t.max_length == max_length]
            batches = Batches(examples, self.backbone.tokenizer, None, batch_size, max_length, by_length=True)
            with torch.inference_mode():
                for indices in batches.order(0):
                    batch = {k: v.to(self.backbone.device) for k, v in batches.collate(indices).items()}
                    for name, logits in zip(group, encoder.fan_out(self.backbone, batch, [table[n].parts for n in group])):
                        out[name][indices] = logits.float().cpu()
        return out


def _checked(task: LoadedTask, texts: Sequence[str], pairs: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    return check_inputs(texts, pairs, pair_task=task.pair)


def _numbered(k: int, task: LoadedTask, item: Item) -> Item:
    try:
        return check_item(task, item)
    except InvalidConfig as exc:
        raise InvalidConfig(str(exc).replace("input 1:", f"input {k}:", 1)) from None


def check_item(task: LoadedTask, item: Item) -> Item:
    """Refuse an input the task cannot take, with one line; return it cleaned as training cleans texts.

    A pair task needs a text_pair, a single-text task takes none, and an empty text is refused
    (`data.check_inputs`, the same rules everywhere: CLI, Python API, HTTP).
    """
    texts, pairs = _checked(task, [item.text], None if item.text_pair is None else [item.text_pair])
    return Item(item.task, texts[0], pairs[0] if pairs is not None else None)
