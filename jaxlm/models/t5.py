"""T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"):
a pre-LN encoder-decoder with RMSNorm, no biases, unscaled attention logits (1/sqrt(d_kv) is folded into the
query initialisation) and a relative position bias computed once per stack and shared by its layers.

Two variants, one config:
- T5 v1.0 (`feed_forward_proj='relu'`, `tie_word_embeddings=True`): the output projection is the shared token
  embedding, applied to the decoder output scaled by d_model ** -0.5.
- T5 v1.1 (`'gated-gelu'`: gelu_new(x W0) * (x W1), `tie_word_embeddings=False`): a separate `lm_head`, no scaling.

Parameter names map one-to-one onto Hugging Face's T5ForConditionalGeneration (jaxlm.convert.hf_tables):
token_embeddings (shared), encoder/layers_{i}, encoder_relative_bias, encoder_norm, decoder/layers_{i},
decoder_relative_bias, decoder_norm, lm_head.

Decode mode (fast generation; `decode=True`, variables in the 'cache' collection)
---------------------------------------------------------------------------------
1. Allocate the cache: `cache = model.init(rng, encoder_inputs_BxS, decoder_inputs_BxT, decode=True)['cache']`
   (or under jax.eval_shape and then zeros); T is max_decode_length, S the encoder length, B the batch (beams
   included). Only shapes matter.
2. Encode once: `encoded = model.apply({'params': p}, encoder_inputs, encoder_segment_ids, method=model.encode)`.
3. Decoder steps: `logits, mutated = model.apply({'params': p, 'cache': cache}, tokens_BxQ, encoded=...,
   encoder_segment_ids=..., decode=True, mutable=['cache'], method=model.decode)`; `cache = mutated['cache']`.
   - The first call passes `encoded` [B,S,D]: every layer projects it to cross-attention keys/values and stores
     them in the cache (`cross_key`, `cross_value`). Later calls pass `encoded=None` and read them back. (Passing
     `encoded` again is allowed: it recomputes and re-stores them.)
   - `encoder_segment_ids` [B,S] (0 = padding) must be passed on every call when the encoder batch has padding:
     it masks the padded encoder keys.
   - Q may be 1 (one token per step) or more (a prefix at once); the first step feeds the decoder start token
     (id 0, `decoder_start_token_id`). Positions are tracked by the cache (`decode_positions/index`); pass
     `decoder_positions` [B,Q] only to override them. Self-attention is causal over the cache (all rows share
     one cache index); `decoder_segment_ids` is ignored in decode mode.
   - `return_hidden=True` gives the hidden states the output layer reads ([B,Q,D], already scaled by
     d_model**-0.5 for v1.0), e.g. to project only the last position; the EOS id is the tokenizer's
     (`config.eos_token_id` is set from it by jaxlm.pretrain; imported checkpoints carry their own).
   - `model.apply(..., encoder_inputs, tokens, decode=True, mutable=['cache'])` (`__call__`) does steps 2 and the
     first call of 3 in one go.
   Cache leaves (heads-major, see jaxlm.layers.attention): self-attention `cached_key`/`cached_value` [B,H,T,K]
   and `cache_index` [], cross-attention `cross_key`/`cross_value` [B,H,S,K], `decode_positions/index` [] and
   `decode_positions/slots` [T] (only its shape is read). Every leaf may start as zeros (e.g. from
   jax.eval_shape).
   With `scan_layers=True` the per-layer leaves gain a leading layers axis: [L,B,...] (index leaves [L]). To
   reorder or expand beams, index the batch axis of the [B,...] / [L,B,...] leaves only.
"""
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.layers import (
    BlockConfig,
    Embed,
    RelativePositionBias,
    RMSNorm,
    TransformerStack,
    combine_masks,
    make_attention_mask,
    make_causal_mask,
)
from jaxlm.layers.attention_kernel import check_attention_impl
from jaxlm.layers.blocks import LOGITS_AXES
from jaxlm.models.common import check_token_ids, to_dtype
from jaxlm.models.family import ModelFamily, feed_forward_params, transformer_layer_train_flops


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Field names as Hugging Face's T5Config (defaults: t5-small, v1.0)."""
    family: str = "t5"  # or "t5_v1_1" (gated feed-forward, untied output layer)
    vocab_size: int = 32128  # 32000 sentencepiece pieces + 100 sentinels, padded to a multiple of 128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None  # None: num_layers
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_eps: float = 1e-6
    feed_forward_proj: str = "relu"  # v1.0 'relu'; v1.1 'gated-gelu' (gelu_new, as Hugging Face maps it)
    tie_word_embeddings: bool = True  # v1.0: logits = (h * d_model**-0.5) @ shared^T; v1.1 False: lm_head
    initializer_factor: float = 1.0
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dtype: Any = "auto"  # compute dtype: bfloat16 on GPU / TPU, float32 on CPU (models.common.to_dtype)
    param_dtype: Any = "float32"
    scan_layers: bool = False
    remat_policy: str = "none"
    attention_impl: str = "auto"

    def __post_init__(self):
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj={self.feed_forward_proj!r}: expected 'ACT' or 'gated-ACT' "
                             "(e.g. 'relu', 'gated-gelu')")
        if self.family not in ("t5", "t5_v1_1"):
            raise ValueError(f"T5Config.family={self.family!r}: 't5' or 't5_v1_1'")
        check_attention_impl(self.attention_impl, "T5Config.attention_impl")

    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activations(self) -> tuple[str, ...]:
        if self.feed_forward_proj == "gated-gelu":  # Hugging Face (and T5 v1.1) mean the tanh approximation
            return ("gelu_new", "linear")
        act = self.feed_forward_proj.split("-")[-1]
        return (act, "linear") if self.is_gated else (act,)

    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    def block_config(self, decoder: bool) -> BlockConfig:
        f = self.initializer_factor
        return BlockConfig(
            hidden_size=self.d_model, num_heads=self.num_heads, head_dim=self.d_kv, mlp_dim=self.d_ff,
            num_layers=self.decoder_layers if decoder else self.num_layers, activations=self.activations,
            pre_norm=True, norm="rmsnorm", norm_eps=self.layer_norm_eps, use_bias=False, scale_logits=False,
            dropout_rate=self.dropout_rate, attention_dropout_rate=self.dropout_rate,
            mlp_dropout_rate=self.dropout_rate,
            # Mesh TF / Hugging Face initialisation: unit-variance activations without scaling the logits.
            init_stddev=f * self.d_model ** -0.5, query_init_stddev=f * (self.d_model * self.d_kv) ** -0.5,
            out_init_stddev=f * (self.num_heads * self.d_kv) ** -0.5, mlp_out_init_stddev=f * self.d_ff ** -0.5,
            attention_impl=self.attention_impl, cross_attention=decoder, scan_layers=self.scan_layers,
            remat_policy=self.remat_policy, dtype=to_dtype(self.dtype), param_dtype=to_dtype(self.param_dtype))


