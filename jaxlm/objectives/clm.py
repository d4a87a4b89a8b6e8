"""Causal language modelling (GPT-2, `clm`): next-token prediction over documents packed into rows.

Rows pack (input, target) pairs, concatenated across documents and cut every seq_len tokens: a document's EOS
appears only as the target of its last real token, weights are 0 on padding only, and no target is lost where
a long document is cut across rows (positions restart at 0 in the continuation, like every packed segment).
Segment ids keep documents apart in attention.

Batch (B = batch size, L = seq_len): inputs, targets, segment_ids, positions [B,L] int32; weights [B,L] float32.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from jaxlm.data import corpus, pipeline
from jaxlm.data.packing import concat_then_split
from jaxlm.objectives import losses
from jaxlm.objectives.base import LossConfig, Objective

CLM_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


@dataclasses.dataclass
class NextTokenPairs:
    """record -> {'inputs': ids, 'targets': ids shifted} for one document + EOS (None if empty)."""

    tokenizer: object
    text_key: str
    seq_len: int
    stats: corpus.DataStats | None

    def __call__(self, record):
        text = corpus.record_text(record, self.text_key, self.stats)
        ids = np.asarray(self.tokenizer.encode(text) + [self.tokenizer.eos_id], np.int32)
        if len(ids) < 2:
            if self.stats is not None:
                self.stats.add("empty_skipped")
            return None
        if self.stats is not None:
            self.stats.add("documents")
            if len(ids) - 1 > self.seq_len:
                self.stats.add("long_split")
        return {"inputs": ids[:-1], "targets": ids[1:]}


def clm_row(row: dict) -> dict:
    """A packed row of grain's concat-then-split -> the CLM batch keys."""
    return {"inputs": row["inputs"], "targets": row["targets"],
            "weights": (row["targets_segment_ids"] > 0).astype(np.float32),
            "segment_ids": row["inputs_segment_ids"], "positions": row["inputs_positions"]}


def causal_lm_loss(model, config: LossConfig = LossConfig()):
    """loss_fn over a decoder LM: next-token CE over `targets` weighted by `weights` (0 on padding). With
    `config.logits_chunk_size` the vocabulary projection runs in chunks (no [B,L,V] logits). Also the loss of
    GPT-2's text-to-text fine-tuning, whose weights cover the target tokens only."""

    def loss_fn(params, batch, rng):
        kwargs = dict(segment_ids=batch.get("segment_ids"), positions=batch.get("positions"),
                      deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})
        def forward(return_hidden):
            return model.apply({"params": params}, batch["inputs"], return_hidden=return_hidden, **kwargs)

        return losses.lm_cross_entropy(forward, lambda: model.output_embedding(params), batch["targets"],
                                       batch["weights"], config)

    return loss_fn


@dataclasses.dataclass(frozen=True)
class CausalLM(Objective):
    name: ClassVar[str] = "clm"
    needs_heads: ClassVar[tuple[str, ...]] = ("causal_lm",)

    def check_tokenizer(self, tokenizer):
        _ = tokenizer.eos_id  # raises naming the tokenizer file when it has no EOS

    def batch_spec(self, batch_size):
        return {k: ((batch_size, self.seq_len), np.dtype(np.float32 if k == "weights" else np.int32))
                for k in CLM_KEYS}

    def dataset(self, source, tokenizer, options):
        ds = pipeline.documents(source, options).map(NextTokenPairs(tokenizer, options.text_key, self.seq_len,
                                                                    options.stats))
        it = concat_then_split(ds.to_iter_dataset(options.grain_read_options),
                               {"inputs": self.seq_len, "targets": self.seq_len}).map(clm_row)
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def loss_fn(self, model):
        return causal_lm_loss(model, self.loss)

    def train_flops_per_example(self, family, model_config):
        return (family.backbone_train_flops(model_config, tokens=self.seq_len)
                + family.lm_head_train_flops(model_config, self.seq_len))
