"""Many trials of one training run at once: their states stacked on a leading trial axis, one vmapped train step.

A sweep over seeds and learning rates of a small model (Dodge et al. 2020) leaves the machine mostly idle when the
trials run one after another: each step is many small matmuls and a dispatch. Stacked, K trials are one program
over [K, ...] arrays, compiled once. Each trial keeps everything that makes it a trial of its own: its params and
optimizer state (the head initialised from its own key), its batches ([K, B, ...]: each trial's data order) and its
dropout stream (the state's rng, split from the same key as in `create_train_state`). The peak learning rate is an
argument of the step, one value per trial ([K] array) fed to the schedule (`make_optimizer(learning_rate=...)`), so
one compiled program trains every rate, and a trial's optimizer state has exactly a plain run's structure.

The trial axis is unsharded: every device holds every trial, and each trial's batch is split over the mesh's
('data', 'fsdp') axes as in a plain run (the per-trial step is `make_train_step`'s, under `jax.vmap`).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd
from jaxlm.train.state import StateLayout, TrainState, abstract_train_state, initial_state
from jaxlm.train.step import LossFn, make_train_step


def stacked(sharding: NamedSharding) -> NamedSharding:
    """A single trial's sharding with a leading, unsharded trial axis."""
    return NamedSharding(sharding.mesh, P(None, *sharding.spec))


def trial_batch_sharding(mesh: Mesh) -> NamedSharding:
    """[K, B, ...] batches: B split over ('data', 'fsdp') as in a plain run, the trial axis K not."""
    return NamedSharding(mesh, P(None, shd.BATCH_AXES))


def raw_keys(seeds: Sequence[int]) -> jax.Array:
    """uint32[K, 2]: each seed's `jax.random.key(seed)`, as a plain run of that seed starts from."""
    return jnp.stack([jax.random.key_data(jax.random.key(int(s))) for s in seeds])


def create_trial_states(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                        seeds: Sequence[int], mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES,
                        ) -> tuple[TrainState, StateLayout]:
    """K initial states stacked on a leading axis, trial k exactly `create_train_state(..., key(seeds[k]))`'s state;
    and the layout of one trial (`layout.shardings` without the trial axis)."""
    layout = abstract_train_state(init_fn, optimizer, mesh, rules)
    shardings = jax.tree.map(stacked, layout.shardings)
    init = jax.vmap(lambda rng: initial_state(init_fn, optimizer, rng))
    return jax.jit(init, out_shardings=shardings)(raw_keys(seeds)), layout


class TrialArrays:
    """Moves trials in and out of a stacked tree: one trial's tree (`take`), the same tree for every trial (`share`),
    a subset of the trials (`keep`). Each is jitted once per tree structure, onto the given shardings."""

    def __init__(self, single_shardings: Any):
        self.single = single_shardings
        self.stacked = jax.tree.map(stacked, single_shardings)
        self._take = jax.jit(lambda tree, k: jax.tree.map(lambda x: x[k], tree), out_shardings=self.single)

    def take(self, tree: Any, k: int) -> Any:
        """Trial k of a stacked tree, laid out as a plain run's."""
        return self._take(tree, jnp.asarray(k, jnp.int32))

    def keep(self, tree: Any, positions: Sequence[int]) -> Any:
        """The stacked tree of the trials at `positions` (in that order)."""
        index = jnp.asarray(list(positions), jnp.int32)
        return jax.jit(lambda t: jax.tree.map(lambda x: x[index], t), out_shardings=self.stacked)(tree)

    def share(self, tree: Any, single: Any, shared: Any) -> Any:
        """`tree` (stacked) with every leaf where `shared` (a matching tree of bools) is True replaced by `single`'s
        leaf on every trial: a restored backbone, the same for all trials, over their own heads."""
        def fill(tree, single):
            return jax.tree.map(lambda a, b, s: jnp.broadcast_to(b.astype(a.dtype), a.shape) if s else a,
                                tree, single, shared)
        return jax.jit(fill, out_shardings=self.stacked, donate_argnums=0)(tree, single)


def make_trials_step(loss_fn: LossFn, make_optimizer: Callable[[jax.Array], tuple[optax.GradientTransformation,
                                                                                    Callable]],
                     *, num_microbatches: int = 1, vmap_width: int = 0) -> Callable:
    """step(states, batches, learning_rates) -> (states, metrics): `make_train_step`'s step vmapped over the trial
    axis of all three. make_optimizer(lr) -> (optax transform, schedule) for one trial's peak rate lr (a traced
    scalar), e.g. `lambda lr: jaxlm.train.make_optimizer(cfg, num_steps=n, learning_rate=lr)`. Metrics are [K].

    vmap_width > 0: `lax.map` over groups of that many trials, each group vmapped, inside the same program: the
    activations of only vmap_width trials are alive at once (memory), and 1 runs the trials one after another
    (a CPU whose caches a K-wide batch overflows); 0: all K at once."""
    if vmap_width < 0:
        raise ValueError(f"vmap_width={vmap_width} must be >= 0 (0: every trial at once)")

    def one(state, batch, learning_rate):
        tx, schedule = make_optimizer(learning_rate)
        step = make_train_step(loss_fn, tx, num_microbatches=num_microbatches, learning_rate_fn=schedule)
        return step(state, batch)

    if not vmap_width:
        return jax.vmap(one)
    return lambda states, batches, rates: jax.lax.map(lambda args: one(*args), (states, batches, rates),
                                                      batch_size=vmap_width)


def jit_trials_step(step_fn: Callable, layout: StateLayout, mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES):
    """jax.jit of `make_trials_step(...)` with the stacked state donated, run inside the mesh + logical rules.
    run(states, batches, learning_rates); a different number of trials compiles once more."""
    state_shardings = jax.tree.map(stacked, layout.shardings)
    jitted = jax.jit(step_fn, in_shardings=(state_shardings, trial_batch_sharding(mesh), shd.replicated(mesh)),
                     out_shardings=(state_shardings, shd.replicated(mesh)), donate_argnums=0)

    def run(states: TrainState, batches: Mapping[str, jax.Array], learning_rates: jax.Array):
        with shd.mesh_context(mesh, rules):
            return jitted(states, batches, learning_rates)

    run.jitted = jitted
    return run