class DecodePositions(nn.Module):
    """Decode mode: the positions of the fed decoder tokens and of the self-attention cache's keys.

    `init` (the cache does not exist yet) sees the full [B, max_decode_length] decoder inputs and allocates
    `slots` [max_decode_length] (only its shape is read, so a cache of zeros from jax.eval_shape works); each later
    call advances `index` by the number of tokens fed.
    """

    @nn.compact
    def __call__(self, length: int, positions_BxQ=None):
        initialised = self.has_variable("cache", "index")
        index = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
        slots = self.variable("cache", "slots", lambda: jnp.zeros((length,), jnp.int8))
        key_positions = jnp.arange(slots.value.shape[0], dtype=jnp.int32)[None]
        if not initialised:
            return key_positions, key_positions
        q_positions = index.value + jnp.arange(length, dtype=jnp.int32)[None] if positions_BxQ is None \
            else positions_BxQ
        index.value = index.value + length
        return q_positions, key_positions


def _default_positions(ids_BxL, positions):
    return jnp.arange(ids_BxL.shape[1], dtype=jnp.int32)[None] if positions is None else positions


class T5ForConditionalGeneration(nn.Module):
    """encoder_inputs [B,S], decoder_inputs [B,T] (targets shifted right, starting with id 0) -> logits [B,T,V].

    Segment ids (0 = padding, 1..k = packed example) mask attention: encoder tokens attend within their segment;
    the decoder is causal (and within its segment when `decoder_segment_ids` is given); cross-attention reads the
    encoder tokens of the same segment (of any non-padding encoder token without `decoder_segment_ids`).
    `encoder_segment_ids` defaults to `encoder_inputs != pad_token_id`; the decoder has no default (its start
    token is the pad id). Positions (restarting per packed example) feed the relative position bias.
    """
    config: T5Config

    def _relative_bias(self, bidirectional: bool) -> RelativePositionBias:
        c = self.config
        return RelativePositionBias(c.num_heads, bidirectional, c.relative_attention_num_buckets,
                                    c.relative_attention_max_distance,
                                    init_stddev=c.initializer_factor * c.d_model ** -0.5,
                                    param_dtype=to_dtype(c.param_dtype))

    def _norm(self) -> RMSNorm:
        c = self.config
        return RMSNorm(epsilon=c.layer_norm_eps, dtype=to_dtype(c.dtype), param_dtype=to_dtype(c.param_dtype))

    def _setup_encoder(self):
        """The shared embeddings and the encoder (called from setup; T5EncoderModel has only these)."""
        c = self.config
        self.token_embeddings = Embed(c.vocab_size, c.d_model, init_stddev=c.initializer_factor * 1.0,
                                      dtype=to_dtype(c.dtype), param_dtype=to_dtype(c.param_dtype))
        self.encoder_relative_bias = self._relative_bias(True)
        self.encoder = TransformerStack(c.block_config(decoder=False))
        self.encoder_norm = self._norm()
        self.dropout = nn.Dropout(c.dropout_rate)

    def setup(self):
        c = self.config
        dtype, param_dtype = to_dtype(c.dtype), to_dtype(c.param_dtype)
        f = c.initializer_factor
        self._setup_encoder()
        self.decoder_relative_bias = self._relative_bias(False)
        self.decoder = TransformerStack(c.block_config(decoder=True))
        self.decoder_norm = self._norm()
        self.decode_positions = DecodePositions()
        if not c.tie_word_embeddings:
            self.lm_head = nn.Dense(
                c.vocab_size, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                kernel_init=nn.with_logical_partitioning(nn.initializers.normal(f * c.d_model ** -0.5),
                                                         ("embed", "vocab")))

    def encode(self, encoder_inputs, encoder_segment_ids=None, encoder_positions=None, *, deterministic=True):
        """[B,S] ids -> encoder outputs [B,S,D] (after the final RMSNorm), what cross-attention reads."""
        c = self.config
        check_token_ids("encoder_inputs", encoder_inputs, c.vocab_size)
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_inputs != c.pad_token_id).astype(jnp.int32)
        positions = _default_positions(encoder_inputs, encoder_positions)
        x_BxSxD = self.dropout(self.token_embeddings(encoder_inputs), deterministic=deterministic)
        bias = self.encoder_relative_bias(positions, positions)
        mask = make_attention_mask(encoder_segment_ids, encoder_segment_ids)
        hidden_BxSxD = self.encoder(x_BxSxD, mask, bias, deterministic=deterministic)
        return self.dropout(self.encoder_norm(hidden_BxSxD), deterministic=deterministic)

    def decode(self, decoder_inputs, encoded=None, encoder_segment_ids=None, decoder_segment_ids=None,
               decoder_positions=None, *, deterministic=True, decode=False, return_hidden=False):
        """[B,T] decoder ids + encoder outputs [B,S,D] -> logits [B,T,V] (or the scaled hidden states
        [B,T,D] that the output projection reads, with `return_hidden=True`). See the module docstring for
        `decode=True` (encoded may then be None after the first call)."""
        c = self.config
        check_token_ids("decoder_inputs", decoder_inputs, c.vocab_size)
        length = decoder_inputs.shape[1]
        if encoded is None and not decode:
            raise ValueError("decode: `encoded` (the encoder outputs) is required outside decode mode")
        if decode:  # causality and unfilled cache slots are masked by the KV cache
            q_positions, k_positions = self.decode_positions(length, decoder_positions)
            self_mask = None
        else:
            q_positions = k_positions = _default_positions(decoder_inputs, decoder_positions)
            segment_mask = None if decoder_segment_ids is None else make_attention_mask(decoder_segment_ids,
                                                                                        decoder_segment_ids)
            self_mask = combine_masks(make_causal_mask(length), segment_mask)
        if encoder_segment_ids is None:
            cross_mask = None
        elif decoder_segment_ids is None or decode:
            cross_mask = (encoder_segment_ids != 0)[:, None, None, :]
        else:
            cross_mask = make_attention_mask(decoder_segment_ids, encoder_segment_ids)
        bias = self.decoder_relative_bias(q_positions, k_positions)
        x_BxTxD = self.dropout(self.token_embeddings(decoder_inputs), deterministic=deterministic)
        hidden_BxTxD = self.decoder(x_BxTxD, self_mask, bias, encoded, cross_mask, deterministic=deterministic,
                                    decode=decode)
        hidden_BxTxD = self.dropout(self.decoder_norm(hidden_BxTxD), deterministic=deterministic)
        if c.tie_word_embeddings:
            hidden_BxTxD = hidden_BxTxD * jnp.asarray(c.d_model ** -0.5, hidden_BxTxD.dtype)
        if return_hidden:
            return hidden_BxTxD
        return self.logits(hidden_BxTxD)

    def logits(self, hidden_BxTxD):
        """The output layer on what `decode(..., return_hidden=True)` returns."""
        c = self.config
        logits = self.token_embeddings.attend(hidden_BxTxD) if c.tie_word_embeddings else self.lm_head(hidden_BxTxD)
        return nn.with_logical_constraint(logits, LOGITS_AXES)

    def __call__(self, encoder_inputs, decoder_inputs, encoder_segment_ids=None, decoder_segment_ids=None,
                 encoder_positions=None, decoder_positions=None, *, deterministic=True, decode=False,
                 return_hidden=False):
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_inputs != self.config.pad_token_id).astype(jnp.int32)
        encoded = self.encode(encoder_inputs, encoder_segment_ids, encoder_positions, deterministic=deterministic)
        return self.decode(decoder_inputs, encoded, encoder_segment_ids, decoder_segment_ids, decoder_positions,
                           deterministic=deterministic, decode=decode, return_hidden=return_hidden)

    def output_embedding(self, params):
        """The [V, D] matrix the logits are computed with (for chunked cross-entropy over `return_hidden`)."""
        if self.config.tie_word_embeddings:
            return params["token_embeddings"]["embedding"]
        return params["lm_head"]["kernel"].T


