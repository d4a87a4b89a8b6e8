"""Mesh, logical-axis rules and host-local <-> global arrays.

Parallelism is configuration: a 3-axis mesh ('data', 'fsdp', 'tensor') plus one table that maps the
logical names used by the models (`embed`, `heads`, `vocab`, ...) onto mesh axes. Changing the
parallelism never touches model code.

Dimensions that a mesh axis does not divide (e.g. a 30522-token vocabulary over tensor=4) are
*replicated* along that dimension with a logged warning instead of crashing: a model must load on
any mesh, and the cost (one replicated matrix) is visible in the log. Pass `strict=True` to
`logical_to_mesh_shardings` to get an error instead.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("activation_batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("length", None),
    ("kv", None),
    ("layers", None),
    ("activation_length", None),
    ("activation_embed", None),
)


def merge_rules(overrides: Sequence = (), base: Sequence = DEFAULT_RULES) -> tuple[tuple[str, Any], ...]:
    """`base` with (logical name, mesh axes) pairs of `overrides` laid over it (config.mesh.logical_axis_rules): a
    name already in the table gets the new mesh axes, a new name is appended. Mesh axes must be among MESH_AXES."""
    rules = dict(base)
    for entry in overrides:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ValueError(f"config.mesh.logical_axis_rules: {entry!r} is not a (logical name, mesh axes) pair")
        name, axes = entry
        names = axes if isinstance(axes, (tuple, list)) else (axes,)
        unknown = [a for a in names if a is not None and a not in MESH_AXES]
        if unknown:
            raise ValueError(f"config.mesh.logical_axis_rules: {name!r} -> {axes!r}: {unknown} are not mesh axes "
                             f"{MESH_AXES}")
        rules[name] = tuple(axes) if isinstance(axes, list) else axes
    return tuple(rules.items())


def mesh_and_rules(mesh_config) -> tuple[Mesh, tuple]:
    """A config's mesh section -> (mesh, logical-axis rules)."""
    mesh = make_mesh(mesh_config["data"], mesh_config["fsdp"], mesh_config["tensor"])
    return mesh, merge_rules(mesh_config.get("logical_axis_rules", ()) or ())


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; -1 means 'all remaining devices' (at most one axis)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def make(self, devices: Sequence[jax.Device] | None = None) -> Mesh:
        return make_mesh(self.data, self.fsdp, self.tensor, devices=devices)


