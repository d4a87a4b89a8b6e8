"""A model family behind one interface: what the rest of jaxlm needs to know about BERT, GPT-2, T5, ...

Objectives, fine-tuning tasks, decoding, the converter and the FLOPs count never ask which family a model is:
they ask its `ModelFamily` (from `jaxlm.models.family_of(config)`; every config dataclass names its family in
its `family` field). Adding a family is one module in jaxlm/models/ (config dataclass, Flax modules and a
ModelFamily subclass), its Hugging Face table in jaxlm/convert/ and one line in jaxlm/models/registry.py.

Kinds (what a family's pretraining model reads and writes):
    encoder          bidirectional over one sequence (BERT, RoBERTa, XLNet): every fine-tuning head applies
    decoder          causal over one sequence (GPT-2): sequence-level heads and text generation
    encoder_decoder  an encoder plus a causal decoder that attends to it (T5): text to text

FLOPs are counted analytically from the config (DESIGN.md section 6): 6 x matmul weights per token for
training (forward + backward), plus 12 x layers x attention width x keys per query token for the attention
scores and values. Lookups (token, position, type embeddings) cost nothing; a tied output layer is a matmul
and is counted where the objective or task projects onto the vocabulary.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping

import flax.linen as nn
import jax.numpy as jnp

KINDS = ("encoder", "decoder", "encoder_decoder")
# How a sequence-level head (classification, regression, embeddings) reads a backbone's output:
#   pooler           the backbone's pooled [CLS] (BERT: dense + tanh, trained by NSP)
#   first_token      a new dense + tanh on the first token (RoBERTa's classification head)
#   last_token       the last real token, no layer of its own (GPT-2)
#   last_token_dense a new dense + tanh on the last real token (XLNet's sequence summary)
SEQUENCE_SUMMARIES = ("pooler", "first_token", "last_token", "last_token_dense")
# Config fields that change how a model runs, not what it computes: a fine-tuning run may set them on a
# checkpoint's model. Every field with 'dropout' in its name counts too.
RUNTIME_FIELDS = ("dtype", "param_dtype", "scan_layers", "remat_policy", "attention_impl",
                  "mem_len", "reuse_len", "bi_data")  # XLNet's recurrence: continue pretraining with a memory


def is_runtime_field(name: str) -> bool:
    return name in RUNTIME_FIELDS or "dropout" in name


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """One family (a name, its config dataclass, its named sizes) and what the rest of jaxlm asks of it."""
    name: str
    config_cls: type
    sizes: Mapping[str, Mapping[str, Any]]
    # Fields every config of the family starts from, before its size and the caller's overrides (RoBERTa's
    # vocabulary and position offset on BertConfig).
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # How fine-tuning features wrap texts in special tokens (jaxlm.tasks.features.STYLES).
    text_style: str = "bert"

    kind: ClassVar[str] = "encoder"
    # Where the pretraining model's params keep the backbone the task heads sit on ('' = the whole tree).
    backbone_key: ClassVar[str] = ""

    # ------------------------------------------------------------------ configs
    def field_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self.config_cls)]

    def make_config(self, size: str | None = None, **overrides):
        """The config of `size` with `overrides`; an unknown size or field is an error naming the valid ones."""
        fields = dict(self.defaults)
        if size:
            if size not in self.sizes:
                raise ValueError(f"unknown {self.name} size {size!r}; choose one of {list(self.sizes)}")
            fields.update(self.sizes[size])
        valid = set(self.field_names())
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise ValueError(f"unknown {self.config_cls.__name__} field(s) {unknown} for model family {self.name!r};"
                             f" valid fields: {sorted(valid - {'family'})}")
        fields.update(overrides)
        fields["family"] = self.name
        return self.config_cls(**fields)

    # ------------------------------------------------------------------ modules
    def build(self, config) -> nn.Module:
        """The pretraining model (with its LM head)."""
        raise NotImplementedError

    def backbone(self, config) -> nn.Module:
        """The module task heads sit on. Its `__call__(inputs, segment_ids, token_types, positions, *,
        deterministic)` returns (hidden [B,L,D], pooled [B,D] or None); its params equal the pretraining
        model's `backbone_key` subtree."""
        raise ValueError(f"model family {self.name!r} ({self.kind}) has no task heads; fine-tune it as text to "
                         "text (task 'seq2seq')")

    def heads(self, config) -> tuple[str, ...]:
        """The heads the pretraining model has ('masked_lm', 'next_sentence', 'causal_lm', 'seq2seq_lm',
        'permutation_lm'): what an objective checks before it trains the model."""
        return ()

    def summary(self, config) -> str:
        """How a sequence-level head reads this backbone's output (one of SEQUENCE_SUMMARIES)."""
        return "first_token"

    def hidden_dropout(self, config) -> float:
        """The backbone's dropout rate on hidden states (a task head's default)."""
        return config.hidden_dropout

    def init_inputs(self, config, batch_size: int = 1, length: int = 8) -> dict:
        """Keyword arguments for `build(config).init` (shapes only matter)."""
        return {"inputs": jnp.ones((batch_size, length), jnp.int32)}

    def max_length(self, config) -> int | None:
        """The longest sequence the model can read (a position table), or None (relative positions)."""
        table = getattr(config, "max_position_embeddings", None)
        return None if table is None else table - getattr(config, "position_offset", 0)

    # ------------------------------------------------------------------ FLOPs
    def backbone_train_flops(self, config, *, tokens: int, **lengths) -> float:
        """Training FLOPs of one example through the backbone stack(s) (no output layer), `tokens` long."""
        raise NotImplementedError

    def lm_head_matmul_params(self, config) -> int:
        """Weights the LM output layer multiplies each projected position by."""
        return config.vocab_size * config.hidden_size

    def lm_head_train_flops(self, config, positions: int) -> float:
        """Training FLOPs of projecting `positions` positions of one example onto the vocabulary."""
        return 6.0 * self.lm_head_matmul_params(config) * positions


def transformer_layer_train_flops(*, tokens: int, keys: int, matmul_params: int, num_layers: int,
                                  attention_width: int) -> float:
    """A stack of `num_layers` layers over `tokens` query tokens that see `keys` keys each: 6 x matmul params x
    tokens (forward + backward) + 12 x layers x attention width x keys x tokens (scores and values)."""
    return 6.0 * matmul_params * tokens + 12.0 * num_layers * attention_width * keys * tokens


def feed_forward_params(hidden: int, intermediate: int, gated: bool = False) -> int:
    return (3 if gated else 2) * hidden * intermediate
