"""Training state, born sharded.

`create_train_state` never materialises the parameters on one device: it reads the abstract, boxed
(nn.Partitioned) parameters with `jax.eval_shape`, turns their logical annotations into shardings,
and runs the initialiser under `jax.jit(out_shardings=...)` so each device only ever holds its shard.
The state itself holds plain (unboxed) arrays; the shardings live beside it in a `StateLayout`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd
from jaxlm.models.common import unbox


@struct.dataclass
class TrainState:
    """Everything a run needs to continue: a pure pytree of arrays (no functions inside).

    step: int32 number of updates applied. rng: raw uint32[2] key; the step derives its per-step key
    with fold_in(rng, step), so the key never changes and resumes are exact. memory: what a recurrent objective
    carries from one step to the next (XLNet's mems [layers, B, M, D], `with_memory`), saved with the rest so a
    resume is exact; None for every other objective.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    memory: Any = None

    def apply_gradients(self, grads: Any, tx: optax.GradientTransformation) -> "TrainState":
        updates, opt_state = tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state)


@dataclasses.dataclass(frozen=True)
class StateLayout:
    """How the state is laid out on the mesh.

    shardings: TrainState-shaped tree of NamedSharding (jit in/out shardings).
    abstract: TrainState-shaped tree of ShapeDtypeStruct carrying those shardings (restore target).
    logical_specs: the params' logical PartitionSpecs, e.g. P('embed', 'mlp').
    """

    mesh: Mesh
    shardings: TrainState
    abstract: TrainState
    logical_specs: Any


def _params_of(init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
    variables = init_fn(rng)
    if not isinstance(variables, Mapping) or "params" not in variables:
        raise ValueError("init_fn(rng) must return model variables as model.init does, i.e. "
                         f"{{'params': ...}}; got {type(variables).__name__} with keys "
                         f"{list(variables) if isinstance(variables, Mapping) else None}")
    extra = sorted(set(variables) - {"params"})
    if extra:
        raise ValueError(f"init_fn returned non-parameter collections {extra}; TrainState keeps only 'params'")
    return variables["params"]


def _raw_key(rng: jax.Array) -> jax.Array:
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(rng)
    return rng


def _opt_state_shardings(abstract_opt: Any, abstract_params: Any, param_shardings: Any, mesh: Mesh) -> Any:
    """Optimizer leaves that mirror a parameter (Adam's mu/nu, ...) take that parameter's sharding.

    Matching is by key-path suffix and shape, so any optax chain works; other leaves (counts,
    Adafactor's factored row/column statistics) are replicated.
    """
    by_path = {}
    for (path, leaf), (_, sh) in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                                     jax.tree_util.tree_flatten_with_path(param_shardings)[0]):
        by_path[tuple(path)] = (tuple(leaf.shape), sh)
    rep = shd.replicated(mesh)

    def one(path, leaf):
        path = tuple(path)
        for start in range(len(path)):
            hit = by_path.get(path[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return rep

    return jax.tree_util.tree_map_with_path(one, abstract_opt)


def abstract_train_state(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                         mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES) -> StateLayout:
    """The state's shapes and shardings, computed without allocating anything."""
    boxed = jax.eval_shape(lambda r: _params_of(init_fn, r), jax.random.PRNGKey(0))
    param_shardings = shd.logical_to_mesh_shardings(boxed, mesh, rules)
    abstract_params = unbox(boxed)
    abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
    rep = shd.replicated(mesh)
    shardings = TrainState(step=rep, params=param_shardings,
                           opt_state=_opt_state_shardings(abstract_opt, abstract_params, param_shardings, mesh),
                           rng=rep)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                        opt_state=abstract_opt, rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    abstract = jax.tree_util.tree_map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)
    return StateLayout(mesh=mesh, shardings=shardings, abstract=abstract,
                       logical_specs=nn.get_partition_spec(boxed))


def create_train_state(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                       rng: jax.Array, mesh: Mesh, rules: Sequence = shd.DEFAULT_RULES,
                       ) -> tuple[TrainState, StateLayout]:
    """Initialises params and optimizer state directly into their shards.

    init_fn(rng) -> model variables ({'params': boxed params}), e.g.
    `lambda rng: model.init(rng, **dummy_batch)`. `rng` (raw or typed key) is split into the init key
    and the state's training key.
    """
    layout = abstract_train_state(init_fn, optimizer, mesh, rules)
    # No mesh context here: out_shardings alone places the shards, and under jax.set_mesh Flax's
    # DenseGeneral applies its (rank-3) logical constraint to the flat rank-2 kernel it initialises.
    state = jax.jit(lambda r: initial_state(init_fn, optimizer, r), out_shardings=layout.shardings)(_raw_key(rng))
    return state, layout


def initial_state(init_fn: Callable[[jax.Array], Any], optimizer: optax.GradientTransformation,
                  rng: jax.Array) -> TrainState:
    """The state a run starts from, traceable (create_train_state jits it; a sweep vmaps it over its trials' keys).
    rng (raw uint32[2]) is split into the init key and the state's training key."""
    init_rng, train_rng = jax.random.split(rng)
    params = unbox(_params_of(init_fn, init_rng))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), rng=train_rng)


def with_memory(state: TrainState, layout: StateLayout, shape: Sequence[int], dtype: Any
                ) -> tuple[TrainState, StateLayout]:
    """The state with a zero memory [layers, B, ...] (batch rows sharded like the batch, over data x fsdp, so
    row b's memory lives where row b's data does), and the layout that knows it."""
    sharding = NamedSharding(layout.mesh, P(None, shd.BATCH_AXES))
    memory = jax.jit(lambda: jnp.zeros(tuple(shape), dtype), out_shardings=sharding)()
    shardings = layout.shardings.replace(memory=sharding)
    abstract = layout.abstract.replace(memory=jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding))
    return state.replace(memory=memory), dataclasses.replace(layout, shardings=shardings, abstract=abstract)