def shift_right(targets_BxT, decoder_start_token_id: int = 0):
    """Decoder inputs from targets: [start, t0, t1, ...] (teacher forcing), as Hugging Face's `_shift_right`."""
    start = jnp.full(targets_BxT.shape[:1] + (1,), decoder_start_token_id, targets_BxT.dtype)
    return jnp.concatenate([start, targets_BxT[:, :-1]], axis=1)


def _t5(d_model, d_ff, d_kv, num_heads, num_layers):
    return dict(d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_heads=num_heads, num_layers=num_layers)


# T5 v1.0: Raffel et al. 2020, section 3.7 and the released checkpoints (google-t5/t5-small ... t5-11b).
T5_SIZES = {
    "small": _t5(512, 2048, 64, 8, 6), "base": _t5(768, 3072, 64, 12, 12), "large": _t5(1024, 4096, 64, 16, 24),
    "3b": _t5(1024, 16384, 128, 32, 24), "11b": _t5(1024, 65536, 128, 128, 24),
}
# T5 v1.1 (google/t5-v1_1-*): gated-GELU feed-forward, untied output layer, no dropout in pretraining.
T5_V1_1_COMMON = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
T5_V1_1_SIZES = {
    "small": _t5(512, 1024, 64, 6, 8), "base": _t5(768, 2048, 64, 12, 12), "large": _t5(1024, 2816, 64, 16, 24),
    "xl": _t5(2048, 5120, 64, 32, 24), "xxl": _t5(4096, 10240, 64, 64, 24),
}


