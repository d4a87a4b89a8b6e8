"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") as a parameter transformation.

No model module changes: a targeted kernel W (attention [D, H, K] / [H, K, D], MLP [D, F] / [F, D], with a
leading layers axis when scanned) is replaced in the forward pass by W + (alpha / rank) * A @ B, A [in, r] and
B [r, out] over W's flattened in / out axes. The task model is applied to `merge(base, trainable)`, so gradients
reach only the trainable tree and the optimizer state exists only for it:

    frozen     params['backbone']                               (the base; never updated, no optimizer state)
    trainable  {'head': ..., 'backbone': {..module..: {'lora_a', 'lora_b'}}}   (the task head + the adapters)

`train_also` (as PEFT's `modules_to_save`) names backbone modules that train in full besides, e.g. BERT's
`pooler`, which the classification head reads: their params sit in the trainable tree at their own path and
replace the base's in the merge (the base keeps its copy; the checkpoints hold the trained one).

The adapters sit in the trainable tree at their kernel's module path, so layer-wise learning-rate decay, weight
decay masks and the logical-axis shardings treat them like the kernel they adapt: A takes the kernel's leading
(layers) and first input axis names, B its first output axis name (a flattened [H * K] axis shards as `heads`).
B starts at zero, so the adapted model starts equal to the base.

Why not a library: jax-lorax (the JAX LoRA transform) runs on qax's jaxpr interpreter, whose internals break
across JAX releases and whose last release predates this JAX; flax.nnx.LoRA is NNX-only (these models are
Linen). A tree transformation is a few dozen lines and composes with jit, scan and sharding as they are.

A LoRA run's checkpoints store the trainable tree only; the frozen base is written once beside them
(`WORKDIR/lora_base`, `save_base`) and read back (`read_base`) by resume, evaluate, predict, generate and export,
which merge it with the adapters (`merged_params`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm import sharding as shd
from jaxlm.train.state import StateLayout, TrainState, abstract_train_state
from jaxlm.train.step import make_train_step

BASE_DIR = "lora_base"  # the frozen base of a LoRA run, written once in its workdir
FROZEN_KEY = "backbone"  # the task model's subtree that stays frozen
ADAPTER_NAMES = ("lora_a", "lora_b")
ATTENTION_MODULES = ("attention", "cross_attention")
# target name -> (module names it matches, their parent module names, number of input axes of the kernel,
# the kernel's rank without a layers axis)
TARGETS = {
    "query": (("query",), ATTENTION_MODULES, 1, 3),
    "key": (("key",), ATTENTION_MODULES, 1, 3),
    "value": (("value",), ATTENTION_MODULES, 1, 3),
    "out": (("out",), ATTENTION_MODULES, 2, 3),  # the attention output projection
    "relative": (("relative",), ATTENTION_MODULES, 1, 3),  # XLNet's positional key projection
    "mlp_in": (("wi", "wi_0", "wi_1"), ("mlp",), 1, 2),  # T5 v1.1's gated pair included
    "mlp_out": (("wo",), ("mlp",), 1, 2),
}
GROUPS = {"attention": ("query", "key", "value", "out"), "mlp": ("mlp_in", "mlp_out"), "all": tuple(TARGETS)}


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """config.lora: rank 0 = off (full fine-tuning); alpha / rank scales the update; targets: comma-separated
    names of TARGETS or GROUPS; train_also: comma-separated backbone modules (a module name on the param's path,
    e.g. `pooler`, `embeddings_norm`, or a '/'-joined run of them, `encoder/layers_1/mlp_norm`) trained in full
    besides the adapters and the head, as PEFT's modules_to_save."""
    rank: int = 0
    alpha: float = 16.0
    targets: str = "query,value"
    train_also: str = ""

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"config.lora.rank={self.rank} must be >= 0 (0 = no LoRA)")
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"config.lora.alpha={self.alpha} must be a finite number > 0")
        self.target_names()  # validates

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | Any | None) -> "LoraConfig":
        """From config.lora (a ConfigDict or dict; None or missing in an older run's saved config: off)."""
        if cfg is None:
            return cls()
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config.lora keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def target_names(self) -> tuple[str, ...]:
        """The targets, groups expanded, in TARGETS order; an unknown name is an error listing the valid ones."""
        names = [n.strip() for n in str(self.targets).split(",") if n.strip()]
        if not names:
            raise ValueError(f"config.lora.targets={self.targets!r} names no target; valid: {valid_targets()}")
        chosen = set()
        for name in names:
            if name in GROUPS:
                chosen.update(GROUPS[name])
            elif name in TARGETS:
                chosen.add(name)
            else:
                raise ValueError(f"config.lora.targets: unknown target {name!r}; valid: {valid_targets()}")
        return tuple(t for t in TARGETS if t in chosen)


    def train_also_names(self) -> tuple[str, ...]:
        return tuple(n.strip().strip("/") for n in str(self.train_also).split(",") if n.strip().strip("/"))


