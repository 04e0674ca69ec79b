"""Using a stored artifact: load it onto the shared backbone's engine, predict, and re-evaluate it.

`reevaluate` is the proof that no task is forgotten: it scores every stored artifact again on its
stored test set, on the backbone the worker keeps, and compares with the catalogue. Because the
backbone never changes and each task's tensors are only read, the drift is exactly 0. Each run is
recorded in the catalogue's evaluation history, the rows behind the accuracy matrix R[t, j].
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import torch

from streamlearn import jobs
from streamlearn.backbone import Backbone, resident_backbone
from streamlearn.batches import Batches
from streamlearn.catalogue.evaluations import record_run
from streamlearn.catalogue.models import utcnow
from streamlearn.catalogue.session import session_scope
from streamlearn.data import Example
from streamlearn.engine import Engine, Item, LoadedTask, TaskModel, load_task
from streamlearn.errors import InvalidConfig
from streamlearn.training import Metrics, predictions, scores


class Predictor:
    """One loaded artifact, resident on an engine of the shared backbone."""

    def __init__(self, loaded: LoadedTask, backbone: Backbone) -> None:
        self.loaded = loaded
        self.backbone = backbone
        self.labels: tuple[str, ...] = loaded.labels
        self.max_length = loaded.max_length
        self.engine = Engine(backbone)
        self.engine.attach(loaded.name, loaded)

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, batch_size: int = 64) -> torch.Tensor:
        """Return the (len(texts), classes) logits, in input order, on the CPU."""
        if pairs is not None and len(pairs) != len(texts):
            raise InvalidConfig(f"{len(texts)} texts but {len(pairs)} pairs")
        if not texts:
            return torch.zeros((0, len(self.labels)))
        items = [Item(self.loaded.name, t, pairs[i] if pairs is not None else None) for i, t in enumerate(texts)]
        return torch.stack(self.engine.logits(items, batch_size))

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Return (label, probability) of the most likely class for each text."""
        return [ranked[0] for ranked in self.ranked(texts, pairs, 1)]

    def ranked(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
               k: int | None = None) -> list[list[tuple[str, float]]]:
        """Return, for each text, the `k` most likely classes (None: every class) as (label, probability), best first.

        Raises:
            InvalidConfig: the inputs disagree with the task (`data.check_inputs`).
        """
        probs = torch.softmax(self.logits(texts, pairs), dim=-1)
        top = probs.topk(min(k or len(self.labels), len(self.labels)), dim=-1)
        return [[(self.labels[i], float(p)) for p, i in zip(ps, idx)]
                for ps, idx in zip(top.values.tolist(), top.indices.tolist())]

    def evaluate(self, examples: Sequence[Example]) -> Metrics:
        """Accuracy and macro-F1 on labelled examples (labels must be among the artifact's)."""
        index = {name: i for i, name in enumerate(self.labels)}
        unknown = {str(ex.label) for ex in examples} - set(index)
        if unknown:
            raise InvalidConfig(f"labels {sorted(unknown)[:5]} are not among the artifact's {list(self.labels)}")
        pairs = [ex.text_pair for ex in examples] if examples and examples[0].text_pair is not None else None
        pred = self.logits([ex.text for ex in examples], pairs).argmax(-1).tolist()
        return scores([index[str(ex.label)] for ex in examples], pred)


def load_predictor(artifact_path: str | Path, backbone: Backbone, expected_sha256: str | None = None) -> Predictor:
    """Load a verified artifact (format 1 or 2) for prediction on this backbone.

    Raises:
        ArtifactCorrupt: The file or sidecar fails its sha256, or the tensors do not fit the method.
        BackboneMismatch: The artifact was trained on a backbone with another fingerprint.
    """
    return Predictor(load_task(artifact_path, backbone, expected_sha256), backbone)


def reevaluate(task: str | None = None, *, source: str = "cli") -> list[dict]:
    """Re-evaluate stored artifacts on their stored test sets, compare with the catalogue, and record the run.

    The run is recorded in the catalogue's evaluation history (one row per task, one transaction),
    from which `catalogue.evaluations.accuracy_matrix` builds R[t, j]. The run's time is taken right
    after it read which artifacts are current, so it belongs to the stream as it was then.

    Args:
        task: One task, or None for every task with an artifact.
        source: Who asked (`cli`, `demo` or `http`), stored with the rows.

    Returns:
        Per task: `task, job_id, sha256, split, examples, accuracy, macro_f1, catalogue_accuracy,
        catalogue_macro_f1, drift` (the largest absolute difference; 0 when nothing was forgotten),
        `majority_accuracy` (always answering the split's most frequent label) and
        `predicted_classes` (distinct labels predicted), plus `run_id` and `evaluated_at`.

    Raises:
        UnknownTask: no such task, or it has no artifact yet.
    """
    plans = jobs.artifact_plans(task)
    read_at = utcnow()
    backbone = resident_backbone()
    rows = [_reevaluate_one(plan, uri, sha, stored, backbone) for plan, uri, sha, stored in plans]
    with session_scope() as s:
        run_id = record_run(s, rows, source=source, evaluated_at=read_at)
    return [r | {"run_id": run_id, "evaluated_at": read_at.isoformat()} for r in rows]


def _reevaluate_one(plan: jobs.JobPlan, uri: str, sha256: str, stored: dict, backbone: Backbone) -> dict:
    dataset = jobs.stored_dataset(plan)
    split, examples = ("test", dataset.test) if dataset.test else ("validation", dataset.validation)
    loaded = load_task(jobs.artifact_path(uri), backbone, expected_sha256=sha256, name=plan.task)
    # The batches of the evaluation during training (same size, order and padding), so every float matches.
    index = {name: i for i, name in enumerate(dataset.labels)}
    batches = Batches(examples, backbone.tokenizer, index, plan.train.batch_size, loaded.max_length, by_length=True)
    gold, pred = predictions(TaskModel(backbone, loaded.parts), batches)
    now = scores(gold, pred)
    before = stored.get(split, {})
    drift = max(abs(now.accuracy - before.get("accuracy", float("nan"))),
                abs(now.macro_f1 - before.get("macro_f1", float("nan"))))
    return {
        "task": plan.task, "job_id": plan.job_id, "sha256": sha256, "split": split, "examples": now.examples,
        "accuracy": now.accuracy, "macro_f1": now.macro_f1,
        "catalogue_accuracy": before.get("accuracy"), "catalogue_macro_f1": before.get("macro_f1"),
        "drift": drift,
        "majority_accuracy": max(Counter(gold).values()) / len(gold) if gold else 0.0,
        "predicted_classes": len(set(pred)),
    }