class T5EncoderModel(T5ForConditionalGeneration):
    """T5's encoder alone, the backbone of sentence embeddings (sentence-T5): its params are the seq2seq model's
    token_embeddings / encoder_relative_bias / encoder / encoder_norm, so a T5 checkpoint restores into it and
    the decoder is reported unused. Called like every backbone; returns (hidden [B,L,D], None)."""

    def setup(self):
        self._setup_encoder()

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, *, deterministic=True):
        return self.encode(inputs, segment_ids, positions, deterministic=deterministic), None


@dataclasses.dataclass(frozen=True)
class T5Family(ModelFamily):
    """An encoder-decoder: fine-tuned as text to text (its own LM head writes the answers)."""
    kind = "encoder_decoder"

    def heads(self, config):
        return ("seq2seq_lm",)

    def hidden_dropout(self, config):
        return config.dropout_rate

    def build(self, config):
        return T5ForConditionalGeneration(config)

    def backbone(self, config):
        """The encoder, for sentence embeddings (tasks retrieval / similarity); other tasks are text to text."""
        return T5EncoderModel(config)

    def init_inputs(self, config, batch_size=1, length=8, targets=4):
        return {"encoder_inputs": jnp.ones((batch_size, length), jnp.int32),
                "decoder_inputs": jnp.ones((batch_size, targets), jnp.int32)}

    def backbone_train_flops(self, config, *, tokens, targets=0, **lengths):
        """The encoder over `tokens` inputs, the decoder over `targets` (self-attention over the targets,
        cross-attention over the inputs, whose keys and values are projected once per input token)."""
        d, width = config.d_model, config.num_heads * config.d_kv
        ff = feed_forward_params(d, config.d_ff, config.is_gated)
        encoder = transformer_layer_train_flops(tokens=tokens, keys=tokens, matmul_params=config.num_layers * (
            4 * d * width + ff), num_layers=config.num_layers, attention_width=width)
        layers = config.decoder_layers
        decoder = transformer_layer_train_flops(tokens=targets, keys=targets + tokens, matmul_params=layers * (
            6 * d * width + ff), num_layers=layers, attention_width=width)
        cross_kv = 6.0 * layers * 2 * d * width * tokens if targets else 0.0  # no decoder: the encoder alone
        return encoder + decoder + cross_kv


# Text style: a text then EOS (sentence-T5's encoder input), as GPT-2's rows.
T5 = T5Family("t5", T5Config, T5_SIZES, text_style="gpt2")
T5_V1_1 = T5Family("t5_v1_1", T5Config, T5_V1_1_SIZES, defaults=T5_V1_1_COMMON, text_style="gpt2")
