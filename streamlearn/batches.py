"""Tokenised batches with dynamic padding and seeded length bucketing.

Each batch is padded to its own longest sequence, not to `max_length`, so short texts cost short
compute. When shuffling, examples are shuffled, then sorted by length inside windows of
`bucket_batches` batches, and the batch order is shuffled again: batches hold similar lengths (less
padding, several times faster on CPU) while every epoch still sees a different, seeded order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch

from streamlearn.data import Example
from streamlearn.errors import InvalidConfig

Batch = dict[str, torch.Tensor]
"""Model inputs (`input_ids`, `attention_mask`, maybe `token_type_ids`) plus `labels` when known."""


class Batches:
    """A re-iterable sequence of padded batches; a shuffled one reorders itself every epoch.

    Args:
        examples: The examples, already validated.
        tokenizer: A Hugging Face tokenizer of the backbone.
        label_index: Label name -> class index, or None for unlabelled input.
        batch_size: Examples per batch.
        max_length: Longest tokenised sequence; longer ones are truncated.
        shuffle: Shuffle (with length bucketing) on every iteration.
        seed: Base seed; iteration number e uses `seed + e`.
        bucket_batches: Batches per length-sorting window when shuffling (1 disables bucketing).
        by_length: Without shuffling, order examples by length (evaluation: less padding);
            `order(0)` then tells which example each row is.
    """

    def __init__(
        self,
        examples: Sequence[Example],
        tokenizer,
        label_index: dict[str, int] | None,
        batch_size: int = 32,
        max_length: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        bucket_batches: int = 50,
        by_length: bool = False,
    ) -> None:
        if batch_size < 1 or max_length < 2 or bucket_batches < 1:
            raise InvalidConfig("batch_size, bucket_batches must be >= 1 and max_length >= 2")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_batches = bucket_batches
        self.by_length = by_length
        self.epoch = 0
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        texts = [ex.text for ex in examples]
        pairs = [ex.text_pair for ex in examples] if examples and examples[0].text_pair is not None else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=False) if texts else {}
        self.input_ids: list[list[int]] = list(encoded.get("input_ids", []))
        self.token_type_ids: list[list[int]] | None = (
            list(encoded["token_type_ids"]) if "token_type_ids" in encoded else None
        )
        self.labels = [label_index[str(ex.label)] for ex in examples] if label_index is not None else None

    def __len__(self) -> int:
        return -(-len(self.input_ids) // self.batch_size)

    @property
    def examples(self) -> int:
        """Number of examples."""
        return len(self.input_ids)

    def order(self, epoch: int) -> list[list[int]]:
        """Return the example indices of each batch for iteration `epoch`."""
        idx = list(range(len(self.input_ids)))
        size = self.batch_size
        if not self.shuffle:
            if self.by_length:
                idx.sort(key=lambda i: len(self.input_ids[i]))
            return [idx[i : i + size] for i in range(0, len(idx), size)]
        rng = random.Random(self.seed * 1_000_003 + epoch)
        rng.shuffle(idx)
        window = size * self.bucket_batches
        batches: list[list[int]] = []
        for start in range(0, len(idx), window):
            chunk = sorted(idx[start : start + window], key=lambda i: len(self.input_ids[i]))
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        rng.shuffle(batches)
        return batches

    def collate(self, indices: Sequence[int]) -> Batch:
        """Pad the given examples to the longest of them and return tensors."""
        longest = max(len(self.input_ids[i]) for i in indices)
        ids = torch.full((len(indices), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(indices), longest), dtype=torch.long)
        types = torch.zeros((len(indices), longest), dtype=torch.long) if self.token_type_ids is not None else None
        for row, i in enumerate(indices):
            seq = self.input_ids[i]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            if types is not None:
                types[row, : len(seq)] = torch.tensor(self.token_type_ids[i])
        batch: Batch = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            batch["token_type_ids"] = types
        if self.labels is not None:
            batch["labels"] = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return batch

    def __iter__(self) -> Iterator[Batch]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for indices in self.order(epoch):
            yield self.collate(indices)
