"""GPT-2 (Radford et al., 2019): a pre-LN causal decoder, learned positions, final LayerNorm, tied LM head."""
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.layers import (
    BlockConfig,
    Embed,
    LayerNorm,
    TransformerStack,
    combine_masks,
    make_attention_mask,
    make_causal_mask,
)
from jaxlm.layers.attention_kernel import check_attention_impl
from jaxlm.layers.blocks import LOGITS_AXES
from jaxlm.models.common import check_length, check_token_ids, to_dtype
from jaxlm.models.family import ModelFamily, feed_forward_params, transformer_layer_train_flops


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    family: str = "gpt2"
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 1024
    hidden_act: str = "gelu_new"
    dropout: float = 0.1  # HF's resid_pdrop, embd_pdrop and attn_pdrop are all 0.1 in the released configs
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    pad_token_id: int = 0
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    dtype: Any = "auto"  # compute dtype: bfloat16 on GPU / TPU, float32 on CPU (models.common.to_dtype)
    param_dtype: Any = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "auto"

    def __post_init__(self):
        check_attention_impl(self.attention_impl, "GPT2Config.attention_impl")

    def block_config(self) -> BlockConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        return BlockConfig(
            hidden_size=self.hidden_size, num_heads=self.num_heads,
            head_dim=self.hidden_size // self.num_heads, mlp_dim=self.intermediate_size,
            num_layers=self.num_layers, activations=(self.hidden_act,), pre_norm=True, norm="layernorm",
            norm_eps=self.layer_norm_eps, use_bias=True, dropout_rate=self.dropout,
            attention_dropout_rate=self.attention_dropout, init_stddev=self.initializer_range,
            out_init_stddev=self.initializer_range / math.sqrt(2 * self.num_layers),
            attention_impl=self.attention_impl, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
            dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))


class GPT2LMHeadModel(nn.Module):
    """Returns logits [B,L,V], or the final hidden states [B,L,D] with `return_hidden=True` (so a loss can
    project onto the vocabulary in chunks without materialising all logits).

    `decode=True` runs incrementally against the 'cache' collection (see MultiHeadAttention): initialise the
    cache with `init(..., decode=True)` on inputs of shape [batch, max_decode_length], then feed tokens with
    their absolute `positions`; `segment_ids` is ignored in decode mode (pass a `mask` via `decode_mask`
    [B,1,1|Q,max_len] for left-padded prompts).
    """
    config: GPT2Config

    def setup(self):
        c = self.config
        dtype, param_dtype = to_dtype(c.dtype), to_dtype(c.param_dtype)
        kw = dict(init_stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype)
        self.token_embeddings = Embed(c.vocab_size, c.hidden_size, **kw)
        self.position_embeddings = Embed(c.max_position_embeddings, c.hidden_size, axes=("length", "embed"),
                                         init_stddev=0.01, dtype=dtype, param_dtype=param_dtype)
        self.embeddings_dropout = nn.Dropout(c.dropout)
        self.decoder = TransformerStack(c.block_config())
        self.final_norm = LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, inputs, segment_ids=None, positions=None, *, deterministic=True, decode=False,
                 decode_mask=None, return_hidden=False):
        c = self.config
        length = inputs.shape[1]
        check_length("inputs", length, c.max_position_embeddings)
        check_token_ids("inputs", inputs, c.vocab_size)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length), inputs.shape)
        x_BxLxD = self.token_embeddings(inputs) + self.position_embeddings(positions)
        x_BxLxD = self.embeddings_dropout(x_BxLxD, deterministic=deterministic)
        if decode:
            mask = decode_mask
        else:
            segment_mask = None if segment_ids is None else make_attention_mask(segment_ids, segment_ids)
            mask = combine_masks(make_causal_mask(length), segment_mask)
        hidden_BxLxD = self.final_norm(self.decoder(x_BxLxD, mask, deterministic=deterministic, decode=decode))
        if return_hidden:
            return hidden_BxLxD
        return self.logits(hidden_BxLxD)

    def logits(self, hidden_BxLxD):
        """The tied output layer on final hidden states (what `return_hidden=True` returns)."""
        logits = self.token_embeddings.attend(hidden_BxLxD)
        return nn.with_logical_constraint(logits, LOGITS_AXES)

    def output_embedding(self, params):
        """The [V, D] matrix the logits are computed with (for chunked cross-entropy over `return_hidden`)."""
        return params["token_embeddings"]["embedding"]


class GPT2Backbone(GPT2LMHeadModel):
    """GPT-2 as the backbone of a task head: the final hidden states [B,L,D] and no pooled output, with the
    same parameters as GPT2LMHeadModel (the LM head is the tied embedding, so nothing is left out)."""

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, *, deterministic=True):
        return super().__call__(inputs, segment_ids, positions, deterministic=deterministic, return_hidden=True), None


# GPT-2 (Radford et al., 2019); sizes of the released 124M / 355M / 774M / 1.5B checkpoints.
GPT2_SIZES = {
    "small": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "medium": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
    "large": dict(num_layers=36, hidden_size=1280, num_heads=20, intermediate_size=5120),
    "xl": dict(num_layers=48, hidden_size=1600, num_heads=25, intermediate_size=6400),
}


@dataclasses.dataclass(frozen=True)
class GPT2Family(ModelFamily):
    """A causal decoder: its whole tree is the backbone; sequence heads read the last real token."""
    kind = "decoder"

    def heads(self, config):
        return ("causal_lm",)

    def hidden_dropout(self, config):
        return config.dropout

    def build(self, config):
        return GPT2LMHeadModel(config)

    def backbone(self, config):
        return GPT2Backbone(config)

    def summary(self, config) -> str:
        return "last_token"

    def backbone_train_flops(self, config, *, tokens, **lengths):
        d = config.hidden_size
        per_layer = 4 * d * d + feed_forward_params(d, config.intermediate_size)
        return transformer_layer_train_flops(tokens=tokens, keys=tokens, matmul_params=config.num_layers * per_layer,
                                             num_layers=config.num_layers, attention_width=d)


GPT2 = GPT2Family("gpt2", GPT2Config, GPT2_SIZES, text_style="gpt2")
