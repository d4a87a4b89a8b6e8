"""What every model family shares: dtype names, host-side input validation, parameter counting, unboxing."""
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
AUTO_DTYPE = "auto"  # config.model.dtype's default: bfloat16 compute on GPU / TPU, float32 on CPU
MIXED_PRECISION_BACKENDS = ("gpu", "tpu")


def to_dtype(name_or_dtype):
    """A dtype name of a model config -> the jnp dtype. 'auto' is bfloat16 on GPU and TPU (their matrix units'
    type; params stay float32 and softmax, norms and losses compute in float32) and float32 on CPU, where bfloat16
    matmuls are emulated and slower."""
    if isinstance(name_or_dtype, str):
        if name_or_dtype == AUTO_DTYPE:
            return jnp.bfloat16 if jax.default_backend() in MIXED_PRECISION_BACKENDS else jnp.float32
        if name_or_dtype not in DTYPES:
            raise ValueError(f"dtype {name_or_dtype!r} is not one of {sorted(DTYPES) + [AUTO_DTYPE]}")
        return DTYPES[name_or_dtype]
    return name_or_dtype


def check_length(name: str, length: int, max_positions: int):
    """Static check (runs at trace time, so also under jit): a sequence longer than the position table."""
    if length > max_positions:
        raise ValueError(f"{name} has sequence length {length} but the model's max_position_embeddings is "
                         f"{max_positions}; shorten the inputs or raise max_position_embeddings")


def check_token_ids(name: str, ids, vocab_size: int):
    """Value check on concrete (host or eager) ids; under jit ids are tracers and the host checks them."""
    if isinstance(ids, jax.core.Tracer):
        return
    ids = np.asarray(ids)
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        where = tuple(int(i) for i in np.argwhere(ids == bad)[0])
        raise ValueError(f"{name} contains token id {bad} at index {where}, outside the vocabulary "
                         f"[0, {vocab_size}); check the tokenizer matches the model's vocab_size")


def count_params(params) -> int:
    """Parameters in a tree of arrays or shapes."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def unbox(tree):
    """Plain arrays (or shapes) from `model.init` output's nn.Partitioned boxes, without applying the sharding
    constraints that nn.unbox would (the state is placed by jit's out_shardings instead)."""
    return jax.tree_util.tree_map(lambda x: x.value if isinstance(x, meta.AxisMetadata) else x,
                                  tree, is_leaf=lambda x: isinstance(x, meta.AxisMetadata))
