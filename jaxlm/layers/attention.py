"""Multi-head attention: self or cross, boolean masks, an additive bias hook, and a KV cache for decoding.

The bias hook (`bias`, broadcastable to [batch, heads, q_len, kv_len]) is where T5's relative position buckets
and XLNet's relative encodings come in; masks come from `jaxlm.layers.masks`.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

NEG_INF = -1e10  # finite, so fully-masked rows (padding queries) give a uniform softmax instead of NaN


class MultiHeadAttention(nn.Module):
    num_heads: int
    head_dim: int
    use_bias: bool = True
    scale_logits: bool = True  # T5 folds 1/sqrt(d) into its initialisation and sets this False
    dropout_rate: float = 0.0
    init_stddev: float = 0.02
    out_init_stddev: float | None = None
    attention_impl: str = "xla"  # "xla" (einsum) or "dot_product" (jax.nn.dot_product_attention, fused on GPU/TPU)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def _dense_in(self, name):
        return nn.DenseGeneral(
            (self.num_heads, self.head_dim), use_bias=self.use_bias, dtype=self.dtype,
            param_dtype=self.param_dtype, name=name,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev),
                                                     ("embed", "heads", "kv")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")))

    @nn.compact
    def __call__(self, inputs_q_BxQxD, inputs_kv_BxKxD=None, *, mask=None, bias=None,
                 deterministic: bool = True, decode: bool = False):
        self_attention = inputs_kv_BxKxD is None
        inputs_kv_BxKxD = inputs_q_BxQxD if self_attention else inputs_kv_BxKxD
        features = inputs_q_BxQxD.shape[-1]
        q_BxQxHxK = self._dense_in("query")(inputs_q_BxQxD)
        k_BxKxHxK = self._dense_in("key")(inputs_kv_BxKxD)
        v_BxKxHxK = self._dense_in("value")(inputs_kv_BxKxD)
        heads_axes = ("activation_batch", "activation_length", "activation_heads", "kv")
        q_BxQxHxK = nn.with_logical_constraint(q_BxQxHxK, heads_axes)
        k_BxKxHxK = nn.with_logical_constraint(k_BxKxHxK, heads_axes)
        v_BxKxHxK = nn.with_logical_constraint(v_BxKxHxK, heads_axes)

        if decode and self_attention:
            k_BxKxHxK, v_BxKxHxK, mask = self._update_cache(k_BxKxHxK, v_BxKxHxK, mask)

        if self.scale_logits:
            q_BxQxHxK = q_BxQxHxK / jnp.sqrt(self.head_dim).astype(self.dtype)
        use_dropout = self.dropout_rate > 0.0 and not deterministic
        if self.attention_impl == "dot_product" and not use_dropout:
            out_BxQxHxK = jax.nn.dot_product_attention(
                q_BxQxHxK, k_BxKxHxK, v_BxKxHxK,
                bias=None if bias is None else bias.astype(self.dtype), mask=mask, scale=1.0)
        elif self.attention_impl in ("xla", "dot_product"):
            logits_BxHxQxK = jnp.einsum("bqhd,bkhd->bhqk", q_BxQxHxK, k_BxKxHxK).astype(jnp.float32)
            if bias is not None:
                logits_BxHxQxK = logits_BxHxQxK + bias.astype(jnp.float32)
            if mask is not None:
                logits_BxHxQxK = jnp.where(mask, logits_BxHxQxK, NEG_INF)
            weights = jax.nn.softmax(logits_BxHxQxK, axis=-1).astype(self.dtype)
            if use_dropout:
                weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
            out_BxQxHxK = jnp.einsum("bhqk,bkhd->bqhd", weights, v_BxKxHxK)
        else:
            raise ValueError(f"attention_impl must be 'xla' or 'dot_product', got {self.attention_impl!r}")

        out_std = self.out_init_stddev if self.out_init_stddev is not None else self.init_stddev
        return nn.DenseGeneral(
            features, axis=(-2, -1), use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            name="out",
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(out_std), ("heads", "kv", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)))(out_BxQxHxK)

    def _update_cache(self, k_BxTxHxK, v_BxTxHxK, mask):
        """Writes this call's keys/values at `cache_index` and attends over the whole cache.

        The first call (during `init`) only allocates the cache, sized by the inputs given to init
        (batch, max_decode_length). Later calls may feed one token or a whole prompt (prefill).
        """
        initialised = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k_BxTxHxK.shape, k_BxTxHxK.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v_BxTxHxK.shape, v_BxTxHxK.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialised:
            return k_BxTxHxK, v_BxTxHxK, mask
        steps = k_BxTxHxK.shape[1]
        max_length = cached_key.value.shape[1]
        index = cache_index.value
        keys = jax.lax.dynamic_update_slice(cached_key.value, k_BxTxHxK.astype(cached_key.value.dtype),
                                            (0, index, 0, 0))
        values = jax.lax.dynamic_update_slice(cached_value.value, v_BxTxHxK.astype(cached_value.value.dtype),
                                              (0, index, 0, 0))
        cached_key.value, cached_value.value = keys, values
        cache_index.value = index + steps
        q_pos = index + jnp.arange(steps)[:, None]
        causal = (jnp.arange(max_length)[None, :] <= q_pos)[None, None]
        mask = causal if mask is None else (mask & causal)
        return keys, values, mask