def valid_targets() -> str:
    return ", ".join(list(GROUPS) + list(TARGETS))


def _on_path(name: str, path: tuple[str, ...]) -> bool:
    """Whether `name` ('pooler', 'encoder/layers_1') is a run of module names on the param path (the leaf's own
    name, 'kernel' / 'scale', excluded)."""
    parts, modules = tuple(name.split("/")), path[:-1]
    return any(modules[i:i + len(parts)] == parts for i in range(len(modules) - len(parts) + 1))


def find_train_also(frozen: Any, config: LoraConfig, targets: Sequence[Target] = ()) -> list[tuple[str, ...]]:
    """The param paths of `frozen` that `config.train_also` names (trained in full besides the adapters). A name
    that matches nothing, or that takes in a kernel LoRA adapts, is an error."""
    names = config.train_also_names()
    if not names:
        return []
    paths = [tuple(str(k) for k in p) for p in flatten_dict(frozen)]
    adapted = {t.path + ("kernel",) for t in targets}
    found = []
    for name in names:
        hits = [p for p in paths if _on_path(name, p)]
        if not hits:
            top = sorted({p[0] for p in paths if len(p) > 1})
            raise ValueError(f"config.lora.train_also: {name!r} names no module of the backbone (its modules: "
                             f"{', '.join(top)})")
        clash = sorted("/".join(p) for p in hits if p in adapted)
        if clash:
            raise ValueError(f"config.lora.train_also: {name!r} takes in {clash[0]}, which config.lora.targets "
                             "adapts: a kernel is adapted or trained in full, not both")
        found.extend(p for p in hits if p not in found)
    return found


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted kernel: its module path in the frozen tree, shape, leading (layers) axes and input axes."""
    path: tuple[str, ...]
    shape: tuple[int, ...]
    num_lead: int
    num_in: int

    @property
    def in_size(self) -> int:
        return math.prod(self.shape[self.num_lead:self.num_lead + self.num_in])

    @property
    def out_size(self) -> int:
        return math.prod(self.shape[self.num_lead + self.num_in:])

    def adapter_shapes(self, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        lead = self.shape[:self.num_lead]
        return lead + (self.in_size, rank), lead + (rank, self.out_size)


def _match(path: tuple[str, ...], names: Sequence[str]) -> tuple[str, int, int] | None:
    if len(path) < 3 or path[-1] != "kernel":
        return None
    module, parent = path[-2], path[-3]
    for name in names:
        modules, parents, num_in, rank = TARGETS[name]
        if module in modules and parent in parents:
            return name, num_in, rank
    return None


def find_targets(frozen: Any, config: LoraConfig) -> list[Target]:
    """The kernels of `frozen` (a backbone params tree: arrays or ShapeDtypeStructs) that `config.targets` adapts.
    None found is an error naming the targets (e.g. 'relative' on a model without XLNet's attention)."""
    names = config.target_names()
    found = []
    for path, leaf in flatten_dict(frozen).items():
        path = tuple(str(k) for k in path)
        hit = _match(path, names)
        if hit is None:
            continue
        name, num_in, rank = hit
        shape = tuple(leaf.shape)
        if len(shape) < rank:
            raise ValueError(f"config.lora.targets: {'/'.join(path)} ({name}) has shape {shape}; expected a kernel "
                             f"of rank {rank} (or {rank + 1} with a layers axis)")
        found.append(Target(path[:-1], shape, len(shape) - rank, num_in))
    if not found:
        raise ValueError(f"config.lora.targets={config.targets!r} matches no kernel of this model (targets "
                         f"{names}; valid: {valid_targets()})")
    return found


def adapter_axes(target: Target, kernel_axes: Sequence[str | None] | None) -> tuple[tuple, tuple]:
    """Logical axis names of (A, B) from the kernel's: leading axes kept, A's input axis is the kernel's first
    input axis, B's output axis its first output axis; the rank axis is unsharded."""
    if kernel_axes is None or len(kernel_axes) != len(target.shape):
        kernel_axes = (None,) * len(target.shape)
    lead = tuple(kernel_axes[:target.num_lead])
    return (lead + (kernel_axes[target.num_lead], None),
            lead + (None, kernel_axes[target.num_lead + target.num_in]))


def init_adapters(rng: jax.Array, targets: Sequence[Target], config: LoraConfig,
                  kernel_axes: Mapping[tuple[str, ...], Sequence] | None = None, dtype=jnp.float32) -> dict:
    """Boxed (nn.Partitioned) adapters {module path: {'lora_a', 'lora_b'}} as a nested dict. A is uniform in
    +-1/sqrt(in) (PEFT's kaiming-uniform default), B zero: the adapted model equals the base at step 0."""
    out = {}
    for i, t in enumerate(targets):
        a_shape, b_shape = t.adapter_shapes(config.rank)
        bound = 1.0 / math.sqrt(t.in_size)
        a = jax.random.uniform(jax.random.fold_in(rng, i), a_shape, dtype, -bound, bound)
        b = jnp.zeros(b_shape, dtype)
        a_axes, b_axes = adapter_axes(t, (kernel_axes or {}).get(t.path))
        out[t.path + ("lora_a",)] = nn.Partitioned(a, names=a_axes)
        out[t.path + ("lora_b",)] = nn.Partitioned(b, names=b_axes)
    return unflatten_dict(out)


def adapter_paths(adapters: Any) -> list[tuple[str, ...]]:
    """The module paths that carry an adapter pair."""
    return sorted({tuple(str(k) for k in p[:-1]) for p in flatten_dict(adapters) if p[-1] in ADAPTER_NAMES})


def trained_paths(adapters: Any) -> list[tuple[str, ...]]:
    """The param paths of the trainable backbone tree that are not adapters: `train_also`'s, trained in full."""
    return sorted(tuple(str(k) for k in p) for p in flatten_dict(adapters) if p[-1] not in ADAPTER_NAMES)


def delta(lora_a, lora_b, kernel_shape: Sequence[int], scale: float, dtype=None):
    """(alpha / r) * A @ B in the kernel's shape (float32 accumulation)."""
    d = jnp.einsum("...ir,...ro->...io", jnp.asarray(lora_a, jnp.float32), jnp.asarray(lora_b, jnp.float32))
    return (scale * d).reshape(tuple(kernel_shape)).astype(dtype or jnp.float32)


def merge(frozen: Any, adapters: Any, config: LoraConfig) -> Any:
    """The frozen tree with every adapted kernel replaced by W + (alpha / r) A @ B, and every param trained in
    full (`train_also`: a non-adapter leaf of `adapters`) by its trained value; other leaves as they are. An
    adapter whose kernel is missing, or whose shapes do not fit it, is an error naming both shapes."""
    flat = flatten_dict(frozen)
    flat_adapters = flatten_dict(adapters)
    out = dict(flat)
    for path in trained_paths(adapters):
        if path not in flat or tuple(np.shape(flat[path])) != tuple(np.shape(flat_adapters[path])):
            raise ValueError(f"trained param {'/'.join(path)} {tuple(np.shape(flat_adapters[path]))} has no "
                             "param of its shape in the base params")
        out[path] = flat_adapters[path]
    for path in adapter_paths(adapters):
        key = tuple(path) + ("kernel",)
        if key not in flat:
            raise ValueError(f"LoRA adapter {'/'.join(path)} has no kernel {'/'.join(key)} in the base params")
        kernel = flat[key]
        a, b = flat_adapters[path + ("lora_a",)], flat_adapters[path + ("lora_b",)]
        lead = a.shape[:-2]
        if (tuple(kernel.shape[:len(lead)]) != tuple(lead) or b.shape[:-2] != lead or a.shape[-1] != b.shape[-2]
                or a.shape[-2] * b.shape[-1] != math.prod(kernel.shape[len(lead):])):
            raise ValueError(f"LoRA adapter {'/'.join(path)}: lora_a {tuple(a.shape)} x lora_b {tuple(b.shape)} does "
                             f"not fit the kernel {tuple(kernel.shape)}")
        out[key] = (jnp.asarray(kernel, jnp.float32)
                    + delta(a, b, kernel.shape, config.scale)).astype(kernel.dtype)
    return unflatten_dict(out)


def split(params: Mapping[str, Any]) -> tuple[Any, dict]:
    """Task-model params -> (frozen backbone, the rest: what trains besides the adapters)."""
    return params[FROZEN_KEY], {k: v for k, v in params.items() if k != FROZEN_KEY}


def full_params(frozen: Any, trainable: Mapping[str, Any], config: LoraConfig) -> dict:
    """The task model's params from the frozen backbone and the trainable tree (head + adapters)."""
    rest = {k: v for k, v in trainable.items() if k != FROZEN_KEY}
    return {**rest, FROZEN_KEY: merge(frozen, trainable.get(FROZEN_KEY, {}), config)}


def count_params(tree: Any) -> int:
    return int(sum(math.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def tree_bytes(tree: Any) -> int:
    return int(sum(math.prod(np.shape(x)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)
                   if hasattr(x, "dtype")))


# ---------------------------------------------------------------------------------------------------------------
# The frozen base on disk: written once per run

def base_dir(run_dir: str) -> epath.Path:
    return epath.Path(run_dir) / BASE_DIR


def save_base(run_dir: str, frozen: Any) -> None:
    """Writes the frozen base once (every process takes part; Orbax writes atomically)."""
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(base_dir(run_dir), {"params": frozen}, force=True)
        checkpointer.wait_until_finished()


def read_base(run_dir: str, target: Any = None) -> Any:
    """The frozen base of a LoRA run: onto `target`'s shardings (a tree of ShapeDtypeStruct with .sharding), or
    as numpy on this host without one."""
    path = base_dir(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the frozen base of the LoRA run {run_dir} (written when the run "
                                "started) is missing")
    with ocp.StandardCheckpointer() as checkpointer:
        if target is None:
            metadata = checkpointer.metadata(path).item_metadata["params"]
            host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=host), metadata)
            return jax.tree.map(np.asarray, checkpointer.restore(path, {"params": target})["params"])
        return checkpointer.restore(path, {"params": target})["params"]


# ---------------------------------------------------------------------------------------------------------------
# Training: the state of the trainable tree, the frozen base as a jit argument

@dataclasses.dataclass
class LoraTraining:
    """A LoRA fine-tuning run's pieces: the trainable state and its layout, the frozen base (sharded, never
    donated) and the task model's full-param shardings (for the predictor)."""
    config: LoraConfig
    state: TrainState
    layout: StateLayout
    frozen: Any
    param_shardings: Any
    mesh: Any
    rules: Sequence
    targets: list[Target]

    def merged(self, trainable: Any) -> dict:
        """The task model's params (adapters merged into the base) on the full model's shardings."""
        if not hasattr(self, "_merge_jit"):
            self._merge_jit = jax.jit(lambda f, t: full_params(f, t, self.config), out_shardings=self.param_shardings)
        with shd.mesh_context(self.mesh, self.rules):
            return self._merge_jit(self.frozen, trainable)

    def evaluator(self, evaluate: Callable[[Any], dict]) -> Callable[[Any], dict]:
        """evaluate(full params) -> evaluate(trainable params), as the loop calls it."""
        return lambda trainable: evaluate(self.merged(trainable))

    def jit_train_step(self, loss_fn, optimizer: optax.GradientTransformation, batch_sharding, *,
                       num_microbatches: int = 1, learning_rate_fn=None):
        """run(state, batch) -> (state, metrics), as train.jit_train_step: the same step builder, its loss taking
        the trainable tree and applying the model to the merged params; the base enters as an argument."""
        config = self.config

        def step(state, frozen, batch):
            def trainable_loss(trainable, b, rng):
                return loss_fn(full_params(frozen, trainable, config), b, rng)
            return make_train_step(trainable_loss, optimizer, num_microbatches=num_microbatches,
                                   learning_rate_fn=learning_rate_fn)(state, batch)

        frozen_shardings = jax.tree.map(lambda a: a.sharding, self.frozen)
        jitted = jax.jit(step, in_shardings=(self.layout.shardings, frozen_shardings, batch_sharding),
                         out_shardings=(self.layout.shardings, shd.replicated(self.mesh)), donate_argnums=0)

        def run(state, batch):
            with shd.mesh_context(self.mesh, self.rules):
                return jitted(state, self.frozen, batch)

        run.jitted = jitted
        return run


def _names(spec, ndim: int) -> tuple:
    names = tuple(spec) if spec is not None else ()
    return names + (None,) * (ndim - len(names))


def adapt(state: TrainState, layout: StateLayout, init_fn: Callable[[jax.Array], Any], config: LoraConfig,
          optimizer: optax.GradientTransformation, mesh, rules=shd.DEFAULT_RULES, *, run_dir: str | None = None,
          resume: bool = False) -> LoraTraining:
    """A full task-model state (backbone restored; built with `base_optimizer`, so no optimizer state) -> LoRA
    training: the trainable state with `optimizer`'s state for the adapters and head only.

    init_fn: the task model's init (`lambda rng: model.init(rng, **batch)`), traced for the kernels' logical axes.
    run_dir: where the frozen base is written once (a fresh run) or read back from (`resume`).
    """
    frozen, rest = split(state.params)
    targets = find_targets(frozen, config)
    specs = nn.get_partition_spec(jax.eval_shape(init_fn, jax.random.key(0))["params"])
    flat_specs = {tuple(str(k) for k in p): s for p, s in flatten_dict(specs[FROZEN_KEY]).items()}
    kernel_axes = {p[:-1]: tuple(s) for p, s in flat_specs.items() if p[-1] == "kernel"}
    rest_specs = {k: v for k, v in specs.items() if k != FROZEN_KEY}
    also = find_train_also(frozen, config, targets)  # backbone params trained in full (train_also)
    flat_frozen = {tuple(str(k) for k in p): v for p, v in flatten_dict(frozen).items()}
    adapter_key = jax.random.fold_in(state.rng, 0x10A)
    dtype = jax.tree.leaves(frozen)[0].dtype

    def boxed_trainable(rest_values, also_values):
        boxed_rest = jax.tree.map(lambda v, s: nn.Partitioned(v, names=_names(s, v.ndim)), rest_values, rest_specs,
                                  is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
        backbone = flatten_dict(init_adapters(adapter_key, targets, config, kernel_axes, dtype))
        for p, v in zip(also, also_values):
            backbone[p] = nn.Partitioned(v, names=_names(flat_specs.get(p), v.ndim))
        return {**boxed_rest, FROZEN_KEY: unflatten_dict(backbone)}

    also_values = [flat_frozen[p] for p in also]
    new_layout = abstract_train_state(lambda _: {"params": boxed_trainable(rest, also_values)}, optimizer, mesh,
                                      rules)

    def init(rest_values, also_values):
        trainable = nn.unbox(boxed_trainable(rest_values, also_values))
        return TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=optimizer.init(trainable),
                          rng=state.rng)

    new_state = jax.jit(init, out_shardings=new_layout.shardings)(rest, also_values)
    frozen_shardings = jax.tree.map(lambda a: a.sharding, frozen)
    if run_dir is not None:
        if resume:
            target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), frozen,
                                  frozen_shardings)
            frozen = read_base(run_dir, target)
        else:
            save_base(run_dir, frozen)
    return LoraTraining(config=config, state=new_state, layout=new_layout, frozen=frozen,
                        param_shardings=layout.shardings.params, mesh=mesh, rules=rules, targets=targets)


