"""BERT (Devlin et al., 2019) and RoBERTa (Liu et al., 2019): a post-LN encoder with MLM and NSP heads.

RoBERTa is the same network with another config: a larger BPE vocabulary, one token type, no NSP, and position
ids offset by the padding index as in the released checkpoints (`position_offset = pad_token_id + 1`).
Parameter names follow Hugging Face's structure one-to-one (see jaxlm.convert) with plainer names.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.layers import BlockConfig, Embed, LayerNorm, TransformerStack, make_attention_mask
from jaxlm.layers.attention_kernel import check_attention_impl
from jaxlm.layers.blocks import LOGITS_AXES
from jaxlm.layers.mlp import get_activation
from jaxlm.models.common import check_length, check_token_ids, to_dtype
from jaxlm.models.family import ModelFamily, feed_forward_params, transformer_layer_train_flops


@dataclasses.dataclass(frozen=True)
class BertConfig:
    family: str = "bert"  # or "roberta": the same network, another vocabulary and position numbering
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    position_offset: int = 0  # RoBERTa: pad_token_id + 1 = 2
    nsp_head: bool = True  # BERT: MLM + NSP; RoBERTa: MLM only
    pooler: bool = True
    dtype: Any = "auto"  # compute dtype: bfloat16 on GPU / TPU, float32 on CPU (models.common.to_dtype)
    param_dtype: Any = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "auto"

    def __post_init__(self):
        if self.family not in ("bert", "roberta"):
            raise ValueError(f"BertConfig.family={self.family!r}: 'bert' or 'roberta'")
        check_attention_impl(self.attention_impl, "BertConfig.attention_impl")

    def block_config(self) -> BlockConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        return BlockConfig(
            hidden_size=self.hidden_size, num_heads=self.num_heads,
            head_dim=self.hidden_size // self.num_heads, mlp_dim=self.intermediate_size,
            num_layers=self.num_layers, activations=(self.hidden_act,), pre_norm=False, norm="layernorm",
            norm_eps=self.layer_norm_eps, use_bias=True, dropout_rate=self.hidden_dropout,
            attention_dropout_rate=self.attention_dropout, init_stddev=self.initializer_range,
            attention_impl=self.attention_impl, scan_layers=self.scan_layers, remat_policy=self.remat_policy,
            dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))


class BertModel(nn.Module):
    """Embeddings -> encoder -> (optional) pooler. Returns hidden states [B,L,D] and pooled [B,D] (or None)."""
    config: BertConfig

    def setup(self):
        c = self.config
        dtype, param_dtype = to_dtype(c.dtype), to_dtype(c.param_dtype)
        kw = dict(init_stddev=c.initializer_range, dtype=dtype, param_dtype=param_dtype)
        self.word_embeddings = Embed(c.vocab_size, c.hidden_size, **kw)
        self.position_embeddings = Embed(c.max_position_embeddings, c.hidden_size, axes=("length", "embed"), **kw)
        self.token_type_embeddings = Embed(c.type_vocab_size, c.hidden_size, axes=(None, "embed"), **kw)
        self.embeddings_norm = LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.embeddings_dropout = nn.Dropout(c.hidden_dropout)
        self.encoder = TransformerStack(c.block_config())
        if c.pooler:
            self.pooler = nn.Dense(
                c.hidden_size, dtype=dtype, param_dtype=param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                                         ("embed", "mlp")),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))

    def default_positions(self, inputs_BxL):
        c = self.config
        if c.position_offset:  # RoBERTa / HF: cumsum over non-pad tokens, pads get the padding index
            not_pad = (inputs_BxL != c.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(not_pad, axis=1) * not_pad + c.pad_token_id
        return jnp.broadcast_to(jnp.arange(inputs_BxL.shape[1]), inputs_BxL.shape)

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, *, deterministic=True):
        c = self.config
        check_length("inputs", inputs.shape[1] + c.position_offset, c.max_position_embeddings)
        check_token_ids("inputs", inputs, c.vocab_size)
        if segment_ids is None:
            segment_ids = (inputs != c.pad_token_id).astype(jnp.int32)
        positions = self.default_positions(inputs) if positions is None else positions + c.position_offset
        if token_types is None:
            token_types = jnp.zeros_like(inputs)
        x_BxLxD = (self.word_embeddings(inputs) + self.position_embeddings(positions)
                   + self.token_type_embeddings(token_types))
        x_BxLxD = self.embeddings_dropout(self.embeddings_norm(x_BxLxD), deterministic=deterministic)
        mask = make_attention_mask(segment_ids, segment_ids)
        hidden_BxLxD = self.encoder(x_BxLxD, mask, deterministic=deterministic)
        pooled_BxD = jnp.tanh(self.pooler(hidden_BxLxD[:, 0])) if c.pooler else None
        return hidden_BxLxD, pooled_BxD


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> tied output embedding + bias, as in the BERT paper's code."""
    config: BertConfig

    @nn.compact
    def __call__(self, hidden_BxPxD, embed: Embed):
        c = self.config
        dtype, param_dtype = to_dtype(c.dtype), to_dtype(c.param_dtype)
        h = nn.Dense(c.hidden_size, dtype=dtype, param_dtype=param_dtype, name="transform",
                     kernel_init=nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                                              ("embed", "mlp")),
                     bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)))(hidden_BxPxD)
        h = LayerNorm(epsilon=c.layer_norm_eps, dtype=dtype, param_dtype=param_dtype,
                      name="transform_norm")(get_activation(c.hidden_act)(h))
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                          (c.vocab_size,), param_dtype)
        logits = embed.attend(h) + bias.astype(dtype)
        return nn.with_logical_constraint(logits, LOGITS_AXES)


