"""BERT's pretraining: masked LM + next-sentence prediction (`mlm_nsp`).

Each example is a sentence pair `[CLS] A [SEP] B [SEP]` from one document (jaxlm.data.pairing), B the true
continuation or (half the time) sentences of another document, masked like `mlm`. The pairs are drawn per
global example index (before the process slice), so every process and every resume sees the same pair and mask
for an index. Loss: mean MLM cross-entropy + mean NSP cross-entropy on the pooled [CLS].
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import grain
import jax.numpy as jnp
import numpy as np

from jaxlm.data import pipeline
from jaxlm.data.pairing import TokenizedDocuments, make_sentence_pair
from jaxlm.objectives import losses
from jaxlm.objectives.mlm import MaskBatch, MaskedLM, masked_lm_loss, masked_lm_outputs

SALT_PAIRS = pipeline.SALT_EXAMPLE


@dataclasses.dataclass
class SentencePairExample:
    """global example index -> sentence pair (random next with prob 1/2) -> masked row."""

    documents: TokenizedDocuments
    seq_len: int
    masker: MaskBatch
    examples_per_document: int = 1

    def __call__(self, example_index, rng: np.random.Generator):
        doc_index = int(example_index) // self.examples_per_document
        tok, stats = self.masker.tokenizer, self.documents.stats
        if not self.documents.sentences(doc_index):
            if stats is not None:
                stats.add("empty_skipped")
            return None  # an empty document makes no example (grain drops the None)
        if stats is not None:
            stats.add("documents")
        pair = make_sentence_pair(self.documents, int(doc_index), rng, max_length=self.seq_len, cls_id=tok.cls_id,
                                  sep_id=tok.sep_id, pad_id=tok.pad_id)
        out = {k: pair[k] for k in ("token_types", "segment_ids", "positions")}
        out["nsp_labels"] = np.int32(pair["nsp_labels"])
        out.update(self.masker.mask(pair["inputs"], rng))
        return out


@dataclasses.dataclass(frozen=True)
class MaskedLMWithNSP(MaskedLM):
    name: ClassVar[str] = "mlm_nsp"
    needs_heads: ClassVar[tuple[str, ...]] = ("masked_lm", "next_sentence")
    min_seq_len: ClassVar[int] = 8

    # Sentence pairs drawn from each document per epoch (each with its own random A chunk, label and mask; BERT's
    # create_instances_from_document walks a document in several chunks for the same reason).
    pairs_per_document: int = 1

    def __post_init__(self):
        super().__post_init__()
        if self.pairs_per_document < 1:
            raise ValueError(f"config.data.pairs_per_document={self.pairs_per_document} must be >= 1")

    def batch_spec(self, batch_size):
        return {**super().batch_spec(batch_size), "nsp_labels": ((batch_size,), np.dtype(np.int32))}

    def dataset(self, source, tokenizer, options):
        documents = TokenizedDocuments(source, tokenizer, options.text_key, options.stats)
        per_document = self.pairs_per_document
        ds = pipeline.epochs(grain.MapDataset.range(len(source) * per_document), options)
        # Before the process slice: the rng is keyed by the *global* example index.
        ds = ds.random_map(SentencePairExample(documents, self.seq_len, self.masker(tokenizer), per_document),
                           seed=pipeline.derive_seed(options.seed, SALT_PAIRS))
        it = pipeline.shard(ds, options).to_iter_dataset(options.grain_read_options)
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def loss_fn(self, model):
        config = self.loss

        def loss_fn(params, batch, rng):
            outputs = masked_lm_outputs(model, params, batch, rng)
            loss, metrics = masked_lm_loss(outputs, batch, config)
            segment_ids = batch.get("segment_ids")  # all-padding rows (eval's last batch) count 0
            real_rows = jnp.ones(batch["nsp_labels"].shape, bool) if segment_ids is None else segment_ids[:, 0] > 0
            nsp_loss, nsp = losses.weighted_mean_cross_entropy(outputs["nsp_logits"], batch["nsp_labels"],
                                                               real_rows.astype(jnp.float32))
            loss = loss + nsp_loss
            return loss, {**metrics, "loss": loss, "nsp_loss": nsp_loss, "nsp_accuracy": nsp["accuracy"]}

        return loss_fn

    def train_flops_per_example(self, family, model_config):
        return super().train_flops_per_example(family, model_config) + 6.0 * model_config.hidden_size * 2