def trainable_shapes(params: Mapping[str, Any], config: LoraConfig) -> dict:
    """The trainable tree's ShapeDtypeStructs (head + adapters) from the task model's params or their shapes."""
    frozen, rest = split(params)
    adapters = {}
    targets = find_targets(frozen, config)
    flat_frozen = {tuple(str(k) for k in p): v for p, v in flatten_dict(frozen).items()}
    for t in targets:
        a_shape, b_shape = t.adapter_shapes(config.rank)
        dtype = flat_frozen[t.path + ("kernel",)].dtype
        adapters[t.path + ("lora_a",)] = jax.ShapeDtypeStruct(a_shape, dtype)
        adapters[t.path + ("lora_b",)] = jax.ShapeDtypeStruct(b_shape, dtype)
    for p in find_train_also(frozen, config, targets):
        adapters[p] = jax.ShapeDtypeStruct(np.shape(flat_frozen[p]), flat_frozen[p].dtype)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), rest)
    return {**shapes, FROZEN_KEY: unflatten_dict(adapters)}


def optimizer_params(params: Mapping[str, Any], config: LoraConfig) -> Any:
    """What the optimizer updates (make_optimizer's `params`, for layer-wise lr decay): the task model's params,
    or with LoRA the trainable tree."""
    return trainable_shapes(params, config) if config.enabled else params


def base_optimizer(optimizer: optax.GradientTransformation, config: LoraConfig) -> optax.GradientTransformation:
    """The optimizer to build the full model's state with: none (no state) when LoRA replaces it afterwards."""
    return optax.identity() if config.enabled else optimizer


def merged_params(trainable: Any, frozen: Any, config: LoraConfig, shardings: Any = None) -> dict:
    """A LoRA run's task-model params from its stored trainable tree and base: numpy on this host without
    `shardings`, else on them."""
    if shardings is None:
        return jax.tree.map(np.asarray, jax.jit(lambda f, t: full_params(f, t, config))(frozen, trainable))
    return jax.jit(lambda f, t: full_params(f, t, config), out_shardings=shardings)(frozen, trainable)
