"""grain input pipelines: a TFDS text source -> fixed-shape host batches for MLM, MLM+NSP, CLM or T5's span
corruption.

    source (random access) -> shuffle(seed) -> repeat -> slice(process_index::process_count) ->
      clm:     tokenize + EOS -> concat-then-split packing (grain) -> batch
      span_corruption: tokenize -> concat-then-split into raw chunks (T5's length for seq_len inputs) ->
               corrupt each chunk (random_map) -> batch
      mlm:     tokenize sentences -> '[CLS] ... [SEP]' chunks -> first-fit packing -> batch -> mask
      mlm_nsp: (before the slice) sentence pair + mask per example index -> batch

Resumable bit for bit: every random choice is a function of (seed, position), never of the
iterator's history. Shuffling is grain's index shuffle; NSP negatives and their masks use
`MapDataset.random_map` (rng from (seed, global example index)); masks of packed MLM batches and span
corruption noise use `IterDataset.random_map` (rng from (seed, process, element counter); the counter is
in the state);
grain's packers checkpoint the parent position they started the current pack from.

Iterator state (`it.get_state()`): a JSON-serialisable nested dict of str -> int / list / dict
(grain's own format for this pipeline; `json.dumps` it, or save it with
`grain.checkpoint.CheckpointSave(it)` in Orbax). `set_state` on an iterator built with the same
arguments (same data, tokenizer, seed, process_index/count, worker_count) gives the same batches.

Batch format (numpy, per process; B = batch_size, L = seq_len, P = max_predictions):
  clm:     inputs, targets, segment_ids, positions [B,L] int32; weights [B,L] float32
  mlm:     inputs, segment_ids, positions, token_types [B,L] int32;
           masked_positions, masked_targets [B,P] int32; masked_weights [B,P] float32
  mlm_nsp: the mlm keys + nsp_labels [B] int32 (0 = B follows A, 1 = random)
  span_corruption (T = targets length, T5's for L, e.g. 114 for 512; one example per row):
           inputs, segment_ids [B,L] int32 (encoder; sentinels and EOS included, 0 = padding);
           targets, decoder_inputs [B,T] int32 (decoder_inputs = targets shifted right after the
           decoder start id 0); weights [B,T] float32 (0 on padding)
Padding rows (eval's last batch) have segment_ids == 0 everywhere and zero weights.

Span corruption concatenates documents with no separator, as T5 does (its C4 task), and cuts the stream
into chunks that corrupt to exactly L inputs; only the stream's last chunk is shorter (padded).

CLM rows pack (input, target) pairs, so a document's EOS appears only as the target of its last
real token: weights are 0 on padding only, and no target is lost where a long document is cut
across rows (positions restart at 0 in the continuation, like every packed segment).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from jaxlm.data import corpus
from jaxlm.data.tokenizer import Tokenizer

OBJECTIVES = ("mlm", "mlm_nsp", "clm", "span_corruption")
_MLM_KEYS = ("inputs", "segment_ids", "positions", "token_types",
             "masked_positions", "masked_targets", "masked_weights")
BATCH_KEYS = {
    "clm": ("inputs", "targets", "weights", "segment_ids", "positions"),
    "mlm": _MLM_KEYS,
    "mlm_nsp": _MLM_KEYS + ("nsp_labels",),
    "span_corruption": ("inputs", "segment_ids", "targets", "decoder_inputs", "weights"),
}
_FLOAT_KEYS = ("weights", "masked_weights")
_DECODER_KEYS = ("targets", "decoder_inputs", "weights")  # span_corruption: [B, targets_length]


def span_corruption_lengths(seq_len: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
                            ) -> tuple[int, int]:
    """(raw tokens per chunk, targets length) for seq_len encoder inputs (T5's compute_input_and_target_lengths)."""
    from jaxlm.objectives.span_corruption import compute_input_and_target_lengths

    return compute_input_and_target_lengths(seq_len, noise_density, mean_noise_span_length)


def batch_spec(objective: str, batch_size: int, seq_len: int, max_predictions: int,
               noise_density: float = 0.15, mean_noise_span_length: float = 3.0
               ) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """key -> (shape, dtype) of a host batch: what the pipeline promises and tests check."""
    shapes = {"masked_positions": (batch_size, max_predictions),
              "masked_targets": (batch_size, max_predictions),
              "masked_weights": (batch_size, max_predictions), "nsp_labels": (batch_size,)}
    if objective == "span_corruption":
        targets_length = span_corruption_lengths(seq_len, noise_density, mean_noise_span_length)[1]
        shapes.update({k: (batch_size, targets_length) for k in _DECODER_KEYS})
    return {k: (shapes.get(k, (batch_size, seq_len)),
                np.dtype(np.float32 if k in _FLOAT_KEYS else np.int32))
            for k in BATCH_KEYS[objective]}


def default_max_predictions(seq_len: int, mask_rate: float = 0.15) -> int:
    return max(1, math.ceil(seq_len * mask_rate))


def derive_seed(seed: int, *salt: int) -> int:
    """A uint32 seed for one random stage, so stages and processes never share a stream."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


_SALT_SHUFFLE, _SALT_NSP, _SALT_MASK = 1, 2, 3


# ----------------------------------------------------------------------------- text -> tokens
def record_text(record: Any, text_key: str, stats: corpus.DataStats | None) -> str:
    """A source record ({'text': bytes}, bytes or str) -> text, invalid UTF-8 replaced."""
    if isinstance(record, dict):
        if text_key not in record:
            raise KeyError(f"pipeline: record has no {text_key!r} field (fields: {sorted(record)}); "
                           "pass text_key=")
        raw = record[text_key]
    else:
        raw = record
    if isinstance(raw, np.ndarray):
        raw = raw.item()
    return corpus.decode_text(raw, stats)


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


class TokenizedDocuments(Sequence):
    """Random access: document i -> list of its sentences as int32 token arrays (cached LRU).

    What nsp.make_sentence_pair reads (it picks random other documents for negatives, and needs
    them non-empty): an empty document reads as the next non-empty one, so bad records in a
    catalog dataset never stop a run. `sentences(i)` gives document i itself.
    """

    def __init__(self, source, tokenizer: Tokenizer, text_key: str = corpus.TEXT_KEY,
                 stats: corpus.DataStats | None = None, cache_size: int = 512):
        self.source, self.tokenizer, self.text_key = source, tokenizer, text_key
        self.stats, self.cache_size = stats, cache_size
        self._init_cache()

    def _init_cache(self):
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_cache"], state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> list[np.ndarray]:
        n = len(self)
        for offset in range(n):
            doc = self.sentences((int(index) + offset) % n)
            if doc:
                return doc
        raise ValueError(f"TokenizedDocuments: all {n} documents of {self.source!r} are empty")

    def sentences(self, index: int) -> list[np.ndarray]:
        index = int(index)
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
        text = record_text(self.source[index], self.text_key, self.stats)
        sentences = corpus.split_sentences(text)
        doc = [np.asarray(ids, np.int32) for ids in self.tokenizer.encode_batch(sentences) if ids]
        with self._lock:
            self._cache[index] = doc
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return doc


# ----------------------------------------------------------------------------- transforms
@dataclasses.dataclass
class _ClmTokenize:
    """record -> {'inputs': ids, 'targets': ids shifted} for one document + EOS (None if empty)."""

    tokenizer: Tokenizer
    text_key: str
    seq_len: int
    stats: corpus.DataStats | None

    def __call__(self, record):
        text = record_text(record, self.text_key, self.stats)
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


@dataclasses.dataclass
class _Tokenize:
    """record -> {'tokens': ids} of one document, no EOS (T5's span corruption); None if empty."""

    tokenizer: Tokenizer
    text_key: str
    stats: corpus.DataStats | None

    def __call__(self, record):
        ids = np.asarray(self.tokenizer.encode(record_text(record, self.text_key, self.stats)), np.int32)
        if self.stats is not None:
            self.stats.add("documents" if ids.size else "empty_skipped")
        return {"tokens": ids} if ids.size else None


@dataclasses.dataclass
class _SpanCorrupt:
    """A concat-then-split chunk -> one span-corrupted row; the rng comes from grain (seeded by position)."""

    sentinel_ids: tuple[int, ...]
    eos_id: int
    pad_id: int
    inputs_length: int
    targets_length: int
    noise_density: float
    mean_noise_span_length: float

    def __call__(self, chunk: dict, rng: np.random.Generator) -> dict:
        from jaxlm.objectives.span_corruption import span_corruption_example

        tokens = chunk["tokens"][chunk["tokens_segment_ids"] > 0]
        return span_corruption_example(
            tokens, rng, sentinel_ids=self.sentinel_ids, eos_id=self.eos_id, inputs_length=self.inputs_length,
            targets_length=self.targets_length, noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length, pad_id=self.pad_id, decoder_start_id=self.pad_id)


def _clm_row(row: dict) -> dict:
    return {"inputs": row["inputs"], "targets": row["targets"],
            "weights": (row["targets_segment_ids"] > 0).astype(np.float32),
            "segment_ids": row["inputs_segment_ids"], "positions": row["inputs_positions"]}


@dataclasses.dataclass
class _MlmChunks:
    """record -> list of '[CLS] sentences... [SEP]' chunks of <= seq_len tokens ([] if empty)."""

    tokenizer: Tokenizer
    text_key: str
    seq_len: int
    stats: corpus.DataStats | None

    def __call__(self, record):
        text = record_text(record, self.text_key, self.stats)
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


class _Chunks(grain.experimental.FlatMapTransform):
    """One document's chunk list -> one element per chunk."""

    max_fan_out = 1 << 20

    def flat_map(self, chunks):
        return [{"inputs": c} for c in chunks]


@dataclasses.dataclass
class _Masker:
    """mlm.mask_tokens on a row [L] or mlm.mask_batch on a batch [B, L]; the rng comes from grain
    (seeded by position in the stream)."""

    tokenizer: Tokenizer
    max_predictions: int
    mask_rate: float
    whole_word_masking: bool

    def __call__(self, inputs: np.ndarray, rng: np.random.Generator) -> dict:
        from jaxlm.objectives import mlm

        tok = self.tokenizer
        mask_fn = mlm.mask_tokens if inputs.ndim == 1 else mlm.mask_batch
        return mask_fn(
            inputs, rng, mask_id=tok.mask_id, vocab_size=tok.vocab_size,
            special_ids=tok.special_ids, max_predictions=self.max_predictions,
            mask_rate=self.mask_rate,
            word_starts=tok.word_starts(inputs) if self.whole_word_masking else None)


_MASKED_KEYS = ("inputs", "masked_positions", "masked_targets", "masked_weights")


@dataclasses.dataclass
class _MaskPackedBatch:
    """A batch of packed rows -> the MLM batch (masking vectorised over the batch)."""

    masker: _Masker

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        out = {"segment_ids": batch["inputs_segment_ids"], "positions": batch["inputs_positions"],
               "token_types": np.zeros_like(batch["inputs"])}
        masked = self.masker(batch["inputs"], rng)
        out.update({k: masked[k] for k in _MASKED_KEYS})
        return out


@dataclasses.dataclass
class _NspExample:
    """global example index -> sentence pair (random next with prob 1/2) -> masked row."""

    documents: TokenizedDocuments
    seq_len: int
    masker: _Masker
    examples_per_document: int = 1

    def __call__(self, example_index, rng: np.random.Generator):
        from jaxlm.objectives import nsp

        doc_index = int(example_index) // self.examples_per_document
        tok, stats = self.masker.tokenizer, self.documents.stats
        if not self.documents.sentences(doc_index):
            if stats is not None:
                stats.add("empty_skipped")
            return None  # an empty document makes no example (grain drops the None)
        if stats is not None:
            stats.add("documents")
        pair = nsp.make_sentence_pair(self.documents, int(doc_index), rng, max_length=self.seq_len,
                                      cls_id=tok.cls_id, sep_id=tok.sep_id, pad_id=tok.pad_id)
        masked = self.masker(pair["inputs"], rng)
        out = {k: pair[k] for k in ("token_types", "segment_ids", "positions")}
        out["nsp_labels"] = np.int32(pair["nsp_labels"])
        out.update({k: masked[k] for k in _MASKED_KEYS})
        return out


@dataclasses.dataclass
class _Finalize:
    """Casts a batch to the batch_spec dtypes, pads a short final batch, checks every shape."""

    objective: str
    spec: dict
    pad_to_batch_size: bool

    def __call__(self, batch: dict) -> dict:
        out = {}
        for key, (shape, dtype) in self.spec.items():
            if key not in batch:
                raise KeyError(f"pipeline ({self.objective}): batch lacks {key!r}; has {sorted(batch)}")
            x = np.asarray(batch[key]).astype(dtype, copy=False)
            if self.pad_to_batch_size and 0 < x.shape[0] < shape[0]:
                x = np.concatenate([x, np.zeros((shape[0] - x.shape[0],) + x.shape[1:], dtype)])
            if x.shape != shape:
                raise ValueError(f"pipeline ({self.objective}): {key} has shape {x.shape}, spec {shape}")
            out[key] = x
        return out


def empty_batch(objective: str, batch_size: int, seq_len: int, max_predictions: int,
                noise_density: float = 0.15, mean_noise_span_length: float = 3.0) -> dict:
    """All-padding batch (zero weights everywhere), e.g. to fill a fixed number of eval steps."""
    spec = batch_spec(objective, batch_size, seq_len, max_predictions, noise_density, mean_noise_span_length)
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}


# ----------------------------------------------------------------------------- pipelines
def _resolve_source(source, split: str, data_dir):
    return corpus.load_data_source(source, split, data_dir) if isinstance(source, str) else source


def make_pretraining_dataset(
    source: str | Sequence,
    *,
    tokenizer: Tokenizer,
    objective: str,
    seq_len: int,
    batch_size: int,
    split: str = "train",
    data_dir: str | None = None,
    text_key: str = corpus.TEXT_KEY,
    max_predictions: int | None = None,
    mask_rate: float = 0.15,
    whole_word_masking: bool = False,
    nsp_examples_per_document: int = 1,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    read_options: grain.ReadOptions | None = None,
    drop_remainder: bool = True,
    stats: corpus.DataStats | None = None,
) -> grain.IterDataset:
    """The pipeline as a grain IterDataset of host batches (iterate it, or use the iterator below).

    source: a TFDS name ('jaxlm_pydoc', 'jaxlm_text_files/<cfg>', 'c4/en', ...) read from
      data_dir/split, or any random-access sequence of records ({text_key: bytes|str}, bytes, str).
    batch_size: per process. num_epochs: None repeats forever (each epoch reshuffled).
    process_index/process_count: this process reads documents i with i % count == index of the
      (globally shuffled) epoch order, so processes never read the same document in an epoch.
    worker_count: grain worker processes (0 = in-process); resume needs the same value.
    nsp_examples_per_document: mlm_nsp makes this many pairs per document per epoch (each with its own
      random A chunk, label and mask; BERT's create_instances_from_document walks a document in
      several chunks for the same reason); keeps small corpora from being one batch per epoch.
    noise_density, mean_noise_span_length: span_corruption's fraction of tokens dropped and mean span length
      (T5: 0.15 and 3); seq_len is the encoder length, the targets length follows from them. The tokenizer
      needs sentinels (train it with num_sentinels=100).
    stats: counts documents / empty / invalid UTF-8 / long-split as the pipeline reads them
      (in-process only: with worker_count > 0 the counting happens in the workers).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"pipeline: objective must be one of {OBJECTIVES}, got {objective!r}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"pipeline: process_index={process_index} not in [0, process_count={process_count})")
    min_len = 8 if objective == "mlm_nsp" else 3
    if seq_len < min_len or batch_size < 1:
        raise ValueError(f"pipeline: seq_len={seq_len} (>= {min_len}) and batch_size={batch_size} (>= 1) too small")
    max_predictions = max_predictions or default_max_predictions(seq_len, mask_rate)
    src = _resolve_source(source, split, data_dir)
    if len(src) == 0:
        raise ValueError(f"pipeline: source {source!r} split {split!r} is empty")
    read_options = read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)
    masker = _Masker(tokenizer, max_predictions, mask_rate, whole_word_masking)

    def front(ds: grain.MapDataset) -> grain.MapDataset:
        if shuffle:
            ds = ds.shuffle(seed=derive_seed(seed, _SALT_SHUFFLE))
        return ds if num_epochs == 1 else ds.repeat(num_epochs)

    def shard(ds: grain.MapDataset) -> grain.MapDataset:
        return ds.slice(slice(process_index, None, process_count))

    if objective == "mlm_nsp":
        documents = TokenizedDocuments(src, tokenizer, text_key, stats)
        if nsp_examples_per_document < 1:
            raise ValueError(f"pipeline: nsp_examples_per_document={nsp_examples_per_document} must be >= 1")
        ds = front(grain.MapDataset.range(len(src) * nsp_examples_per_document))
        # Before the process slice: the rng is keyed by the *global* example index.
        ds = ds.random_map(_NspExample(documents, seq_len, masker, nsp_examples_per_document),
                           seed=derive_seed(seed, _SALT_NSP))
        it = shard(ds).to_iter_dataset(read_options)
    else:
        ds = shard(front(grain.MapDataset.source(src)))
        mask_seed = derive_seed(seed, _SALT_MASK, process_index)
        if objective == "span_corruption":
            chunk_length, targets_length = span_corruption_lengths(seq_len, noise_density, mean_noise_span_length)
            from jaxlm.objectives.span_corruption import noise_span_counts
            needed = noise_span_counts(chunk_length, noise_density, mean_noise_span_length)[1]
            if len(tokenizer.sentinel_ids) < needed:
                raise ValueError(f"pipeline (span_corruption): {tokenizer!r} has {len(tokenizer.sentinel_ids)} "
                                 f"sentinel tokens (<extra_id_N>) but seq_len={seq_len} makes {needed} noise spans "
                                 "per row; train the tokenizer with num_sentinels=100 (config.data."
                                 "tokenizer_num_sentinels)")
            ds = ds.map(_Tokenize(tokenizer, text_key, stats))
            it = grain.experimental.ConcatThenSplitIterDataset(ds.to_iter_dataset(read_options),
                                                               length_struct={"tokens": chunk_length})
            it = it.random_map(_SpanCorrupt(tuple(tokenizer.sentinel_ids), tokenizer.eos_id, tokenizer.pad_id,
                                            seq_len, targets_length, noise_density, mean_noise_span_length),
                               seed=mask_seed)
        elif objective == "clm":
            ds = ds.map(_ClmTokenize(tokenizer, text_key, seq_len, stats))
            it = grain.experimental.ConcatThenSplitIterDataset(
                ds.to_iter_dataset(read_options), length_struct={"inputs": seq_len, "targets": seq_len})
            it = it.map(_clm_row)
        else:
            ds = ds.map(_MlmChunks(tokenizer, text_key, seq_len, stats))
            it = grain.experimental.FlatMapIterDataset(ds.to_iter_dataset(read_options), _Chunks())
            it = grain.experimental.FirstFitPackIterDataset(
                it, length_struct={"inputs": seq_len}, num_packing_bins=batch_size, shuffle_bins=False)
            it = it.batch(batch_size, drop_remainder=drop_remainder)
            it = it.random_map(_MaskPackedBatch(masker), seed=mask_seed)
    if objective != "mlm":
        it = it.batch(batch_size, drop_remainder=drop_remainder)
    spec = batch_spec(objective, batch_size, seq_len, max_predictions, noise_density, mean_noise_span_length)
    it = it.map(_Finalize(objective, spec, pad_to_batch_size=not drop_remainder))
    if worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults are fine)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    logging.info("pipeline %s: %s split=%s, %d records, seq_len=%d, batch=%d, process %d/%d",
                 objective, source if isinstance(source, str) else type(source).__name__, split,
                 len(src), seq_len, batch_size, process_index, process_count)
    return it


def make_pretraining_iterator(source: str | Sequence, **kwargs) -> grain.DatasetIterator:
    """`iter(make_pretraining_dataset(...))`: yields host batches; get_state()/set_state() resume.

    Same arguments as make_pretraining_dataset.
    """
    return iter(make_pretraining_dataset(source, **kwargs))


class _FixedBatchesIterDataset(grain.IterDataset):
    """Exactly num_batches batches: the data's own, then all-padding ones (multi-host eval)."""

    def __init__(self, parent: grain.IterDataset, num_batches: int, empty: dict):
        super().__init__(parent)
        self._num_batches, self._empty = num_batches, empty

    def __iter__(self):
        return _FixedBatchesIterator(self._parent.__iter__(), self._num_batches, self._empty)


class _FixedBatchesIterator(grain.DatasetIterator):
    def __init__(self, parent, num_batches, empty):
        super().__init__(parent)
        self._num_batches, self._empty, self._emitted = num_batches, empty, 0

    def __next__(self):
        if self._emitted >= self._num_batches:
            raise StopIteration
        self._emitted += 1
        try:
            return next(self._parent)
        except StopIteration:
            return {k: v.copy() for k, v in self._empty.items()}

    def get_state(self):
        return {"parent": self._parent.get_state(), "emitted": self._emitted}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._emitted = state["emitted"]


def make_eval_iterator(
    source: str | Sequence,
    *,
    tokenizer: Tokenizer,
    objective: str,
    seq_len: int,
    batch_size: int,
    split: str = "validation",
    num_batches: int | None = None,
    seed: int = 0,
    **kwargs,
) -> grain.DatasetIterator:
    """One pass over `split`, no shuffle, fixed masks (seeded); the last batch padded, not dropped.

    num_batches: exactly this many batches (cut short, or filled with all-padding batches); set it
      in multi-host eval so every process runs the same number of steps. None: until the data ends.
    Other keyword arguments as make_pretraining_dataset (process_index, data_dir, ...).
    """
    it = make_pretraining_dataset(source, tokenizer=tokenizer, objective=objective, seq_len=seq_len,
                                  batch_size=batch_size, split=split, seed=seed, shuffle=False,
                                  num_epochs=1, drop_remainder=False, **kwargs)
    if num_batches is not None:
        max_predictions = kwargs.get("max_predictions") or default_max_predictions(
            seq_len, kwargs.get("mask_rate", 0.15))
        noise = {k: kwargs[k] for k in ("noise_density", "mean_noise_span_length") if k in kwargs}
        it = _FixedBatchesIterDataset(it, num_batches,
                                      empty_batch(objective, batch_size, seq_len, max_predictions, **noise))
    return iter(it)