def resolve_mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
    """Fills in the -1 entry and checks that the sizes use exactly `num_devices` devices."""
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    bad = {k: v for k, v in sizes.items() if v == 0 or v < -1}
    if bad:
        raise ValueError(f"mesh sizes must be positive or -1, got {bad}")
    rest = [k for k, v in sizes.items() if v == -1]
    if len(rest) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {rest} in {sizes}")
    known = math.prod(v for v in sizes.values() if v != -1)
    if rest:
        if num_devices % known:
            raise ValueError(
                f"mesh sizes {sizes}: the fixed axes ({known} devices) do not divide the "
                f"{num_devices} available devices")
        sizes[rest[0]] = num_devices // known
    elif known != num_devices:
        raise ValueError(
            f"mesh sizes {sizes} need {known} devices but {num_devices} are available; "
            "use -1 on one axis or pass `devices=`")
    return sizes["data"], sizes["fsdp"], sizes["tensor"]


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh laid out along the physical topology (TPU).

    Axes are `AxisType.Auto` (jax.make_mesh defaults to Explicit since 0.7): shardings are chosen by
    jit's in/out shardings and logical constraints, which is what Flax Linen's partitioning uses.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(data, fsdp, tensor, len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def _leaf_is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def logical_partition_specs(tree: Any) -> Any:
    """Tree of logical PartitionSpecs (e.g. P('embed', 'mlp')) from boxed params; plain arrays -> P()."""
    return nn.get_partition_spec(tree)


def _fit_spec_to_shape(spec: P, shape: Sequence[int], mesh: Mesh, where: str, strict: bool) -> P:
    """Drops mesh axes that do not divide their dimension (replicating that dimension)."""
    fitted = []
    for dim, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            fitted.append(None)
            continue
        names = axes if isinstance(axes, tuple) else (axes,)
        size = math.prod(mesh.shape[a] for a in names)
        if shape[dim] % size:
            msg = (f"{where}: dimension {dim} of shape {tuple(shape)} is not divisible by mesh "
                   f"axes {names} (size {size})")
            if strict:
                raise ValueError(msg)
            log.warning("%s; replicating that dimension", msg)
            fitted.append(None)
        else:
            fitted.append(axes)
    while fitted and fitted[-1] is None:   # P('fsdp', None) == P('fsdp'): keep the short form
        fitted.pop()
    return P(*fitted)


def logical_to_mesh_shardings(tree: Any, mesh: Mesh, rules: Sequence = DEFAULT_RULES,
                              strict: bool = False) -> Any:
    """NamedShardings for a tree of boxed (nn.Partitioned) arrays or ShapeDtypeStructs.

    Unboxed leaves are replicated. Dimensions a mesh axis does not divide are replicated with a
    warning (or an error naming the parameter if `strict`).
    """
    rules = tuple(rules)

    def one(path, leaf):
        where = jax.tree_util.keystr(path)
        if _leaf_is_box(leaf):
            mesh_spec = nn.logical_to_mesh_axes(leaf.get_partition_spec(), rules)
            shape = leaf.value.shape
        elif hasattr(leaf, "shape"):
            mesh_spec, shape = P(), leaf.shape
        else:
            return None
        unknown = [a for axes in mesh_spec if axes is not None
                   for a in (axes if isinstance(axes, tuple) else (axes,)) if a not in mesh.shape]
        if unknown:
            raise ValueError(f"{where}: rules map to mesh axes {unknown} that mesh {dict(mesh.shape)} lacks")
        return NamedSharding(mesh, _fit_spec_to_shape(mesh_spec, shape, mesh, where, strict))

    return jax.tree_util.tree_map_with_path(one, tree, is_leaf=_leaf_is_box)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over ('data', 'fsdp'); other dimensions replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Sequence = DEFAULT_RULES,
                 constrain_activations: bool = True) -> Iterator[None]:
    """Logical rules in scope and, with `constrain_activations`, the mesh too (jax.set_mesh), so that
    nn.with_logical_constraint inside models takes effect. Without the mesh those constraints are
    no-ops and XLA propagates shardings from the jit in/out shardings alone.

    Caveat (flax 0.12.8): under a mesh, flax.linen.DenseGeneral with multi-dimensional `features`
    and a logically partitioned kernel_init fails ("only valid for values of rank at least 3"): it
    unboxes the flat rank-2 kernel with the rank-3 names, and Flax re-runs the initialiser under
    eval_shape on every apply to check shapes. Use a kernel created in its final shape instead.
    """
    with contextlib.ExitStack() as stack:
        if constrain_activations:
            stack.enter_context(jax.set_mesh(mesh))
        stack.enter_context(nn.logical_axis_rules(tuple(rules)))
        yield


def host_local_to_global(batch: Mapping[str, Any], mesh: Mesh,
                         sharding: NamedSharding | None = None) -> dict[str, jax.Array]:
    """Turns this process's slice of the batch into global arrays sharded along the batch axis.

    Each process passes only the rows it loaded (B_global / process_count of them); with one process
    this is a plain device_put with the batch sharding.
    """
    sharding = sharding or batch_sharding(mesh)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch[{key!r}] is a scalar; every batch entry needs a leading batch dimension")
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


def global_to_host_local(tree: Any, mesh: Mesh, spec: P = P(BATCH_AXES)) -> Any:
    """Numpy copy of this process's rows of batch-sharded global arrays (inverse of the above).

    With one process this is the whole array.
    """
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return jax.tree_util.tree_map(np.asarray, tree)
    local = multihost_utils.global_array_to_host_local_array(tree, mesh, spec)
    return jax.tree_util.tree_map(np.asarray, local)


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None) -> bool:
    """Joins a multi-process run if one is configured; returns True if running multi-process.

    Must run before any other JAX call. With no arguments it initialises only where JAX can detect
    the cluster by itself (Cloud TPU VMs, or JAX_COORDINATOR_ADDRESS set); otherwise it is a no-op
    single-process run. CPU processes talk through gloo collectives (needed for the CPU tests).
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    explicit = any(a is not None for a in (coordinator_address, num_processes, process_id))
    if not explicit:
        try:
            from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm
        except ImportError:  # private API moved: fall back to the env var only
            running_in_cloud_tpu_vm = False
        if not (running_in_cloud_tpu_vm or os.environ.get("JAX_COORDINATOR_ADDRESS")):
            return False
    if num_processes == 1:
        return False
    # Only affects the CPU client; harmless on TPU/GPU.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return jax.process_count() > 1


def initialize_from_config(distributed) -> bool:
    """`config.distributed` of a pretraining / fine-tuning config -> maybe_initialize_distributed."""
    if not (distributed.initialize or distributed.coordinator_address):
        return False
    return maybe_initialize_distributed(
        distributed.coordinator_address or None, distributed.num_processes or None,
        None if distributed.process_id < 0 else distributed.process_id)
