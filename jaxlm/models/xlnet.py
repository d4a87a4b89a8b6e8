"""XLNet (Yang et al. 2019, "XLNet: Generalized Autoregressive Pretraining for Language Understanding"): a
post-LN Transformer-XL encoder with relative positions, segment recurrence (memory) and two-stream attention
for permutation language modelling.

Numerically Hugging Face's XLNetModel / XLNetLMHeadModel (tests/test_xlnet_model.py), batch-major:
- `XLNetModel(inputs [B,L], segment_ids, token_types, perm_mask [B,L,L], target_mapping [B,P,L],
  mems [layers,B,M,D])` -> {"hidden" [B,L,D] (content stream), "query_hidden" [B,P,D] or None (query stream,
  only with target_mapping), "new_mems" [layers,B,M',D] or None (only with mem_len)}.
- segment_ids: jaxlm's padding / packing ids (0 = padding, default inputs != pad_token_id; XLNet pads on the
  left, the mask does not care which side). token_types: XLNet's segment ids (A = 0, B = 1, CLS = 2) for the
  relative segment encoding; None (HF's token_type_ids=None) drops the segment term.
- perm_mask[b, i, j] > 0: token i may not see token j (HF's convention); target_mapping rows are one-hot (the
  predicted position, distinct within a row) or all zero (padding predictions, whose query stream gets no
  attention, as in HF). HF mixes the queries of rows sharing a position; the authors' data never does that.
- memory: new_mems[l] = stop_gradient(concat(mems[l], input of layer l[:reuse_len or L]))[-mem_len:], the
  hidden states each layer read; stacked [layers, B, M, D] so a scanned stack scans it.

Parameter names (unrolled; scanned: `encoder/layers` with a leading layers axis, see jaxlm.layers.stack_layers):
    xlnet/word_embeddings/embedding [V, D]        xlnet/mask_emb [1, 1, D]
    xlnet/encoder/layers_{i}/attention/{query,key,value,relative}/kernel [D, H, K], .../out/kernel [H, K, D]
    xlnet/encoder/layers_{i}/attention/{r_w_bias,r_r_bias,r_s_bias} [H, K] (untie_r; else xlnet/r_w_bias ...)
    xlnet/encoder/layers_{i}/attention/seg_embed [2, H, K]
    xlnet/encoder/layers_{i}/{attention_norm,mlp_norm}/{scale,bias}, .../mlp/{wi,wo}/{kernel,bias}
    lm_bias [V] (the output layer is the word embedding, tied)
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxlm.layers import Embed, FeedForward, LayerNorm
from jaxlm.layers.attention_kernel import check_attention_impl
from jaxlm.layers.blocks import ACTIVATION_AXES, LOGITS_AXES, REMAT_POLICIES
from jaxlm.layers.relative_attention import (
    RelativeAttention,
    relative_biases,
    relative_positional_encoding,
    segment_differences,
    xlnet_masks,
)
from jaxlm.models.common import check_token_ids, to_dtype
from jaxlm.models.family import ModelFamily, feed_forward_params, transformer_layer_train_flops


@dataclasses.dataclass(frozen=True)
class XLNetConfig:
    """Hugging Face's XLNetConfig in jaxlm's names (d_model -> hidden_size, n_layer -> num_layers, n_head ->
    num_heads, d_head -> head_dim, d_inner -> intermediate_size). Defaults: xlnet-base-cased."""
    family: str = "xlnet"
    vocab_size: int = 32000
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    head_dim: int | None = None  # None: hidden_size // num_heads (resolved in __post_init__)
    intermediate_size: int = 3072
    ff_activation: str = "gelu"  # jaxlm.layers.mlp.ACTIVATIONS; HF's 'gelu' is the erf GELU
    untie_r: bool = True  # per-layer r_w / r_r / r_s biases; False: one set shared by all layers
    attn_type: str = "bi"  # 'bi' only ('uni' is refused)
    mem_len: int | None = None  # None / 0: no memory is kept (new_mems None)
    reuse_len: int | None = None  # tokens of the current segment cached for the next one (None / 0: all)
    bi_data: bool = False  # first half of the batch forward positions, second half backward (even batch)
    clamp_len: int = -1  # > 0: relative distances clipped to [-clamp_len, clamp_len]
    same_length: bool = False  # only changes 'uni' attention (as in HF); kept for config.json round trips
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 5
    dtype: Any = "auto"  # compute dtype: bfloat16 on GPU / TPU, float32 on CPU (models.common.to_dtype)
    param_dtype: Any = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "auto"

    def __post_init__(self):
        if self.family != "xlnet":
            raise ValueError(f"XLNetConfig.family={self.family!r}: 'xlnet'")
        if self.attn_type != "bi":
            raise ValueError(f"XLNetConfig.attn_type={self.attn_type!r} is not supported: jaxlm's XLNet is "
                             "bidirectional ('bi', as every released checkpoint); 'uni' (causal) is not implemented")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
        check_attention_impl(self.attention_impl, "XLNetConfig.attention_impl")
        for name in ("mem_len", "reuse_len"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"XLNetConfig.{name}={value} must be None or >= 0")
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}; "
                                 "set head_dim")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)


# Yang et al. 2019, section 3.1 / the released xlnet-{base,large}-cased checkpoints.
XLNET_SIZES = {
    "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "large": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
}


def cache_mem(h_BxLxD, mem_BxMxD, mem_len, reuse_len):
    """The memory the next segment reads (the authors' _cache_mem): None without mem_len."""
    if not mem_len:
        return None
    current = h_BxLxD[:, :reuse_len] if reuse_len else h_BxLxD
    if mem_BxMxD is not None:
        current = jnp.concatenate([mem_BxMxD.astype(current.dtype), current], axis=1)
    return jax.lax.stop_gradient(current[:, -mem_len:])


class XLNetLayer(nn.Module):
    """Relative attention + residual -> LayerNorm; feed-forward (wi -> act -> dropout -> wo -> dropout) + residual
    -> LayerNorm (HF's XLNetFeedForward). Both streams go through the same weights. Returns (h, g, new_mem)."""
    config: XLNetConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, h_BxLxD, g_BxPxD, mem_BxMxD, pos_emb, seg_h, seg_g, mask_h, mask_g, target_positions,
                 target_weights, shared_biases):
        c = self.config
        dtype, param_dtype = to_dtype(c.dtype), to_dtype(c.param_dtype)
        new_mem = cache_mem(h_BxLxD, mem_BxMxD, c.mem_len, c.reuse_len)
        drop = lambda x: nn.Dropout(c.dropout)(x, deterministic=self.deterministic)  # noqa: E731
        attention = RelativeAttention(c.num_heads, c.head_dim, dropout_rate=c.dropout, init_stddev=c.initializer_range,
                                      untie_r=c.untie_r, attention_impl=c.attention_impl, dtype=dtype,
                                      param_dtype=param_dtype, name="attention")
        attention_norm = LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                                   name="attention_norm")
        mlp = FeedForward(c.intermediate_size, activations=(c.ff_activation,), dropout_rate=c.dropout,
                          init_stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype, name="mlp")
        mlp_norm = LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, param_dtype=param_dtype, name="mlp_norm")

        h_BxLxD = nn.with_logical_constraint(h_BxLxD, ACTIVATION_AXES)
        out_h, out_g = attention(h_BxLxD, g_BxPxD, pos_emb_BxRxD=pos_emb, mem_BxMxD=mem_BxMxD, mask_h=mask_h,
                                 mask_g=mask_g, seg_h_BxLxK=seg_h, seg_g_BxPxK=seg_g,
                                 target_positions_BxP=target_positions, target_weights_BxP=target_weights,
                                 shared_biases=shared_biases, deterministic=self.deterministic)

        def post(x, attended):
            x = attention_norm(x + drop(attended))
            x = mlp_norm(x + drop(mlp(x, deterministic=self.deterministic)))
            return nn.with_logical_constraint(x, ACTIVATION_AXES)

        return post(h_BxLxD, out_h), None if g_BxPxD is None else post(g_BxPxD, out_g), new_mem


