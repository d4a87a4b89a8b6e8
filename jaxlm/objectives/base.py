"""What a pretraining objective is to the rest of jaxlm: one class, one module of jaxlm/objectives/ each.

An objective owns everything that makes it itself:
- its settings, as dataclass fields named like the `config.data` keys they come from (`seq_len`, `mask_rate`,
  ...), read by `from_config`;
- the host-side transform: `dataset(source, tokenizer, options)`, a grain pipeline of fixed-shape host batches
  assembled from jaxlm.data's stages (documents, packing, pairing) and its own random transform;
- the batch spec (key -> shape, dtype) the pipeline promises and the step compiles for;
- the model's init inputs, the model heads it needs (checked before anything is built);
- `loss_fn(model)` -> `loss_fn(params, batch, rng) -> (loss, metrics)`: all that `train` ever sees of it;
- its training FLOPs per example, for MFU and `benchmarks/estimate.py`.
Registered by name (`config.objective`) in jaxlm/objectives/registry.py.

Metrics: `loss` (what is minimised), `lm_loss` (the mean NLL of the language-modelling part: evaluation reports
perplexity = exp of its mean, never of a loss with NSP, smoothing or z-loss in it), `accuracy`, and `num_tokens`
(the weight sum, so microbatches and eval batches combine exactly). rng None = deterministic (no dropout).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Callable, ClassVar, Mapping

import grain

from jaxlm.data.pipeline import FixedBatches, Spec, StreamOptions, empty_batch, resolve_source
from jaxlm.models import FAMILIES

LossFn = Callable[[Any, Mapping[str, Any], Any], tuple[Any, Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    # Project onto the vocabulary in chunks of this many tokens so [B,L,V] logits never exist at once (0 = the
    # plain full-logits loss). A large lever for small models, whose step the vocab projection dominates.
    logits_chunk_size: int = 0

    def use_chunks(self) -> bool:
        return bool(self.logits_chunk_size) and not self.label_smoothing and not self.z_loss


@dataclasses.dataclass(frozen=True)
class Objective:
    """Base class; subclasses add their settings as fields and implement the abstract methods."""
    name: ClassVar[str] = ""
    # Heads the pretraining model must have (the family says which it has: ModelFamily.heads).
    needs_heads: ClassVar[tuple[str, ...]] = ()
    min_seq_len: ClassVar[int] = 3

    seq_len: int = 128
    loss: LossConfig = LossConfig()

    def __post_init__(self):
        if self.seq_len < self.min_seq_len:
            raise ValueError(f"config.data.seq_len={self.seq_len}: objective {self.name!r} needs at least "
                             f"{self.min_seq_len}")

    @classmethod
    def from_config(cls, data_config: Mapping[str, Any], loss_config: Mapping[str, Any] | None = None) -> "Objective":
        """The objective's settings from config.data (fields by name) and config.loss."""
        names = {f.name for f in dataclasses.fields(cls)} - {"loss"}
        settings = {k: data_config[k] for k in names if k in data_config}
        loss = LossConfig(**dict(loss_config)) if loss_config is not None else LossConfig()
        return cls(**settings, loss=loss)

    # ------------------------------------------------------------------ checks before anything is built
    def check_model(self, family, model_config) -> None:
        """An error naming the objective and the family when the model lacks a head this objective trains."""
        missing = [h for h in self.needs_heads if h not in family.heads(model_config)]
        if missing:
            able = sorted(n for n, f in FAMILIES.items()
                          if all(h in f.heads(f.make_config()) for h in self.needs_heads))
            raise ValueError(f"objective {self.name!r} trains the model's {missing} head(s), which a "
                             f"{family.name!r} model (config.model.family) does not have; families that do: {able}")

    def check_tokenizer(self, tokenizer) -> None:
        """An error naming what the tokenizer lacks (special tokens, sentinels)."""

    def prepare_model_config(self, model_config, tokenizer):
        """The model config with what the objective takes from the tokenizer (e.g. T5's EOS id)."""
        return model_config

    def for_model(self, model_config) -> "Objective":
        """The objective with the settings it takes from the model config (XLNet's memory), checked."""
        return self

    def memory_shape(self, model_config, batch_size: int) -> tuple[int, ...] | None:
        """The shape of what a recurrent objective carries from step to step (TrainState.memory); None: nothing."""
        return None

    # ------------------------------------------------------------------ batches
    def batch_spec(self, batch_size: int) -> Spec:
        raise NotImplementedError

    def empty_batch(self, batch_size: int) -> dict:
        return empty_batch(self.batch_spec(batch_size))

    def init_inputs(self, family, model_config) -> dict:
        """Keyword arguments of `model.init`, shaped like one row of this objective's batches."""
        return family.init_inputs(model_config, 1, self.seq_len)

    def dataset(self, source: Sequence, tokenizer, options: StreamOptions) -> grain.IterDataset:
        """Host batches of this process from a random-access source (see jaxlm.data.pipeline)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model side
    def loss_fn(self, model) -> LossFn:
        raise NotImplementedError

    def train_flops_per_example(self, family, model_config) -> float:
        raise NotImplementedError

    @property
    def tokens_per_example(self) -> int:
        """Input tokens per row, what tokens/s counts."""
        return self.seq_len

    def baselines(self, eval_batches) -> dict[str, float]:
        """Reference scores of trivial predictors on the eval batches, for the summary (e.g. MLM's unigram)."""
        return {}

    # ------------------------------------------------------------------ iterators
    def iterator(self, source: str | Sequence, tokenizer, *, split: str = "train", data_dir=None,
                 **options) -> grain.DatasetIterator:
        """`iter(dataset(...))` over a TFDS name (read from data_dir/split) or a sequence of records; options are
        StreamOptions fields (batch_size, seed, process_index, ...)."""
        return iter(self.dataset(resolve_source(source, split, data_dir), tokenizer, StreamOptions(**options)))

    def eval_iterator(self, source: str | Sequence, tokenizer, *, split: str = "validation", data_dir=None,
                      num_batches: int | None = None, **options) -> grain.DatasetIterator:
        """One pass over `split`, unshuffled, fixed masks (seeded); the last batch padded, not dropped. With
        num_batches exactly that many batches (cut short, or filled with all-padding ones): every process of a
        multi-host eval then runs the same number of steps."""
        stream = StreamOptions(**{**options, "shuffle": False, "num_epochs": 1, "drop_remainder": False})
        it = self.dataset(resolve_source(source, split, data_dir), tokenizer, stream)
        if num_batches is not None:
            it = FixedBatches(it, num_batches, self.empty_batch(stream.batch_size))
        return iter(it)
