"""Transformer-XL relative attention (Dai et al. 2019) as XLNet uses it (Yang et al. 2019): memory, two streams
and the relative segment encoding. Batch-major throughout ([B, ...]), unlike the authors' time-major code.

Keys and values are concat(memory, current segment): K = M + L positions. The score of query i and key j is

    (q_i + r_w_bias) . k_j                  content term ("ac" in the authors' code)
  + (q_i + r_r_bias) . r_{(M + i) - j}      position term ("bd"): r = sinusoid(relative distance) @ W_r
  + (q_i + r_s_bias) . seg_embed[s_ij]      segment term ("ef"), only with token types: s_ij = 1 when i and j
                                            have different token types (memory counts as type 0, as in HF)

times head_dim ** -0.5, then masked and softmaxed in float32.

The position term is computed against all R = K + L relative distances (K, K-1, ..., -L+1) and each query row
is then shifted so that column j holds distance (M + i) - j:
- the content stream (queries at 0..L-1) uses `rel_shift`, the authors' reshape trick (HF's rel_shift_bnij):
  reshape [.., L, R] -> [.., R, L], drop the first row, reshape to [.., L, R-1], keep K columns. Exact, no
  gather;
- the query stream, computed only at the P predicted positions, uses `rel_gather`, an exact gather of column
  L - pos_p + j (the reshape trick needs the queries at consecutive positions 0..L-1).

The two streams share every weight: the content stream h attends with itself visible, the query stream g (a
learned mask embedding at the predicted positions) sees the content but not its own token (its mask, from
perm_mask, decides). Masks are boolean, True = may attend (jaxlm's convention); see `xlnet_masks`.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers.attention import NEG_INF, HeadsProjection
from jaxlm.layers.attention_kernel import check_attention_impl

BIAS_NAMES = ("r_w_bias", "r_r_bias", "r_s_bias")
HEADS_AXES = ("activation_batch", "activation_length", "activation_heads", "kv")


def relative_positional_encoding(q_len: int, k_len: int, dim: int, *, clamp_len: int = -1, bi_data: bool = False,
                                 batch_size: int | None = None):
    """Sinusoids of the relative distances k_len, k_len - 1, ..., -q_len + 1 (R = k_len + q_len rows), float32.

    [1, R, dim] (the batch shares it), or with `bi_data` [B, R, dim]: the first half of the batch reads the
    distances forward, the second half backward (negated), as the authors' bidirectional data pipeline feeds
    each sequence both ways. clamp_len > 0 clips the distances to [-clamp_len, clamp_len].
    """
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))

    def encode(pos_R):
        if clamp_len > 0:
            pos_R = jnp.clip(pos_R, -clamp_len, clamp_len)
        angles = pos_R[:, None] * inv_freq[None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)

    fwd_R = jnp.arange(k_len, -q_len, -1, dtype=jnp.float32)
    if not bi_data:
        return encode(fwd_R)[None]
    if batch_size is None or batch_size % 2:
        raise ValueError(f"bi_data=True needs an even batch (its first half reads positions forward, the second "
                         f"half backward), got batch size {batch_size}")
    half = batch_size // 2
    fwd, bwd = encode(fwd_R), encode(-fwd_R)
    return jnp.concatenate([jnp.broadcast_to(fwd, (half,) + fwd.shape), jnp.broadcast_to(bwd, (half,) + bwd.shape)])


def rel_shift(x_BxNxLxR, k_len: int):
    """Position scores of queries 0..L-1 against R = K + L distances -> [B, N, L, K] with column j at distance
    (M + i) - j: the reshape trick (row i of the result starts at column L - i of row i of the input)."""
    b, n, length, r = x_BxNxLxR.shape
    x = x_BxNxLxR.reshape(b, n, r, length)[:, :, 1:]
    return x.reshape(b, n, length, r - 1)[..., :k_len]


def rel_gather(x_BxNxPxR, positions_BxP, q_len: int, k_len: int):
    """Position scores of P queries at `positions` (in 0..q_len-1) -> [B, N, P, K]: column q_len - pos + j,
    the distance (M + pos) - j. For positions 0..L-1 it equals `rel_shift` (tested)."""
    index_BxPxK = q_len - positions_BxP[:, :, None] + jnp.arange(k_len)[None, None, :]
    return jnp.take_along_axis(x_BxNxPxR, index_BxPxK[:, None], axis=-1)


def xlnet_masks(segment_ids_BxL, perm_mask_BxLxL=None, memory_length: int = 0):
    """(content-stream mask, query-stream mask), each [B, 1, L, M + L] bool, True = may attend; exactly HF's
    attn_mask_h (non_tgt_mask) and attn_mask_g.

    A key is hidden from query i when it is padding (segment id 0), belongs to another packed document
    (segment ids differ, i real), or perm_mask[b, i, j] > 0 (HF's convention: 1 = i may not see j). Memory is
    always visible. The content stream additionally always sees its own token (the diagonal); the query
    stream does not unless perm_mask allows it. Padding queries see every real token, as in HF.
    """
    b, length = segment_ids_BxL.shape
    padding_key = (segment_ids_BxL == 0)[:, None, :]
    other_document = (segment_ids_BxL != 0)[:, :, None] & (segment_ids_BxL[:, :, None] != segment_ids_BxL[:, None, :])
    blocked_BxLxL = padding_key | other_document
    if perm_mask_BxLxL is not None:
        blocked_BxLxL = blocked_BxLxL | (jnp.asarray(perm_mask_BxLxL) > 0)
    blocked_BxLxK = jnp.concatenate([jnp.zeros((b, length, memory_length), bool), blocked_BxLxL], axis=-1)
    own_token_LxK = jnp.concatenate([jnp.zeros((length, memory_length), bool), jnp.eye(length, dtype=bool)], axis=-1)
    mask_g = ~blocked_BxLxK
    mask_h = mask_g | own_token_LxK[None]
    return mask_h[:, None], mask_g[:, None]


def segment_differences(token_types_BxL, memory_length: int = 0):
    """[B, L, M + L] bool: query i and key j have different token types; memory keys count as type 0."""
    b = token_types_BxL.shape[0]
    keys_BxK = jnp.concatenate([jnp.zeros((b, memory_length), token_types_BxL.dtype), token_types_BxL], axis=1)
    return token_types_BxL[:, :, None] != keys_BxK[:, None, :]


def relative_biases(module: nn.Module, num_heads: int, head_dim: int, init_stddev: float, param_dtype) -> dict:
    """r_w_bias (content), r_r_bias (position), r_s_bias (segment), each [H, K]: created in `module`, which is the
    attention (untie_r=True, per layer) or the model (untie_r=False, shared by all layers)."""
    init = nn.with_logical_partitioning(nn.initializers.normal(init_stddev), ("heads", "kv"))
    return {name: module.param(name, init, (num_heads, head_dim), param_dtype) for name in BIAS_NAMES}


class RelativeAttention(nn.Module):
    """Two-stream relative multi-head attention without projection biases (as HF / the authors).

    Returns the output projections (out_h [B, L, D], out_g [B, P, D] or None); the layer adds the residual and
    normalises. Params: query, key, value, relative ([D, H, K] kernels, HF's layout), out ([H, K, D]),
    seg_embed [2, H, K], and r_w_bias / r_r_bias / r_s_bias [H, K] unless `shared_biases` are passed.
    """
    num_heads: int
    head_dim: int
    dropout_rate: float = 0.0
    init_stddev: float = 0.02
    untie_r: bool = True
    # "dot_product": the content term fused, position + segment terms as a bias. "auto" / "cudnn" run the einsum
    # path: the bias is per example and learned, which cuDNN's kernel is not checked for (jaxlm.layers.attention_kernel)
    attention_impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxLxD, g_BxPxD=None, *, pos_emb_BxRxD, mem_BxMxD=None, mask_h=None, mask_g=None,
                 seg_h_BxLxK=None, seg_g_BxPxK=None, target_positions_BxP=None, target_weights_BxP=None,
                 shared_biases=None, deterministic: bool = True):
        features = h_BxLxD.shape[-1]

        def projection(name, to_heads=True):
            return HeadsProjection(self.num_heads, self.head_dim, features, to_heads=to_heads, use_bias=False,
                                   init_stddev=self.init_stddev, dtype=self.dtype, param_dtype=self.param_dtype,
                                   name=name)

        if self.untie_r:
            biases = relative_biases(self, self.num_heads, self.head_dim, self.init_stddev, self.param_dtype)
        elif shared_biases is None:
            raise ValueError(f"{self.name}: untie_r=False needs the model's shared r_w_bias / r_r_bias / r_s_bias")
        else:
            biases = shared_biases
        biases = {k: jnp.asarray(v, self.dtype) for k, v in biases.items()}
        seg_embed = self.param("seg_embed", nn.with_logical_partitioning(
            nn.initializers.normal(self.init_stddev), (None, "heads", "kv")), (2, self.num_heads, self.head_dim),
            self.param_dtype)
        seg_embed = jnp.asarray(seg_embed, self.dtype)

        query, key, value = projection("query"), projection("key"), projection("value")
        relative, out = projection("relative"), projection("out", to_heads=False)
        cat_BxKxD = h_BxLxD if mem_BxMxD is None else jnp.concatenate(
            [mem_BxMxD.astype(h_BxLxD.dtype), h_BxLxD], axis=1)
        k_BxKxNxK = nn.with_logical_constraint(key(cat_BxKxD), HEADS_AXES)
        v_BxKxNxK = nn.with_logical_constraint(value(cat_BxKxD), HEADS_AXES)
        k_r = relative(pos_emb_BxRxD.astype(self.dtype))  # [1 or B, R, N, K]
        kv = (k_BxKxNxK, v_BxKxNxK, k_r, seg_embed, biases)
        length = h_BxLxD.shape[1]

        q_h = nn.with_logical_constraint(query(h_BxLxD), HEADS_AXES)
        out_h = out(self._attend(q_h, *kv, seg_h_BxLxK, mask_h, None, length, deterministic))
        if g_BxPxD is None:
            return out_h, None
        q_g = nn.with_logical_constraint(query(g_BxPxD), HEADS_AXES)
        attn_g = self._attend(q_g, *kv, seg_g_BxPxK, mask_g, target_positions_BxP, length, deterministic)
        if target_weights_BxP is not None:  # HF's einsum with target_mapping: an all-zero row gives 0
            attn_g = attn_g * target_weights_BxP[:, :, None, None].astype(attn_g.dtype)
        return out_h, out(attn_g)

    def _attend(self, q_BxQxNxK, k_BxKxNxK, v_BxKxNxK, k_r, seg_embed, biases, seg_BxQxK, mask, positions_BxQ,
                q_len, deterministic):
        """One stream's attention vectors [B, Q, N, K]; positions None: queries at 0..Q-1 (the content stream)."""
        scale = self.head_dim ** -0.5
        k_len = k_BxKxNxK.shape[1]
        q_r = q_BxQxNxK + biases["r_r_bias"]
        if k_r.shape[0] == 1:  # one encoding for the whole batch
            bd_BxNxQxR = jnp.einsum("bqnd,rnd->bnqr", q_r, k_r[0])
        else:
            bd_BxNxQxR = jnp.einsum("bqnd,brnd->bnqr", q_r, k_r)
        if positions_BxQ is None:
            bd = rel_shift(bd_BxNxQxR, k_len)
        else:
            bd = rel_gather(bd_BxNxQxR, positions_BxQ, q_len, k_len)
        bias_BxNxQxK = bd.astype(jnp.float32)
        if seg_BxQxK is not None:
            ef_BxNxQx2 = jnp.einsum("bqnd,snd->bnqs", q_BxQxNxK + biases["r_s_bias"], seg_embed).astype(jnp.float32)
            bias_BxNxQxK = bias_BxNxQxK + jnp.where(seg_BxQxK[:, None], ef_BxNxQx2[..., 1:], ef_BxNxQx2[..., :1])
        q_w = q_BxQxNxK + biases["r_w_bias"]

        use_dropout = self.dropout_rate > 0.0 and not deterministic
        if self.attention_impl == "dot_product" and not use_dropout:
            return jax.nn.dot_product_attention(q_w, k_BxKxNxK, v_BxKxNxK,
                                                bias=(bias_BxNxQxK * scale).astype(self.dtype), mask=mask,
                                                scale=scale)
        check_attention_impl(self.attention_impl)
        ac_BxNxQxK = jnp.einsum("bqnd,bknd->bnqk", q_w, k_BxKxNxK).astype(jnp.float32)
        logits_BxNxQxK = (ac_BxNxQxK + bias_BxNxQxK) * scale
        if mask is not None:
            logits_BxNxQxK = jnp.where(mask, logits_BxNxQxK, NEG_INF)
        weights = jax.nn.softmax(logits_BxNxQxK, axis=-1).astype(self.dtype)
        if use_dropout:
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
        return jnp.einsum("bnqk,bknd->bqnd", weights, v_BxKxNxK)
