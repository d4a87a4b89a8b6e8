"""What the decoding loops need from a model: a cache, and one incremental step that returns next-token logits.

The loops in `jaxlm.decoding.search` see a model only through `DecoderAdapter`, so any family with a KV-cache
decode mode plugs in by writing an adapter:

- decoder-only (a family of kind 'decoder', GPT-2): the prompt is prefilled into the self-attention cache in
  one `step`, then one token per `step`. `CausalLMDecoder` below.
- encoder-decoder (kind 'encoder_decoder', T5): the adapter also sets `is_encoder_decoder = True`,
  `decoder_start_id`, and implements `encode(params, tokens_BxS, mask_BxS) -> context` (encoder outputs + mask,
  any pytree with a leading batch axis). The loop then encodes the "prompt", starts every row's decoder from
  `decoder_start_id`, and passes `context` to every `step` (beam search repeats it per beam).
  `EncoderDecoderLMDecoder` below: its first step (`prefill=True`) projects the encoder outputs into the
  cross-attention cache, later steps read them back.

`adapter_for(config)` picks the adapter by the family's kind. What the adapters ask of the model: decoder
`__call__(inputs, positions=, decode=True, decode_mask=, return_hidden=True)`; encoder-decoder `encode` and
`decode(..., decode=True, return_hidden=True)`; both a `logits(hidden)` method (the output layer).

Cache slots are shared across rows (the attention layer keeps one scalar `cache_index`), so a row's padding
stays in the cache and is masked out through `valid_BxS` (which slots hold real tokens), while each row carries
its own `positions`. This handles left- and right-padded prompts with the same code.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from jaxlm.models import FAMILIES, build_model, family_of

Cache = Any
UNBOUNDED = 1 << 30


class DecoderAdapter(Protocol):
    vocab_size: int
    max_length: int  # the most cache slots (prompt + new tokens) the model can address
    is_encoder_decoder: bool

    def init_cache(self, batch_size: int, max_length: int, context: Any = None) -> Cache:
        """An empty cache for `batch_size` rows and `max_length` slots (zeros; no parameters computed)."""

    def step(self, params, cache: Cache, tokens_BxT, positions_BxT, valid_BxS, select_B=None,
             context: Any = None, prefill: bool = False) -> tuple[jax.Array, Cache]:
        """Feeds T tokens at the cache's next T slots; returns float32 logits [B,V] of the query at index
        `select_B` (default: the last one) and the updated cache. valid_BxS: True on the slots holding real
        tokens (prompt padding False); causality is added by the attention layer. `prefill` (static): the
        first call on a fresh cache."""

    def reorder_cache(self, cache: Cache, indices_N) -> Cache:
        """Rows `indices_N` of the cache (beam search: parents of the surviving beams; also used to repeat
        every row num_beams times)."""


def take_cache_rows(cache: Cache, indices_N) -> Cache:
    """Gathers batch rows of every key/value-like cache leaf. Leaves are 4-D arrays with batch first
    (self-attention [B,H,S,K], cross-attention [B,S,H,K]; [layers,B,...] 5-D when layers are scanned), so the
    batch axis is ndim-4; scalar/1-D counters (cache_index) are shared by all rows and left alone."""
    def take(x):
        if x.ndim < 4:
            return x
        return jnp.take(x, indices_N, axis=x.ndim - 4)
    return jax.tree.map(take, cache)


def _zeros_like_shapes(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


@dataclasses.dataclass(frozen=True)
class CausalLMDecoder:
    """A decoder-only LM (GPT-2) in decode mode. Hashable (compares by config), so it can be a static jit
    argument."""
    config: Any
    is_encoder_decoder = False

    @property
    def model(self):
        return build_model(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_length(self) -> int:
        return family_of(self.config).max_length(self.config) or UNBOUNDED

    def init_cache(self, batch_size, max_length, context=None):
        ids = jnp.zeros((batch_size, max_length), jnp.int32)
        shapes = jax.eval_shape(lambda: self.model.init(jax.random.key(0), ids, decode=True))["cache"]
        return _zeros_like_shapes(shapes)

    def step(self, params, cache, tokens_BxT, positions_BxT, valid_BxS, select_B=None, context=None,
             prefill=False):
        model = self.model
        hidden_BxTxD, mutated = model.apply(
            {"params": params, "cache": cache}, tokens_BxT, positions=positions_BxT, decode=True,
            decode_mask=valid_BxS[:, None, None, :], return_hidden=True, mutable=["cache"])
        hidden_BxD = _select(hidden_BxTxD, select_B)
        # Project only the selected position: a prefill of B x P tokens never builds B x P x V logits.
        logits_BxV = model.apply({"params": params}, hidden_BxD[:, None], method="logits")[:, 0]  # [B,1,D]: the
        # logits' sharding constraint names batch, length and vocab
        return logits_BxV.astype(jnp.float32), mutated["cache"]

    def reorder_cache(self, cache, indices_N):
        return take_cache_rows(cache, indices_N)


@dataclasses.dataclass(frozen=True)
class EncoderDecoderLMDecoder:
    """An encoder-decoder (T5): the prompt is the encoder input; decoding starts from decoder_start_token_id.

    context = {'encoded': [B,S,D], 'segment_ids': [B,S]} (prompt padding -> segment 0, masked in
    cross-attention). The cache holds the decoder's self-attention K/V, the cross-attention K/V (written by the
    prefill step, read by later steps) and the decoder positions; all per-row leaves are [B,...] or [L,B,...].
    """
    config: Any
    is_encoder_decoder = True
    max_length = UNBOUNDED  # T5's relative position buckets: no position table to outgrow

    @property
    def model(self):
        return build_model(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def decoder_start_id(self) -> int:
        return self.config.decoder_start_token_id

    def encode(self, params, tokens_BxS, mask_BxS):
        segment_ids_BxS = mask_BxS.astype(jnp.int32)
        encoded = self.model.apply({"params": params}, tokens_BxS, segment_ids_BxS, method="encode")
        return {"encoded": encoded, "segment_ids": segment_ids_BxS}

    def init_cache(self, batch_size, max_length, context=None):
        if context is None:
            raise ValueError("EncoderDecoderLMDecoder.init_cache needs the context (encoder outputs) to size the "
                             "cross-attention cache")
        source_len = context["encoded"].shape[1]
        shapes = jax.eval_shape(lambda: self.model.init(
            jax.random.key(0), jnp.ones((batch_size, source_len), jnp.int32),
            jnp.zeros((batch_size, max_length), jnp.int32), decode=True))["cache"]
        return _zeros_like_shapes(shapes)

    def step(self, params, cache, tokens_BxT, positions_BxT, valid_BxS, select_B=None, context=None,
             prefill=False):
        model = self.model
        hidden_BxTxD, mutated = model.apply(
            {"params": params, "cache": cache}, tokens_BxT, context["encoded"] if prefill else None,
            context["segment_ids"], decoder_positions=positions_BxT, decode=True, return_hidden=True,
            mutable=["cache"], method="decode")
        hidden_BxD = _select(hidden_BxTxD, select_B)
        logits_BxV = model.apply({"params": params}, hidden_BxD[:, None], method="logits")[:, 0]
        return logits_BxV.astype(jnp.float32), mutated["cache"]

    def reorder_cache(self, cache, indices_N):
        return take_cache_rows(cache, indices_N)


def _select(x_BxTxD, select_B):
    if select_B is None:
        return x_BxTxD[:, -1]
    return jnp.take_along_axis(x_BxTxD, select_B[:, None, None].astype(jnp.int32), axis=1)[:, 0]


ADAPTERS = {"decoder": CausalLMDecoder, "encoder_decoder": EncoderDecoderLMDecoder}


def adapter_for(config) -> DecoderAdapter:
    """The adapter of a model config, by its family's kind (decoder -> CausalLMDecoder, encoder-decoder ->
    EncoderDecoderLMDecoder); an encoder (BERT) writes no text."""
    family = family_of(config)
    if family.kind not in ADAPTERS:
        writers = sorted(name for name, f in FAMILIES.items() if f.kind in ADAPTERS)
        raise ValueError(f"model family {family.name!r} is an {family.kind}: it does not generate text; "
                         f"generation supports the families {writers}")
    return ADAPTERS[family.kind](config)

