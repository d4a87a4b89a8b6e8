"""Multi-head attention: self or cross, boolean masks, an additive bias hook, and a KV cache for decoding.

The bias hook (`bias`, broadcastable to [batch, heads, q_len, kv_len]) is where T5's relative position buckets
and XLNet's relative encodings come in; masks come from `jaxlm.layers.masks`.

Decode mode (`decode=True`, the 'cache' collection):
- self-attention keeps a KV cache of max_decode_length positions (`_update_cache`), stored heads-major:
  `cached_key` / `cached_value` are [B, H, S, K] (batch, heads, cache slots, head dim), and the einsums read
  them as "bhkd". The einsums batch over (b, h), so a [B, S, H, K] cache made XLA CPU copy every layer's whole
  K and V into [B, H, S, K] on every step: about 40% of a batch-16 GPT-2 small step (benchmarks/RESULTS.md).
  Only the call's new keys/values ([B, T, H, K], T = 1 per generated token) are transposed now. Batch stays
  the leading axis (second after the layers axis when layers are scanned), so beam search reorders rows as
  before. Outside decode mode nothing changes: keys/values stay [B, K, H, K] ("bkhd");
- cross-attention (`cross_attention=True`) keeps the encoder's projected keys/values: a call that passes
  `inputs_kv` (the encoder outputs) computes and stores them, a call with `inputs_kv=None` reads them back, so
  an encoder-decoder projects its encoder outputs once per sequence, not once per generated token. They are
  stored heads-major too, [B, H, S, K] (`cross_key` / `cross_value`): 1.2-1.4x T5-small decoding at batch 16.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.attention_kernel import EINSUM, choose_kernel, fused_attention

NEG_INF = -1e10  # finite, so fully-masked rows (padding queries) give a uniform softmax instead of NaN


class HeadsProjection(nn.Module):
    """[B,T,D] -> [B,T,H,K] (`to_heads`) or [B,T,H,K] -> [B,T,D], kernel stored in its natural 3-D shape.

    (nn.DenseGeneral builds a flat 2-D kernel and re-runs logically-partitioned initialisers on it inside a
    mesh, which fails for 3-D axis names; an explicit einsum keeps one named axis per dimension.)
    """
    num_heads: int
    head_dim: int
    features: int
    to_heads: bool = True
    use_bias: bool = True
    init_stddev: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        if self.to_heads:
            shape, axes = (self.features, self.num_heads, self.head_dim), ("embed", "heads", "kv")
            bias_shape, bias_axes, equation = (self.num_heads, self.head_dim), ("heads", "kv"), "btd,dhk->bthk"
        else:
            shape, axes = (self.num_heads, self.head_dim, self.features), ("heads", "kv", "embed")
            bias_shape, bias_axes, equation = (self.features,), ("embed",), "bthk,hkd->btd"
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), axes),
                            shape, self.param_dtype)
        y = jnp.einsum(equation, x.astype(self.dtype), jnp.asarray(kernel, self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, bias_axes), bias_shape,
                              self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)
        return y


class MultiHeadAttention(nn.Module):
    num_heads: int
    head_dim: int
    use_bias: bool = True
    scale_logits: bool = True  # T5 folds 1/sqrt(d) into its initialisation and sets this False
    dropout_rate: float = 0.0
    init_stddev: float = 0.02
    out_init_stddev: float | None = None
    query_init_stddev: float | None = None  # T5 folds 1/sqrt(head_dim) into the query initialisation
    cross_attention: bool = False  # attends to `inputs_kv` (encoder outputs); caches their K/V in decode mode
    attention_impl: str = "auto"  # auto | cudnn | dot_product | xla: jaxlm.layers.attention_kernel
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs_q_BxQxD, inputs_kv_BxKxD=None, *, mask=None, bias=None,
                 deterministic: bool = True, decode: bool = False):
        self_attention = inputs_kv_BxKxD is None and not self.cross_attention
        features = inputs_q_BxQxD.shape[-1]

        def project(name, x, stddev=self.init_stddev):
            return HeadsProjection(self.num_heads, self.head_dim, features, use_bias=self.use_bias,
                                   init_stddev=stddev, dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)

        query_std = self.query_init_stddev if self.query_init_stddev is not None else self.init_stddev
        heads_axes = ("activation_batch", "activation_length", "activation_heads", "kv")
        q_BxQxHxK = nn.with_logical_constraint(project("query", inputs_q_BxQxD, query_std), heads_axes)
        # k / v as the einsums read them: subscripts kv = "bkhd" ([B,K,H,K], as projected) or "bhkd" ([B,H,S,K],
        # the heads-major caches)
        if self.cross_attention and decode:
            k_BxHxSxK, v_BxHxSxK = self._cached_cross_kv(project, inputs_kv_BxKxD)
            kv, k, v = "bhkd", k_BxHxSxK, v_BxHxSxK
        else:
            if inputs_kv_BxKxD is None and self.cross_attention:
                raise ValueError(f"{self.name}: cross-attention needs inputs_kv (the encoder outputs) outside "
                                 "decode mode")
            inputs_kv_BxKxD = inputs_q_BxQxD if self_attention else inputs_kv_BxKxD
            k_BxKxHxK = nn.with_logical_constraint(project("key", inputs_kv_BxKxD), heads_axes)
            v_BxKxHxK = nn.with_logical_constraint(project("value", inputs_kv_BxKxD), heads_axes)
            kv, k, v = "bkhd", k_BxKxHxK, v_BxKxHxK
            if decode and self_attention:
                k_BxHxSxK, v_BxHxSxK, mask = self._update_cache(k_BxKxHxK, v_BxKxHxK, mask)
                kv, k, v = "bhkd", k_BxHxSxK, v_BxHxSxK

        if self.scale_logits:
            q_BxQxHxK = q_BxQxHxK / jnp.sqrt(self.head_dim).astype(self.dtype)
        use_dropout = self.dropout_rate > 0.0 and not deterministic
        kernel = choose_kernel(self.attention_impl, name=self.name, dtype=self.dtype, head_dim=self.head_dim,
                               q_len=q_BxQxHxK.shape[1], k_len=k.shape[2 if kv == "bhkd" else 1],
                               dropout=use_dropout, decode=decode, has_bias=bias is not None,
                               training=not deterministic)
        if kernel != EINSUM:
            if kv == "bhkd":  # it takes [B,S,H,K]; on CPU XLA folds this swap into its dots (as fast as 'xla')
                k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
            out_BxQxHxK = fused_attention(kernel, q_BxQxHxK, k, v, mask=mask, bias=bias, scale=1.0)
        else:
            logits_BxHxQxK = jnp.einsum(f"bqhd,{kv}->bhqk", q_BxQxHxK, k).astype(jnp.float32)
            if bias is not None:
                logits_BxHxQxK = logits_BxHxQxK + bias.astype(jnp.float32)
            if mask is not None:
                logits_BxHxQxK = jnp.where(mask, logits_BxHxQxK, NEG_INF)
            weights = jax.nn.softmax(logits_BxHxQxK, axis=-1).astype(self.dtype)
            if use_dropout:
                weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
            out_BxQxHxK = jnp.einsum(f"bhqk,{kv}->bqhd", weights, v)

        out_std = self.out_init_stddev if self.out_init_stddev is not None else self.init_stddev
        return HeadsProjection(self.num_heads, self.head_dim, features, to_heads=False, use_bias=self.use_bias,
                               init_stddev=out_std, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="out")(out_BxQxHxK)

    def _cached_cross_kv(self, project, inputs_kv_BxSxD):
        """Decode-mode cross-attention keys/values [B,H,S,K] (heads-major, as the self-attention cache):
        projected and stored when the encoder outputs are given, read from the cache when they are None (every
        later step)."""
        if inputs_kv_BxSxD is not None:
            k_BxHxSxK = jnp.swapaxes(project("key", inputs_kv_BxSxD), 1, 2)
            v_BxHxSxK = jnp.swapaxes(project("value", inputs_kv_BxSxD), 1, 2)
            cached_key = self.variable("cache", "cross_key", jnp.zeros, k_BxHxSxK.shape, k_BxHxSxK.dtype)
            cached_value = self.variable("cache", "cross_value", jnp.zeros, v_BxHxSxK.shape, v_BxHxSxK.dtype)
            cached_key.value, cached_value.value = k_BxHxSxK, v_BxHxSxK
            return k_BxHxSxK, v_BxHxSxK
        if not self.has_variable("cache", "cross_key"):
            raise ValueError(f"{self.name}: decode mode with inputs_kv=None reads cached cross-attention keys/values,"
                             " but the cache has none; pass the encoder outputs on the first decoder call (and to "
                             "init)")
        return self.get_variable("cache", "cross_key"), self.get_variable("cache", "cross_value")

    def _update_cache(self, k_BxTxHxK, v_BxTxHxK, mask):
        """Writes this call's keys/values at `cache_index` and attends over the whole cache: returns the cache's
        keys and values [B,H,S,K] (heads-major, see the module docstring) and the mask with causality added.

        The first call (during `init`) only allocates the cache, sized by the inputs given to init
        (batch, max_decode_length). Later calls may feed one token or a whole prompt (prefill).
        """
        k_BxHxTxK, v_BxHxTxK = jnp.swapaxes(k_BxTxHxK, 1, 2), jnp.swapaxes(v_BxTxHxK, 1, 2)
        initialised = self.has_variable("cache", "cached_key")
        cached_key = self.variable("cache", "cached_key", jnp.zeros, k_BxHxTxK.shape, k_BxHxTxK.dtype)
        cached_value = self.variable("cache", "cached_value", jnp.zeros, v_BxHxTxK.shape, v_BxHxTxK.dtype)
        cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
        if not initialised:
            return k_BxHxTxK, v_BxHxTxK, mask
        steps = k_BxHxTxK.shape[2]
        max_length = cached_key.value.shape[2]
        index = cache_index.value
        k_BxHxSxK = jax.lax.dynamic_update_slice(cached_key.value, k_BxHxTxK.astype(cached_key.value.dtype),
                                                 (0, 0, index, 0))
        v_BxHxSxK = jax.lax.dynamic_update_slice(cached_value.value, v_BxHxTxK.astype(cached_value.value.dtype),
                                                 (0, 0, index, 0))
        cached_key.value, cached_value.value = k_BxHxSxK, v_BxHxSxK
        cache_index.value = index + steps
        q_pos = index + jnp.arange(steps)[:, None]
        causal = (jnp.arange(max_length)[None, :] <= q_pos)[None, None]
        mask = causal if mask is None else (mask & causal)
        return k_BxHxSxK, v_BxHxSxK, mask