class _ScanLayer(XLNetLayer):
    """nn.scan's signature: carry (h, g), the scanned per-layer memory, the broadcast rest -> (carry, new_mem)."""

    def __call__(self, carry, mem_BxMxD, *broadcast):
        h, g, new_mem = super().__call__(carry[0], carry[1], mem_BxMxD, *broadcast)
        return (h, g), new_mem


class XLNetStack(nn.Module):
    """`num_layers` XLNetLayers: unrolled (`layers_0..N-1`) or nn.scan (`layers`, leading layers axis; the
    memory [layers, B, M, D] scanned along), either with remat. Returns (h, g, new_mems [layers, ...] or None)."""
    config: XLNetConfig

    @nn.compact
    def __call__(self, h, g, mems, *broadcast, deterministic: bool = True):
        c = self.config
        layer_cls = _ScanLayer if c.scan_layers else XLNetLayer
        if c.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers)
        if c.scan_layers:
            scanned = nn.scan(
                layer_cls, variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast if mems is None else 0,) + (nn.broadcast,) * len(broadcast),
                length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            (h, g), new_mems = scanned(c, deterministic, name="layers")((h, g), mems, *broadcast)
            return h, g, new_mems
        new_mems = []
        for i in range(c.num_layers):
            h, g, new_mem = layer_cls(c, deterministic, name=f"layers_{i}")(
                h, g, None if mems is None else mems[i], *broadcast)
            new_mems.append(new_mem)
        return h, g, None if new_mems[0] is None else jnp.stack(new_mems)


