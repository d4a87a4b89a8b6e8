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


class EpochBatches:
    """Training batches epoch after epoch, reshuffled by (seed, epoch); the short last batch of an epoch is
    padded with weight-0 rows. `get_state` / `set_state` let a checkpoint resume at the exact batch."""

    def __init__(self, features: dict, batch_size: int, keys: Sequence[str], *, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        self.keys = tuple(keys)
        self.features, self.batch_size = {k: features[k] for k in self.keys}, batch_size  # host-side keys stay out
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.epoch, self.batch = 0, 0
        self._it: Iterator | None = None
        self.steps_per_epoch = num_batches(num_rows(self.features), batch_size)

    def _start(self):
        self._it = iterate_batches(self.features, self.batch_size, shuffle=True, seed=self.seed,
                                         epoch=self.epoch, process_index=self.process_index,
                                         process_count=self.process_count)
        for _ in range(self.batch):
            next(self._it)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self._start()
            batch = next(self._it)
        self.batch += 1
        return {k: batch[k] for k in self.keys}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def set_state(self, state: dict):
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._it = None
