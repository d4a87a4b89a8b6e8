"""The one eval contract: `evaluate(params) -> dict of floats`, deterministic (dropout off), the same numbers on
every mesh. The training loop calls it at its eval steps and logs / checkpoints what it returns.

Pretraining evaluates the objective's loss over a fixed set of batches (`BatchEvaluator`); fine-tuning scores
the task's metrics over the dev set (jaxlm.tasks.evaluation.TaskEvaluator). Both are plain callables.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import jax
from jax.sharding import Mesh, NamedSharding

from jaxlm import sharding as shd
from jaxlm.train.step import average_eval_metrics

Evaluator = Callable[[Any], dict]


def to_global(batch: Mapping[str, Any], mesh: Mesh, sharding: NamedSharding) -> Mapping[str, Any]:
    """A host batch (numpy, this process's rows) as global arrays on the mesh; global arrays pass through."""
    if all(isinstance(v, jax.Array) for v in batch.values()):
        return batch
    return shd.host_local_to_global(batch, mesh, sharding)


def evaluate_batches(eval_step: Callable, params: Any, batches: Iterator[Mapping[str, Any]], mesh: Mesh,
                     sharding: NamedSharding | None = None, max_batches: int | None = None) -> dict[str, float]:
    """Sums the eval step's weighted sums over batches on device, then averages once."""
    sharding = sharding or shd.batch_sharding(mesh)
    total = None
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        sums = eval_step(params, to_global(batch, mesh, sharding))
        total = sums if total is None else jax.tree_util.tree_map(lambda a, b: a + b, total, sums)
    if total is None:
        raise ValueError("the eval set yielded no batches")
    return average_eval_metrics(jax.device_get(total))


class BatchEvaluator:
    """evaluate(params): a jitted eval step (`jit_eval_step(make_eval_step(loss_fn), ...)`) over a fresh iterator
    of the eval batches each time (`batches_fn()`), weighted by tokens; perplexity from the LM loss."""

    def __init__(self, eval_step: Callable, batches_fn: Callable[[], Iterator], mesh: Mesh,
                 sharding: NamedSharding | None = None, max_batches: int | None = None):
        self.eval_step, self.batches_fn, self.mesh = eval_step, batches_fn, mesh
        self.sharding, self.max_batches = sharding or shd.batch_sharding(mesh), max_batches

    def __call__(self, params) -> dict[str, float]:
        return evaluate_batches(self.eval_step, params, self.batches_fn(), self.mesh, self.sharding, self.max_batches)