def _check_shape(name: str, array, expected: tuple, meaning: str):
    if array is not None and tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} has shape {tuple(array.shape)} but must be {meaning} = {tuple(expected)}")


class XLNetModel(nn.Module):
    """Word embeddings -> XLNetStack, both streams; see the module docstring for the arguments and outputs."""
    config: XLNetConfig

    def setup(self):
        c = self.config
        dtype, param_dtype = to_dtype(c.dtype), to_dtype(c.param_dtype)
        self.word_embeddings = Embed(c.vocab_size, c.hidden_size, init_stddev=c.initializer_range, dtype=dtype,
                                     param_dtype=param_dtype)
        self.mask_emb = self.param("mask_emb", nn.with_logical_partitioning(
            nn.initializers.normal(c.initializer_range), (None, None, "embed")), (1, 1, c.hidden_size), param_dtype)
        self.shared_biases = None if c.untie_r else relative_biases(self, c.num_heads, c.head_dim,
                                                                    c.initializer_range, param_dtype)
        self.encoder = XLNetStack(c)
        self.dropout = nn.Dropout(c.dropout)

    def check_inputs(self, inputs, segment_ids, token_types, perm_mask, target_mapping, mems):
        """Static shape checks (trace time): errors name the array, its shape and the expected one."""
        c = self.config
        if inputs.ndim != 2:
            raise ValueError(f"inputs has shape {tuple(inputs.shape)} but must be [batch, length]")
        b, length = inputs.shape
        _check_shape("segment_ids", segment_ids, (b, length), "[batch, length] as inputs")
        _check_shape("token_types", token_types, (b, length), "[batch, length] as inputs")
        _check_shape("perm_mask", perm_mask, (b, length, length), "[batch, length, length]")
        if target_mapping is not None and (target_mapping.ndim != 3 or target_mapping.shape[0] != b
                                           or target_mapping.shape[2] != length):
            raise ValueError(f"target_mapping has shape {tuple(target_mapping.shape)} but must be [batch, "
                             f"num_predict, length] = ({b}, P, {length})")
        if mems is not None and (mems.ndim != 4 or mems.shape[0] != c.num_layers or mems.shape[1] != b
                                 or mems.shape[3] != c.hidden_size):
            memory = mems.shape[2] if mems.ndim == 4 else "M"
            raise ValueError(f"mems has shape {tuple(mems.shape)} but must be [num_layers, batch, memory, "
                             f"hidden_size] = ({c.num_layers}, {b}, {memory}, {c.hidden_size})")
        if c.bi_data and b % 2:
            raise ValueError(f"bi_data=True needs an even batch (its first half reads positions forward, the "
                             f"second half backward), got inputs of shape {tuple(inputs.shape)}: batch size {b}")
        check_token_ids("inputs", inputs, c.vocab_size)

    def __call__(self, inputs, segment_ids=None, token_types=None, perm_mask=None, target_mapping=None, mems=None,
                 *, deterministic=True):
        c = self.config
        self.check_inputs(inputs, segment_ids, token_types, perm_mask, target_mapping, mems)
        b, length = inputs.shape
        memory_length = 0 if mems is None else mems.shape[2]  # M (config.mem_len is what is kept for the next)
        if segment_ids is None:
            segment_ids = (inputs != c.pad_token_id).astype(jnp.int32)
        mask_h, mask_g = xlnet_masks(segment_ids, perm_mask, memory_length)
        seg_h = None if token_types is None else segment_differences(token_types, memory_length)
        pos_emb = relative_positional_encoding(length, memory_length + length, c.hidden_size, clamp_len=c.clamp_len,
                                               bi_data=c.bi_data, batch_size=b)
        if not deterministic and c.dropout > 0:  # HF drops the [R, B, D] encoding per batch row
            pos_emb = jnp.broadcast_to(pos_emb, (b,) + pos_emb.shape[1:])
        pos_emb = self.dropout(pos_emb, deterministic=deterministic)

        h_BxLxD = self.dropout(self.word_embeddings(inputs), deterministic=deterministic)
        g_BxPxD = seg_g = target_positions = target_weights = None
        if target_mapping is not None:
            # the query stream at the P predicted positions: the mask rows and segment rows of those positions
            target_positions = jnp.argmax(target_mapping, axis=-1).astype(jnp.int32)
            target_weights = jnp.take_along_axis(target_mapping, target_positions[..., None], axis=-1)[..., 0]
            mask_g = jnp.take_along_axis(mask_g, target_positions[:, None, :, None], axis=2)
            if seg_h is not None:
                seg_g = jnp.take_along_axis(seg_h, target_positions[:, :, None], axis=1)
            mask_emb = jnp.asarray(self.mask_emb, h_BxLxD.dtype)
            g_BxPxD = self.dropout(jnp.broadcast_to(mask_emb, (b, target_mapping.shape[1], c.hidden_size)),
                                   deterministic=deterministic)
        h_BxLxD, g_BxPxD, new_mems = self.encoder(
            h_BxLxD, g_BxPxD, mems, pos_emb, seg_h, seg_g, mask_h, mask_g, target_positions, target_weights,
            self.shared_biases, deterministic=deterministic)
        h_BxLxD = self.dropout(h_BxLxD, deterministic=deterministic)
        if g_BxPxD is not None:
            g_BxPxD = self.dropout(g_BxPxD, deterministic=deterministic)
        return {"hidden": h_BxLxD, "query_hidden": g_BxPxD, "new_mems": new_mems}