class BertForPreTraining(nn.Module):
    """BERT / RoBERTa with the pretraining heads.

    `masked_positions` [B,P]: compute MLM logits only there (as BERT's max_predictions_per_seq does), which
    skips the vocabulary projection for the ~85% of tokens that carry no MLM loss. Without it: all positions.
    """
    config: BertConfig

    def setup(self):
        c = self.config
        self.bert = BertModel(c)
        self.mlm_head = MaskedLMHead(c)
        if c.nsp_head:
            self.nsp_head = nn.Dense(
                2, dtype=to_dtype(c.dtype), param_dtype=to_dtype(c.param_dtype),
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(c.initializer_range),
                                                         ("mlp", None)),
                bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)))

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, masked_positions=None, *,
                 deterministic=True):
        hidden_BxLxD, pooled_BxD = self.bert(inputs, segment_ids, token_types, positions,
                                             deterministic=deterministic)
        selected = hidden_BxLxD
        if masked_positions is not None:
            selected = jnp.take_along_axis(hidden_BxLxD, masked_positions[..., None], axis=1)
        out = {"hidden": hidden_BxLxD, "mlm_logits": self.mlm_head(selected, self.bert.word_embeddings)}
        if self.config.nsp_head:
            out["nsp_logits"] = self.nsp_head(pooled_BxD)
        return out


def _bert(layers, hidden):
    return dict(num_layers=layers, hidden_size=hidden, num_heads=hidden // 64, intermediate_size=4 * hidden)


# BERT tiny..medium: Turc et al. 2019 ("Well-Read Students Learn Better"); base/large: Devlin et al. 2019.
BERT_SIZES = {
    "tiny": _bert(2, 128), "mini": _bert(4, 256), "small": _bert(4, 512), "medium": _bert(8, 512),
    "base": _bert(12, 768), "large": _bert(24, 1024),
}
# RoBERTa (Liu et al. 2019): BERT shapes, 50265 BPE tokens, 514 positions offset by padding_idx=1, no NSP.
ROBERTA_COMMON = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                      position_offset=2, layer_norm_eps=1e-5, nsp_head=False, pooler=False)
ROBERTA_SIZES = {"base": BERT_SIZES["base"], "large": BERT_SIZES["large"]}


@dataclasses.dataclass(frozen=True)
class BertFamily(ModelFamily):
    """BERT and RoBERTa: post-LN encoders; the backbone is BertForPreTraining's `bert` subtree."""
    kind = "encoder"
    backbone_key = "bert"

    def heads(self, config):
        return ("masked_lm", "next_sentence") if config.nsp_head else ("masked_lm",)

    def build(self, config):
        return BertForPreTraining(config)

    def backbone(self, config):
        return BertModel(config)

    def summary(self, config) -> str:
        return "pooler" if config.pooler else "first_token"

    def backbone_train_flops(self, config, *, tokens, **lengths):
        d = config.hidden_size
        per_layer = 4 * d * d + feed_forward_params(d, config.intermediate_size)
        flops = transformer_layer_train_flops(tokens=tokens, keys=tokens, matmul_params=config.num_layers * per_layer,
                                              num_layers=config.num_layers, attention_width=d)
        return flops + (6.0 * d * d if config.pooler else 0.0)  # the pooler reads one token per row

    def lm_head_matmul_params(self, config):
        return config.hidden_size * config.hidden_size + config.vocab_size * config.hidden_size  # transform + tied


BERT = BertFamily("bert", BertConfig, BERT_SIZES)
ROBERTA = BertFamily("roberta", BertConfig, ROBERTA_SIZES, defaults=ROBERTA_COMMON, text_style="roberta")
