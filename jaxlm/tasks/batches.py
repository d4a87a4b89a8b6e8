"""Feature sets -> batches: one pass in order (evaluation, prediction) or epoch after epoch, reshuffled and
resumable (training). A feature set is a dict of numpy arrays that share the leading dimension N."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def num_rows(features: dict[str, np.ndarray]) -> int:
    sizes = {key: len(value) for key, value in features.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"features disagree on the number of rows: {sizes}")
    return next(iter(sizes.values()), 0)


def num_batches(num_features: int, batch_size: int, drop_remainder: bool = False) -> int:
    return num_features // batch_size if drop_remainder else -(-num_features // batch_size)


def _padding_value(key: str):
    return -1 if key.endswith("_index") else 0


def iterate_batches(features: dict[str, np.ndarray], batch_size: int, *, shuffle: bool = False, seed: int = 0,
                    epoch: int = 0, drop_remainder: bool = False, process_index: int = 0,
                    process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Batches of `batch_size` rows (the global batch), in order or shuffled by a permutation that depends only on
    (seed, epoch). The final short batch is padded to full size: padding rows are 0 everywhere (so
    example_weights / label_weights are 0) and -1 in *_index keys; drop_remainder drops it instead.

    process_index / process_count: each process gets its contiguous slice of every global batch
    (batch_size / process_count rows), for jax.make_array_from_process_local_data.
    """
    n = num_rows(features)
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of process_count={process_count}")
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    local = batch_size // process_count
    lo, hi = process_index * local, (process_index + 1) * local
    for b in range(num_batches(n, batch_size, drop_remainder)):
        rows = order[b * batch_size:(b + 1) * batch_size][lo:hi]
        batch = {}
        for key, value in features.items():
            part = value[rows]
            if len(rows) < local:
                pad = np.full((local - len(rows), *value.shape[1:]), _padding_value(key), value.dtype)
                part = np.concatenate([part, pad])
            batch[key] = part
        yield batch


def row_lengths(segment_ids: np.ndarray) -> np.ndarray:
    """[N] tokens each row needs: one past its last non-padding position (segment id != 0); 0 for an empty row."""
    real = np.asarray(segment_ids) != 0
    length = real.shape[1]
    return np.where(real.any(axis=1), length - np.argmax(real[:, ::-1], axis=1), 0).astype(np.int32)


def bucket_lengths(buckets: Sequence[int], max_len: int) -> tuple[int, ...]:
    """The row lengths batches are cut to: the configured lengths below max_len, sorted, and max_len itself (so
    every row has a bucket). () or (0,): no bucketing, every batch max_len long (returns ())."""
    if any(int(b) < 0 for b in buckets):
        raise ValueError(f"length buckets {tuple(buckets)} must be positive lengths (or () / (0,): none)")
    wanted = sorted({int(b) for b in buckets if int(b) > 0})
    if not wanted:
        return ()
    return tuple(b for b in wanted if b < max_len) + (max_len,)


