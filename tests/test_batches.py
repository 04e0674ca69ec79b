"""Batching: dynamic padding, seeded length bucketing, every example exactly once."""

from __future__ import annotations

import random

from conftest import tiny_sentence

from streamlearn.batches import Batches
from streamlearn.data import Example


def _examples(n: int = 100) -> list[Example]:
    rng = random.Random(0)
    return [Example(tiny_sentence(rng, lab), lab) for lab in ("pos", "neg") * (n // 2)]


def test_each_batch_is_padded_to_its_own_longest_sequence(tiny_backbone):
    """Batch width equals the longest sequence in that batch, never max_length."""
    batches = Batches(_examples(), tiny_backbone.tokenizer, {"neg": 0, "pos": 1}, batch_size=8, max_length=100)
    widths = []
    for indices, batch in zip(batches.order(0), batches):
        longest = max(len(batches.input_ids[i]) for i in indices)
        assert batch["input_ids"].shape == (len(indices), longest) == batch["attention_mask"].shape
        assert batch["attention_mask"].sum().item() == sum(len(batches.input_ids[i]) for i in indices)
        widths.append(longest)
    assert max(widths) < 100
    assert batch["labels"].dtype.is_floating_point is False


def test_truncation_applies_max_length(tiny_backbone):
    """Sequences longer than max_length are truncated to it."""
    long = [Example(" ".join(["good"] * 50), "pos")]
    batches = Batches(long, tiny_backbone.tokenizer, {"pos": 0}, max_length=10)
    assert next(iter(batches))["input_ids"].shape == (1, 10)


def test_shuffled_order_is_seeded_changes_per_epoch_and_covers_all(tiny_backbone):
    """Same seed gives the same order, each epoch differs, and every example appears exactly once."""
    examples = _examples(200)

    def make(seed):
        return Batches(examples, tiny_backbone.tokenizer, {"neg": 0, "pos": 1}, batch_size=16, shuffle=True, seed=seed, bucket_batches=4)

    a, b, c = make(1), make(1), make(2)
    assert a.order(0) == b.order(0) and a.order(1) == b.order(1)
    assert a.order(0) != a.order(1) and a.order(0) != c.order(0)
    assert sorted(i for batch in a.order(0) for i in batch) == list(range(200))


def test_bucketing_reduces_padding(tiny_backbone):
    """Length bucketing pads fewer tokens than a plain shuffle of the same examples."""
    examples = _examples(400)

    def padded(bucket):
        batches = Batches(examples, tiny_backbone.tokenizer, None, batch_size=16, shuffle=True, seed=0, bucket_batches=bucket)
        return sum(b["attention_mask"].numel() - b["attention_mask"].sum().item() for b in batches)

    assert padded(10) < padded(1)


def test_sentence_pairs_get_token_types(tiny_backbone):
    """Pair examples are encoded as one sequence with token_type_ids marking the second text."""
    batches = Batches([Example("good", "pos", "bad film")], tiny_backbone.tokenizer, {"pos": 0})
    batch = next(iter(batches))
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 1, 1, 1]]