class XLNetLMHeadModel(nn.Module):
    """XLNetModel + the tied output layer (word embedding^T + lm_bias), HF's lm_loss.

    Returns XLNetModel's dict plus "lm_hidden" (what the output layer reads: the query stream with
    target_mapping [B,P,D], else the content stream [B,L,D]) and "logits" over it ([B,P,V] / [B,L,V]; None with
    `return_hidden=True`, for a loss that chunks the projection with `output_embedding` and `lm_bias`).
    """
    config: XLNetConfig

    def setup(self):
        c = self.config
        self.xlnet = XLNetModel(c)
        self.lm_bias = self.param("lm_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                                  (c.vocab_size,), to_dtype(c.param_dtype))

    def logits(self, hidden):
        """The output layer on "lm_hidden"."""
        logits = self.xlnet.word_embeddings.attend(hidden) + jnp.asarray(self.lm_bias, to_dtype(self.config.dtype))
        return nn.with_logical_constraint(logits, LOGITS_AXES)

    def __call__(self, inputs, segment_ids=None, token_types=None, perm_mask=None, target_mapping=None, mems=None,
                 *, deterministic=True, return_hidden=False):
        out = self.xlnet(inputs, segment_ids, token_types, perm_mask, target_mapping, mems,
                         deterministic=deterministic)
        lm_hidden = out["hidden"] if target_mapping is None else out["query_hidden"]
        return {**out, "lm_hidden": lm_hidden, "logits": None if return_hidden else self.logits(lm_hidden)}

    def output_embedding(self, params):
        """The [V, D] matrix the logits are computed with (plus params['lm_bias'] [V])."""
        return params["xlnet"]["word_embeddings"]["embedding"]


class XLNetBackbone(XLNetModel):
    """XLNet as the backbone of a task head: the content stream [B,L,D] and no pooled output (the sequence
    summary is the head's: `last_token_dense`), with XLNetLMHeadModel's `xlnet` parameters."""

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, *, deterministic=True):
        return super().__call__(inputs, segment_ids, token_types, deterministic=deterministic)["hidden"], None


