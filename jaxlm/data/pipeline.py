"""grain input pipelines: the stages every objective's stream shares, around the objective's own transform.

    source (random access, TFDS array_record) -> shuffle(seed) -> repeat -> slice(process_index::process_count)
      -> the objective's stages (tokenize, pack / pair, mask / corrupt / permute; jaxlm.objectives)
      -> batch -> finalize (dtypes and shapes of the objective's batch spec) -> [worker processes]

Resumable bit for bit: every random choice is a function of (seed, position), never of the iterator's
history. Shuffling is grain's index shuffle; per-example randomness uses `MapDataset.random_map` (rng from
(seed, global example index)) and per-batch randomness `IterDataset.random_map` (rng from (seed, process,
element counter); the counter is in the state); grain's packers checkpoint the parent position they started
the current pack from.

Iterator state (`it.get_state()`): a JSON-serialisable nested dict (grain's own format). `set_state` on an
iterator built with the same arguments (same data, tokenizer, seed, process_index/count, worker_count) gives
the same batches. Host batches are dicts of fixed-shape numpy arrays, per process (B = batch_size / process
count); padding rows (an eval set's last batch) have segment_ids == 0 everywhere and zero weights.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from jaxlm.data import corpus

Spec = dict[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape, dtype) of a host batch
SALT_SHUFFLE, SALT_EXAMPLE, SALT_BATCH = 1, 2, 3


def derive_seed(seed: int, *salt: int) -> int:
    """A uint32 seed for one random stage, so stages and processes never share a stream."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """How an objective's stream reads its source: everything that is not the objective's own setting.

    batch_size: per process. num_epochs: None repeats forever (each epoch reshuffled).
    process_index / process_count: this process reads documents i with i % count == index of the (globally
      shuffled) epoch order, so processes never read the same document in an epoch.
    worker_count: grain worker processes (0 = in-process); resume needs the same value.
    drop_remainder: False pads a short last batch with all-padding rows (one pass over an eval set).
    stats: counts documents / empty / invalid UTF-8 / long-split as the stream reads them (in-process only).
    """
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    process_index: int = 0
    process_count: int = 1
    worker_count: int = 0
    drop_remainder: bool = True
    text_key: str = corpus.TEXT_KEY
    stats: corpus.DataStats | None = None
    read_options: Any = None

    def __post_init__(self):
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"pipeline: process_index={self.process_index} not in [0, process_count="
                             f"{self.process_count})")
        if self.batch_size < 1:
            raise ValueError(f"pipeline: batch_size={self.batch_size} must be >= 1 (per process)")

    @property
    def grain_read_options(self) -> grain.ReadOptions:
        return self.read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)

    def mask_seed(self, seed_salt: int = SALT_BATCH) -> int:
        """The seed of a per-batch random stage of this process."""
        return derive_seed(self.seed, seed_salt, self.process_index)


def resolve_source(source: str | Sequence, split: str, data_dir=None) -> Sequence:
    """A TFDS name read from data_dir/split, or a random-access sequence of records as it is; never empty."""
    src = corpus.load_data_source(source, split, data_dir) if isinstance(source, str) else source
    if len(src) == 0:
        raise ValueError(f"pipeline: source {source!r} split {split!r} is empty")
    return src


def epochs(ds: grain.MapDataset, options: StreamOptions) -> grain.MapDataset:
    """Shuffled by (seed, epoch) and repeated num_epochs times (forever if None)."""
    if options.shuffle:
        ds = ds.shuffle(seed=derive_seed(options.seed, SALT_SHUFFLE))
    return ds if options.num_epochs == 1 else ds.repeat(options.num_epochs)


def shard(ds: grain.MapDataset, options: StreamOptions) -> grain.MapDataset:
    """This process's elements: every process_count-th, starting at process_index."""
    return ds.slice(slice(options.process_index, None, options.process_count))


def documents(src: Sequence, options: StreamOptions) -> grain.MapDataset:
    """The records of this process, epoch after epoch."""
    return shard(epochs(grain.MapDataset.source(src), options), options)


@dataclasses.dataclass
class TokenizeDocument:
    """record -> {key: ids} of one document (+ EOS if `eos_id` is given); None (dropped) if empty."""

    tokenizer: object
    text_key: str
    stats: corpus.DataStats | None
    eos_id: int | None = None
    key: str = "tokens"

    def __call__(self, record):
        ids = self.tokenizer.encode(corpus.record_text(record, self.text_key, self.stats))
        if not ids:
            if self.stats is not None:
                self.stats.add("empty_skipped")
            return None
        if self.stats is not None:
            self.stats.add("documents")
        if self.eos_id is not None:
            ids = ids + [self.eos_id]
        return {self.key: np.asarray(ids, np.int32)}


@dataclasses.dataclass
class Finalize:
    """Casts a batch to the spec's dtypes, pads a short final batch with zero rows, checks every shape."""

    name: str
    spec: Spec
    pad_to_batch_size: bool

    def __call__(self, batch: dict) -> dict:
        out = {}
        for key, (shape, dtype) in self.spec.items():
            if key not in batch:
                raise KeyError(f"pipeline ({self.name}): batch lacks {key!r}; has {sorted(batch)}")
            x = np.asarray(batch[key]).astype(dtype, copy=False)
            if self.pad_to_batch_size and 0 < x.shape[0] < shape[0]:
                x = np.concatenate([x, np.zeros((shape[0] - x.shape[0],) + x.shape[1:], dtype)])
            if x.shape != shape:
                raise ValueError(f"pipeline ({self.name}): {key} has shape {x.shape}, spec {shape}")
            out[key] = x
        return out


def finalize(it: grain.IterDataset, name: str, spec: Spec, options: StreamOptions) -> grain.IterDataset:
    """The last stages of every stream: fixed dtypes and shapes, then grain's worker processes if asked."""
    it = it.map(Finalize(name, spec, pad_to_batch_size=not options.drop_remainder))
    if options.worker_count > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags (defaults are fine)
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.worker_count))
    logging.info("pipeline %s: batch=%d, process %d/%d", name, options.batch_size, options.process_index,
                 options.process_count)
    return it


def empty_batch(spec: Spec) -> dict[str, np.ndarray]:
    """All-padding batch (zero weights everywhere), e.g. to fill a fixed number of eval steps."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in spec.items()}


class FixedBatches(grain.IterDataset):
    """Exactly num_batches batches: the data's own, then all-padding ones (so every host of a multi-host eval
    runs the same number of steps)."""

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
