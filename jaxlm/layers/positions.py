"""T5's relative position bias: the distance key - query, bucketed, looked up per head and added to the
attention logits through MultiHeadAttention's bias hook (computed once per stack, shared by its layers).

Buckets (Raffel et al. 2020, section 2.1; mesh-tensorflow's `_relative_position_bucket`): half of them are exact
distances 0..n/2-1, the other half grow logarithmically up to `max_distance`, beyond which all distances share the
last bucket. Bidirectional (encoder) stacks spend half the buckets on positive distances; causal (decoder) stacks
only see keys at or before the query, so they bucket -min(distance, 0).
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


def relative_position_bucket(relative_position, *, bidirectional: bool, num_buckets: int = 32,
                             max_distance: int = 128):
    """int32 bucket in [0, num_buckets) of each `key_position - query_position`, as Hugging Face / mesh TF compute
    it (float32 logarithm, truncated), so imported checkpoints see the same buckets."""
    relative_position = jnp.asarray(relative_position, jnp.int32)
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    log_ratio = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(max_distance / max_exact)
    if_large = max_exact + (log_ratio * (num_buckets - max_exact)).astype(jnp.int32)
    if_large = jnp.minimum(if_large, num_buckets - 1)
    return buckets + jnp.where(distance < max_exact, distance, if_large)


class RelativePositionBias(nn.Module):
    """(query positions [B|1, Q], key positions [B|1, K]) -> float32 bias [B|1, heads, Q, K].

    Positions (not indices) are used, so packed rows whose positions restart per example get each example's own
    distances. The table is `embedding` [num_buckets, num_heads] (Hugging Face's `relative_attention_bias`).
    """
    num_heads: int
    bidirectional: bool
    num_buckets: int = 32
    max_distance: int = 128
    init_stddev: float = 1.0
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, q_positions_BxQ, k_positions_BxK):
        table_NxH = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), (None, "heads")),
            (self.num_buckets, self.num_heads), self.param_dtype)
        relative_BxQxK = k_positions_BxK[:, None, :] - q_positions_BxQ[:, :, None]
        buckets_BxQxK = relative_position_bucket(relative_BxQxK, bidirectional=self.bidirectional,
                                                 num_buckets=self.num_buckets, max_distance=self.max_distance)
        bias_BxQxKxH = jnp.take(jnp.asarray(table_NxH, jnp.float32), buckets_BxQxK, axis=0)
        return jnp.transpose(bias_BxQxKxH, (0, 3, 1, 2))