@dataclasses.dataclass(frozen=True)
class XLNetFamily(ModelFamily):
    """A bidirectional encoder pretrained by permutation LM; its task heads read the last token (`<cls>`, which
    XLNet puts at the end) through a dense + tanh summary, as HF's XLNetForSequenceClassification."""
    kind = "encoder"
    backbone_key = "xlnet"

    def heads(self, config):
        return ("permutation_lm",)

    def build(self, config):
        return XLNetLMHeadModel(config)

    def backbone(self, config):
        """Fine-tuning reads one window at a time, forward (the authors' run_classifier / run_squad: no memory,
        bi_data off): a pretraining run's recurrence settings are dropped."""
        return XLNetBackbone(dataclasses.replace(config, mem_len=None, reuse_len=None, bi_data=False))

    def summary(self, config):
        return "last_token_dense"

    def hidden_dropout(self, config):
        return config.dropout

    def max_length(self, config):
        return None  # relative positions: any length

    def backbone_train_flops(self, config, *, tokens, query_positions=0, memory=0, **lengths):
        """The content stream over `tokens` (keys: memory + tokens) and, with `query_positions` > 0 (permutation
        LM), the query stream at those predicted positions: its own query / output projections and feed-forward
        over the content stream's keys and values. Relative attention adds the position scores (q . r over the
        R = keys + tokens relative encodings) to the content scores and values.

        What XLA actually runs, and so what is counted (tests/test_flops.py checks it against XLA's count):
        - with a query stream, the last layer's content output is never read (the loss reads the query stream),
          so that layer runs only the content keys and values the queries attend to;
        - the relative encodings are a constant sinusoid projected by each layer (no input gradient: 4 x, not
          6 x); without dropout they are one [1, R, D] table per batch, a per-example cost of ~0 at any real
          batch, and with dropout one per row."""
        d, width, layers = config.hidden_size, config.num_heads * config.head_dim, config.num_layers
        keys = memory + tokens
        relative = keys + tokens  # the relative encoding table [R, D] (bidirectional: R = klen + qlen)
        ff = feed_forward_params(d, config.intermediate_size)

        def content(num_layers):
            return (transformer_layer_train_flops(tokens=tokens, keys=keys, num_layers=num_layers,
                                                  matmul_params=num_layers * (4 * d * width + ff),
                                                  attention_width=width)
                    + 6.0 * num_layers * width * relative * tokens)

        if not query_positions:
            flops = content(layers)
        else:
            query = (transformer_layer_train_flops(tokens=query_positions, keys=keys, num_layers=layers,
                                                   matmul_params=layers * (2 * d * width + ff), attention_width=width)
                     + 6.0 * layers * width * relative * query_positions)
            flops = content(layers - 1) + 6.0 * 2 * d * width * tokens + query  # last layer: content keys, values
        if config.dropout > 0:
            flops += 4.0 * layers * d * width * relative
        return flops


XLNET = XLNetFamily("xlnet", XLNetConfig, XLNET_SIZES, text_style="xlnet")
