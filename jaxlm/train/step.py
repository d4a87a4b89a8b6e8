"""One train-step builder for every objective, and the eval step.

The objective enters only as `loss_fn(params, batch, rng) -> (loss, metrics)`, metrics being means
over the batch. If `metrics['num_tokens']` is present (the loss's weight sum), microbatches are
combined weighted by it: loss = sum_i loss_i * n_i / sum_i n_i and likewise for gradients and
metrics, which equals the full-batch token mean even when microbatches hold different numbers of
real tokens. Without it every microbatch weighs the same.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd
from jaxlm.train.state import StateLayout, TrainState

LossFn = Callable[[Any, Mapping[str, jax.Array], jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
WEIGHT_KEY = "num_tokens"


def _weight(metrics: Mapping[str, jax.Array]) -> jax.Array:
    return jnp.asarray(metrics.get(WEIGHT_KEY, 1.0), jnp.float32)


def split_microbatches(batch: Mapping[str, jax.Array], num_microbatches: int) -> dict[str, jax.Array]:
    """[B, ...] -> [n, B/n, ...] with microbatch i = rows i, i+n, i+2n, ...

    Strided rather than contiguous, so each device's rows split evenly across microbatches and the
    reshape needs no communication when the batch is sharded along B.
    """
    n = num_microbatches
    mesh = jax.sharding.get_abstract_mesh()
    out = {}
    for key, x in batch.items():
        if x.ndim == 0 or x.shape[0] % n:
            raise ValueError(f"batch[{key!r}] has shape {x.shape}: its leading (batch) dimension must be "
                             f"divisible by num_microbatches={n}")
        x = jnp.swapaxes(x.reshape((x.shape[0] // n, n) + x.shape[1:]), 0, 1)
        if not mesh.empty and all(a in mesh.shape for a in shd.BATCH_AXES):
            if x.shape[1] % (mesh.shape["data"] * mesh.shape["fsdp"]) == 0:
                x = jax.lax.with_sharding_constraint(x, P(None, shd.BATCH_AXES))
        out[key] = x
    return out


MEMORY_KEY = "__memory__"  # a recurrent objective's memory rides in the batch through the microbatch split


def _memory_rows(memory):
    """[layers, B, ...] <-> [B, layers, ...]: batch rows first, so microbatches split the memory as the batch."""
    return jnp.swapaxes(memory, 0, 1)


def _loss_and_grads(loss_fn: LossFn, params, batch, rng, num_microbatches: int, memory=None):
    """Weighted mean loss, grads and metrics over microbatches (lax.scan inside the jitted step), and the new
    memory when a recurrent objective's `memory` [layers, B, ...] is given (`loss_fn.with_memory(params, batch,
    rng, memory) -> (loss, (metrics, new_memory))`): each microbatch reads and leaves its own rows of it. The
    memory is an input, never differentiated."""
    if memory is None:
        def one(p, mb, r):
            loss, metrics = loss_fn(p, mb, r)
            return loss, (metrics, None)
    else:
        batch = {**batch, MEMORY_KEY: _memory_rows(memory)}

        def one(p, mb, r):
            rows = {k: v for k, v in mb.items() if k != MEMORY_KEY}
            loss, (metrics, new) = loss_fn.with_memory(p, rows, r, _memory_rows(mb[MEMORY_KEY]))
            return loss, (metrics, _memory_rows(new.astype(memory.dtype)))

    grad_fn = jax.value_and_grad(one, has_aux=True)
    if num_microbatches == 1:
        (loss, (metrics, new_rows)), grads = grad_fn(params, batch, jax.random.fold_in(rng, 0))
        metrics = dict(metrics)
        metrics["loss"] = loss
        return loss, grads, metrics, None if new_rows is None else _memory_rows(new_rows)

    micro = split_microbatches(batch, num_microbatches)
    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    _, (metrics_shape, _) = jax.eval_shape(one, params, first, rng)
    zero_metrics = {k: jnp.zeros((), jnp.float32) for k in metrics_shape}
    zero_metrics["loss"] = jnp.zeros((), jnp.float32)
    carry0 = (jax.tree_util.tree_map(jnp.zeros_like, params), zero_metrics, jnp.zeros((), jnp.float32))

    def body(carry, xs):
        grad_sum, metric_sums, weight_sum = carry
        mb, i = xs
        (loss, (metrics, new_rows)), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
        w = _weight(metrics)
        metrics = dict(metrics)
        metrics["loss"] = loss
        grad_sum = jax.tree_util.tree_map(lambda a, g: a + (g * w).astype(a.dtype), grad_sum, grads)
        metric_sums = {k: metric_sums[k] + jnp.asarray(metrics[k], jnp.float32) * w for k in metric_sums}
        return (grad_sum, metric_sums, weight_sum + w), new_rows

    (grad_sum, metric_sums, weight_sum), new_rows = jax.lax.scan(
        body, carry0, (micro, jnp.arange(num_microbatches)))
    denom = jnp.maximum(weight_sum, jnp.finfo(jnp.float32).tiny)
    grads = jax.tree_util.tree_map(lambda g: (g / denom).astype(g.dtype), grad_sum)
    metrics = {k: v / denom for k, v in metric_sums.items()}
    if WEIGHT_KEY in metrics:
        metrics[WEIGHT_KEY] = weight_sum
    new_memory = None
    if new_rows is not None:  # [n, B/n, ...] (microbatch i = rows i, i+n, ...) back to [B, ...], then [layers, B, ...]
        rows = jnp.swapaxes(new_rows, 0, 1).reshape((-1,) + new_rows.shape[2:])
        new_memory = _memory_rows(rows)
    return metrics["loss"], grads, metrics, new_memory


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    num_microbatches: int = 1,
                    learning_rate_fn: Callable[[jax.Array], jax.Array] | None = None,
                    ) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
    """step(state, batch) -> (new_state, metrics): accumulate grads over microbatches, update once.

    rng per step = fold_in(state.rng, state.step), per microbatch fold_in(step_rng, i). Metrics:
    loss, the loss_fn's metrics (weighted means; num_tokens summed), grad_norm (before clipping),
    learning_rate (if learning_rate_fn given), is_finite (loss and grad norm finite). The update is
    applied even when not finite: the loop stops and never saves such a state.

    A state with a memory (TrainState.memory, XLNet's mems) is stepped through `loss_fn.with_memory`, and the
    new state holds the memory the batch left for the next one.
    """
    if num_microbatches < 1:
        raise ValueError(f"num_microbatches={num_microbatches} must be >= 1")
    carries_memory = hasattr(loss_fn, "with_memory")

    def step(state: TrainState, batch: Mapping[str, jax.Array]):
        step_rng = jax.random.fold_in(state.rng, state.step)
        if state.memory is not None and not carries_memory:
            raise ValueError("the train state carries a memory, but the objective's loss_fn takes none "
                             "(it has no `with_memory`)")
        loss, grads, metrics, memory = _loss_and_grads(loss_fn, state.params, batch, step_rng, num_microbatches,
                                                       state.memory)
        grad_norm = optax.tree.norm(grads)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics["grad_norm"] = grad_norm.astype(jnp.float32)
        metrics["is_finite"] = (jnp.isfinite(loss) & jnp.isfinite(grad_norm)).astype(jnp.float32)
        if learning_rate_fn is not None:
            metrics["learning_rate"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        new_state = state.apply_gradients(grads, optimizer)
        return (new_state if memory is None else new_state.replace(memory=memory)), metrics

    return step


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Mapping[str, jax.Array]], dict]:
    """eval(params, batch) -> weighted metric *sums* plus 'weight', to be summed over batches and divided once
    (`average_eval_metrics`). Deterministic: the loss runs with rng None (no dropout, whatever is configured)."""

    def evaluate(params, batch):
        loss, metrics = loss_fn(params, batch, None)
        w = _weight(metrics)
        sums = {k: jnp.asarray(v, jnp.float32) * w for k, v in metrics.items() if k != WEIGHT_KEY}
        sums["loss"] = jnp.asarray(loss, jnp.float32) * w
        sums["weight"] = w
        return sums

    return evaluate


def average_eval_metrics(sums: Mapping[str, Any]) -> dict[str, float]:
    """Summed eval outputs -> means, num_tokens (the weight sum), and perplexity = exp(mean lm_loss) when the
    loss reports an `lm_loss` (its language-modelling part: never exp of a loss with NSP or z-loss in it)."""
    weight = float(sums["weight"])
    if weight <= 0:
        raise ValueError("evaluation saw no weighted tokens (weight sum is 0): is the eval set empty?")
    out = {k: float(v) / weight for k, v in sums.items() if k != "weight"}
    if "lm_loss" in out:
        out["perplexity"] = float(jnp.exp(jnp.minimum(out["lm_loss"], 80.0)))
    out[WEIGHT_KEY] = weight
    return out


def _state_shardings(state_shardings: StateLayout | TrainState) -> TrainState:
    return state_shardings.shardings if isinstance(state_shardings, StateLayout) else state_shardings


def jit_train_step(step_fn, state_shardings: StateLayout | TrainState, batch_sharding: NamedSharding,
                   mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES, constrain_activations: bool = True):
    """jax.jit with explicit shardings, the state donated, run inside the mesh + logical rules
    (`constrain_activations=False`: rules only, see `sharding.mesh_context`).

    Returns `run(state, batch) -> (state, metrics)`; `run.jitted` is the jitted function.
    """
    jitted = jax.jit(step_fn,
                     in_shardings=(_state_shardings(state_shardings), batch_sharding),
                     out_shardings=(_state_shardings(state_shardings), shd.replicated(mesh)),
                     donate_argnums=0)

    def run(state, batch):
        with shd.mesh_context(mesh, rules, constrain_activations):
            return jitted(state, batch)

    run.jitted = jitted
    return run


def stacked_sharding(batch_sharding: NamedSharding) -> NamedSharding:
    """The sharding of `steps` batches stacked on a new leading axis: that axis unsharded, each batch as before."""
    return NamedSharding(batch_sharding.mesh, P(None, *batch_sharding.spec))


def jit_train_steps(step_fn, state_shardings: StateLayout | TrainState, batch_sharding: NamedSharding,
                    mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES, constrain_activations: bool = True):
    """Several train steps in one compiled call: `run(state, batches) -> (state, metrics)` where every entry of
    `batches` stacks the steps' batches on a leading axis ([steps, B, ...], sharded by `stacked_sharding`) and
    every metric comes back stacked the same way ([steps]). A `jax.lax.scan` of `step_fn` (the function
    `jit_train_step` compiles), the state donated: one dispatch, one temp allocation and one host round trip per
    call instead of per step. The loop uses it for `steps_per_call` > 1 (jaxlm.train.loop.train)."""
    def steps(state, batches):
        return jax.lax.scan(step_fn, state, batches)

    return jit_train_step(steps, state_shardings, stacked_sharding(batch_sharding), mesh, rules, constrain_activations)


def jit_eval_step(eval_fn, state_shardings: StateLayout | TrainState, batch_sharding: NamedSharding,
                  mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES, constrain_activations: bool = True):
    """jax.jit of `make_eval_step(...)`: params keep their sharding, sums come back replicated."""
    jitted = jax.jit(eval_fn, in_shardings=(_state_shardings(state_shardings).params, batch_sharding),
                     out_shardings=shd.replicated(mesh))

    def run(params, batch):
        with shd.mesh_context(mesh, rules, constrain_activations):
            return jitted(params, batch)

    run.jitted = jitted
    return run
