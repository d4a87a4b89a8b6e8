"""Text -> rows that fill a fixed length: sentence chunks for masked LMs, packed several to a row by grain.

Packed rows use the batch format's one masking concept: `segment_ids` 1..k name the document of each token
(0 = padding) and `positions` restart at 0 per document (grain's packers write `<key>_segment_ids` and
`<key>_positions`).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
import numpy as np

from jaxlm.data import corpus


def _split_ids(ids: np.ndarray, size: int) -> list[np.ndarray]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def chunk_sentences(sentences: Sequence[np.ndarray], max_tokens: int) -> list[np.ndarray]:
    """Greedy full-sentence chunks of <= max_tokens (a longer sentence is cut into pieces)."""
    chunks, current, size = [], [], 0
    for sentence in sentences:
        for piece in _split_ids(np.asarray(sentence, np.int32), max_tokens):
            if size + len(piece) > max_tokens and current:
                chunks.append(np.concatenate(current))
                current, size = [], 0
            current.append(piece)
            size += len(piece)
    if current:
        chunks.append(np.concatenate(current))
    return chunks


@dataclasses.dataclass
class SentenceChunks:
    """record -> list of '[CLS] sentences... [SEP]' chunks of <= seq_len tokens ([] if empty): BERT's rows,
    which never cut a sentence unless it alone is longer than a row."""

    tokenizer: object
    text_key: str
    seq_len: int
    stats: corpus.DataStats | None

    def __call__(self, record):
        text = corpus.record_text(record, self.text_key, self.stats)
        sentences = [ids for ids in self.tokenizer.encode_batch(corpus.split_sentences(text)) if ids]
        if not sentences:
            if self.stats is not None:
                self.stats.add("empty_skipped")
            return []
        chunks = chunk_sentences(sentences, self.seq_len - 2)
        if self.stats is not None:
            self.stats.add("documents")
            if len(chunks) > 1:
                self.stats.add("long_split")
        cls_, sep = np.int32(self.tokenizer.cls_id), np.int32(self.tokenizer.sep_id)
        return [np.concatenate([[cls_], c, [sep]]).astype(np.int32) for c in chunks]


class OnePerChunk(grain.experimental.FlatMapTransform):
    """One document's chunk list -> one element {'inputs': chunk} per chunk."""

    max_fan_out = 1 << 20

    def flat_map(self, chunks):
        return [{"inputs": c} for c in chunks]


def first_fit_pack(it: grain.IterDataset, seq_len: int, num_bins: int) -> grain.IterDataset:
    """Chunks {'inputs': [n]} -> rows of seq_len holding several chunks (first fit over `num_bins` open rows)."""
    it = grain.experimental.FlatMapIterDataset(it, OnePerChunk())
    return grain.experimental.FirstFitPackIterDataset(it, length_struct={"inputs": seq_len}, num_packing_bins=num_bins,
                                                      shuffle_bins=False)


def concat_then_split(it: grain.IterDataset, lengths: dict[str, int]) -> grain.IterDataset:
    """Documents concatenated into one stream and cut into rows of exactly `lengths` (GPT-2's and T5's C4 rows);
    grain checkpoints the position it started the current row from."""
    return grain.experimental.ConcatThenSplitIterDataset(it, length_struct=lengths)
