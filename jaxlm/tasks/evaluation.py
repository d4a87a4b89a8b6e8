"""Dev-set evaluation of a fine-tuning run: the task's official metrics over the whole dev set, behind the loop's
eval contract (`evaluate(params) -> dict`, deterministic). Task metrics (F1, Matthews, Spearman, conlleval, SQuAD,
BLEU) are not sums over batches, so one call runs the whole predict pass and scores it."""
from __future__ import annotations

from typing import Sequence

from jaxlm.tasks.base import Task, TaskSpec


class TaskEvaluator:
    """evaluate(params) -> {'loss': the mean dev loss, **the task's metrics}; `history` keeps every result."""

    def __init__(self, task: Task, spec: TaskSpec, predictor, examples: Sequence, features: dict):
        self.task, self.spec, self.predictor = task, spec, predictor
        self.examples, self.features = examples, features
        self.history: list[dict] = []

    def __call__(self, params) -> dict[str, float]:
        outputs, loss = self.predictor(params, self.features)
        metrics = {"loss": loss, **self.task.metrics(self.spec, self.examples, self.features, outputs)}
        self.history.append(metrics)
        return metrics