def bucket_of_rows(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """[N] index into `buckets` (ascending) of the shortest bucket each row fits in."""
    index = np.searchsorted(np.asarray(buckets), lengths, side="left")
    if len(lengths) and index.max() >= len(buckets):
        raise ValueError(f"a row of {int(lengths.max())} tokens is longer than the longest bucket {buckets[-1]}")
    return index


class EpochBatches:
    """Training batches epoch after epoch, reshuffled by (seed, epoch); the short last batch of an epoch (of each
    bucket, with length buckets) is padded with weight-0 rows. `get_state` / `set_state` let a checkpoint resume at
    the exact batch.

    Length buckets (`buckets`: ascending row lengths, the longest = the features' length; `bucket_keys`: the keys
    with a token axis 1, cut to the batch's length): every row goes to the shortest bucket it fits in; an epoch
    takes the rows in the (seed, epoch) permutation, cuts each bucket's rows into whole global batches, and
    shuffles the batch order by (seed, epoch) as well, so every batch is one length (one compiled step per
    bucket), every row is seen once per epoch, and (epoch, batch) still names one batch exactly. Without buckets
    the batches are exactly `iterate_batches(..., shuffle=True)`'s."""

    def __init__(self, features: dict, batch_size: int, keys: Sequence[str], *, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, buckets: Sequence[int] = (),
                 bucket_keys: Sequence[str] = ()):
        self.keys = tuple(keys)
        self.features, self.batch_size = {k: features[k] for k in self.keys}, batch_size  # host-side keys stay out
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of process_count={process_count}")
        self.epoch, self.batch = 0, 0
        self.buckets = tuple(int(b) for b in buckets)
        self.bucket_keys = tuple(k for k in bucket_keys if k in self.features)
        n = num_rows(self.features)
        if self.buckets:
            if "segment_ids" not in features:
                raise ValueError("length buckets need the features' segment_ids (which tokens are real)")
            full = {self.features[k].shape[1] for k in self.bucket_keys}
            if full != {self.buckets[-1]}:
                raise ValueError(f"the longest bucket {self.buckets[-1]} must be the length of the bucketed keys "
                                 f"{self.bucket_keys} ({sorted(full)})")
            if list(self.buckets) != sorted(set(self.buckets)):
                raise ValueError(f"length buckets {self.buckets} must be ascending and distinct")
            self.row_bucket = bucket_of_rows(row_lengths(features["segment_ids"]), self.buckets)
            sizes = np.bincount(self.row_bucket, minlength=len(self.buckets))
            self.batches_per_bucket = {b: num_batches(int(s), batch_size) for b, s in zip(self.buckets, sizes)}
            self.steps_per_epoch = sum(self.batches_per_bucket.values())
        else:
            self.row_bucket = None
            self.batches_per_bucket = {}
            self.steps_per_epoch = num_batches(n, batch_size)
        self._plan: tuple[int, list] | None = None  # (epoch, [(global rows, length or None)])

    def epoch_plan(self, epoch: int) -> list[tuple[np.ndarray, int | None]]:
        """Every global batch of `epoch` in order: (the feature rows, length to cut to or None)."""
        n = num_rows(self.features)
        order = np.random.default_rng([self.seed, epoch]).permutation(n)
        if self.row_bucket is None:
            return [(order[b * self.batch_size:(b + 1) * self.batch_size], None) for b in range(self.steps_per_epoch)]
        plan = []
        for index, length in enumerate(self.buckets):
            rows = order[self.row_bucket[order] == index]
            plan += [(rows[b:b + self.batch_size], length) for b in range(0, len(rows), self.batch_size)]
        shuffle = np.random.default_rng([self.seed, epoch, 1]).permutation(len(plan))
        return [plan[i] for i in shuffle]

    def _batch_at(self, epoch: int, index: int) -> dict[str, np.ndarray]:
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, self.epoch_plan(epoch))
        rows, length = self._plan[1][index]
        local = self.batch_size // self.process_count
        rows = rows[self.process_index * local:(self.process_index + 1) * local]
        batch = {}
        for key, value in self.features.items():
            part = value[rows]
            if len(rows) < local:
                pad = np.full((local - len(rows), *value.shape[1:]), _padding_value(key), value.dtype)
                part = np.concatenate([part, pad])
            if length is not None and key in self.bucket_keys:
                part = np.ascontiguousarray(part[:, :length])
            batch[key] = part
        return batch

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if not self.steps_per_epoch:
            raise StopIteration
        if self.batch >= self.steps_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        batch = self._batch_at(self.epoch, self.batch)
        self.batch += 1
        return batch

    def mean_row_len(self) -> float:
        """Tokens per row the steps of an epoch compute on average (the features' length without buckets)."""
        if not self.buckets:
            return float(next((self.features[k].shape[1] for k in self.keys if self.features[k].ndim > 1), 0))
        return sum(b * c for b, c in self.batches_per_bucket.items()) / max(self.steps_per_epoch, 1)

    def get_state(self) -> dict:
        state = {"epoch": self.epoch, "batch": self.batch}
        if self.buckets:
            state["buckets"] = list(self.buckets)
        return state

    def set_state(self, state: dict):
        """Moves to a saved position; a position saved with other length buckets names other batches: an error."""
        saved = tuple(int(b) for b in state.get("buckets", ()))
        if saved != self.buckets:
            raise ValueError(f"the checkpoint's data position is in batches of length buckets {saved or 'none'}, "
                             f"this run's are {self.buckets or 'none'}: resume with "
                             f"--config.data.length_buckets='{saved or ()}' to see the same batches")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
