"""What every model family shares: dtype names, host-side input validation, parameter counting."""
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def to_dtype(name_or_dtype):
    if isinstance(name_or_dtype, str):
        if name_or_dtype not in DTYPES:
            raise ValueError(f"dtype {name_or_dtype!r} is not one of {sorted(DTYPES)}")
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


def count_params(abstract_params) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


LOOKUP_TABLES = ("position_embeddings", "token_type_embeddings")


def matmul_params(params) -> int:
    """Parameters that do matmul work per token, for the 6N FLOPs rule: everything but the position and
    token-type tables (pure lookups). The token table counts: tied to the output head, it is a matmul."""
    total = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if any(str(getattr(k, "key", k)) in LOOKUP_TABLES for k in path):
            continue
        total += int(np.prod(leaf.shape))
    return total
