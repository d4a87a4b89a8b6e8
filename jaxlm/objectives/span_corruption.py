"""T5's span corruption (Raffel et al. 2020, sections 3.3.3-3.3.4; t5.data.preprocessors.span_corruption),
in numpy, one row at a time, deterministic given the rng.

About `noise_density` (15%) of a chunk's tokens are dropped in spans of mean length `mean_noise_span_length` (3);
each dropped span becomes one sentinel in the inputs, and the targets list the dropped spans, each after its
sentinel:

    tokens   The quick brown fox jumps over the lazy dog
    inputs   The quick <extra_id_0> jumps over <extra_id_1> dog </s>
    targets  <extra_id_0> brown fox <extra_id_1> the lazy </s>

Sentinels are used in order <extra_id_0>, <extra_id_1>, ... (T5's first span gets <extra_id_0>, the highest id of
its vocabulary; jaxlm's tokenizers list them as `tokenizer.sentinel_ids`, whatever their ids). The row length is
kept fixed by corrupting chunks of exactly `compute_input_and_target_lengths(inputs_length, ...)[0]` raw tokens,
which T5 chose so that a full chunk gives exactly `inputs_length` input tokens (EOS included) and
`targets_length` target tokens.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from jaxlm.data import pipeline
from jaxlm.data.packing import concat_then_split
from jaxlm.objectives import losses
from jaxlm.objectives.base import LossConfig, Objective


def noise_span_counts(length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
                      ) -> tuple[int, int]:
    """(noise tokens, noise spans) of a `length`-token chunk, as random_spans_noise_mask computes them (Python's
    round is round-half-to-even, like tf.round). A row needs as many sentinels as noise spans."""
    length = max(length, 2)
    num_noise = int(round(length * noise_density))
    num_noise = min(max(num_noise, 1), length - 1)
    num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
    return num_noise, num_spans


def compute_input_and_target_lengths(inputs_length: int, noise_density: float = 0.15,
                                     mean_noise_span_length: float = 3.0) -> tuple[int, int]:
    """(raw tokens per chunk, targets length) for an encoder input of `inputs_length` tokens (EOS included).

    T5's `random_spans_helper` (t5.data.preprocessors; also Hugging Face's run_t5_mlm_flax.py): the largest chunk
    whose corrupted inputs (non-noise tokens + one sentinel per span + EOS) still fit in inputs_length. For 512
    input tokens at density 0.15 and mean span 3: chunks of 568 tokens, 114 target tokens. Shorter chunks (the end
    of the data) never give longer inputs or targets: both lengths grow monotonically with the chunk.
    """
    if inputs_length < 2:
        raise ValueError(f"inputs_length={inputs_length}: span corruption needs at least 2 (a token and EOS)")
    if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
        raise ValueError(f"noise_density={noise_density} must be in (0, 1) and mean_noise_span_length="
                         f"{mean_noise_span_length} >= 1")

    def lengths(tokens_length):
        # T5 leaves out the "at least one noise token and span" rule here; it only matters below ~10 tokens,
        # where without it a full chunk would overflow the row.
        num_noise, num_spans = noise_span_counts(tokens_length, noise_density, mean_noise_span_length)
        return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    _, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:  # T5's hack: targets no longer than inputs
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Random lengths (each >= 1, summing to num_items) of num_segments consecutive segments."""
    first_in_segment = np.zeros(num_items, np.int64)
    first_in_segment[1:] = rng.permutation((np.arange(num_items - 1) < num_segments - 1).astype(np.int64))
    return np.bincount(np.cumsum(first_in_segment), minlength=num_segments)


def random_spans_noise_mask(length: int, rng: np.random.Generator, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0) -> np.ndarray:
    """bool [length]: True on the tokens to drop (T5's random_spans_noise_mask, without random_roll).

    round(length * noise_density) tokens (at least 1, at most length - 1) in round(noise / mean span) spans (at
    least 1); the spans and the gaps between them have random lengths >= 1. The mask starts with a kept token and
    ends with a dropped one.
    """
    if length < 1:
        raise ValueError(f"random_spans_noise_mask: length={length} must be >= 1")
    padded_length = max(length, 2)  # T5: avoid degenerate single-token chunks
    num_noise, num_spans = noise_span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(num_noise, num_spans, rng)
    kept_lengths = _random_segmentation(padded_length - num_noise, num_spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    span_starts = np.cumsum(interleaved)[:-1]
    span_start_indicator = np.zeros(padded_length, np.int64)
    span_start_indicator[span_starts] = 1
    return (np.cumsum(span_start_indicator) % 2 == 1)[:length]


def _replace_spans(tokens: np.ndarray, mask: np.ndarray, sentinel_ids: Sequence[int]) -> np.ndarray:
    """Each run of masked tokens -> the next sentinel; unmasked tokens are kept."""
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    span_index = np.cumsum(starts) - 1
    if starts.sum() > len(sentinel_ids):
        raise ValueError(f"span corruption needs {int(starts.sum())} sentinels but the tokenizer has "
                         f"{len(sentinel_ids)}; train it with num_sentinels >= {int(starts.sum())} (T5: 100)")
    out = np.where(starts, np.asarray(sentinel_ids, np.int64)[np.minimum(span_index, len(sentinel_ids) - 1)],
                   tokens)
    return out[~mask | starts]


def noise_span_to_unique_sentinel(tokens, noise_mask, sentinel_ids: Sequence[int]) -> np.ndarray:
    """Inputs: every noise span replaced by one sentinel, in order."""
    return _replace_spans(np.asarray(tokens), np.asarray(noise_mask, bool), sentinel_ids)


def nonnoise_span_to_unique_sentinel(tokens, noise_mask, sentinel_ids: Sequence[int]) -> np.ndarray:
    """Targets: every kept span replaced by one sentinel, in order."""
    return _replace_spans(np.asarray(tokens), ~np.asarray(noise_mask, bool), sentinel_ids)


def span_corruption_example(tokens, rng: np.random.Generator, *, sentinel_ids: Sequence[int], eos_id: int,
                            inputs_length: int, targets_length: int, noise_density: float = 0.15,
                            mean_noise_span_length: float = 3.0, pad_id: int = 0,
                            decoder_start_id: int = 0) -> dict[str, np.ndarray]:
    """One fixed-shape row from a chunk of raw tokens (at most the chunk length for inputs_length).

    Returns inputs, segment_ids [inputs_length] int32 (1 on real input tokens, EOS included; 0 = padding) and
    targets, decoder_inputs [targets_length] int32 (decoder_inputs = targets shifted right after the decoder start
    id, T5's 0 = pad), weights [targets_length] float32 (1 on real targets, EOS included).
    """
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"span_corruption_example: tokens must be a non-empty 1-D integer array, got "
                         f"{tokens.dtype} {tokens.shape}")
    mask = random_spans_noise_mask(tokens.size, rng, noise_density, mean_noise_span_length)
    inputs = np.append(noise_span_to_unique_sentinel(tokens, mask, sentinel_ids), eos_id)
    targets = np.append(nonnoise_span_to_unique_sentinel(tokens, mask, sentinel_ids), eos_id)
    if inputs.size > inputs_length or targets.size > targets_length:
        raise ValueError(f"span_corruption_example: {tokens.size} tokens give {inputs.size} inputs / {targets.size}"
                         f" targets, more than inputs_length={inputs_length} / targets_length={targets_length}; "
                         "chunk the text with compute_input_and_target_lengths")
    row = {"inputs": np.full(inputs_length, pad_id, np.int32), "segment_ids": np.zeros(inputs_length, np.int32),
           "targets": np.full(targets_length, pad_id, np.int32), "weights": np.zeros(targets_length, np.float32)}
    row["inputs"][:inputs.size] = inputs
    row["segment_ids"][:inputs.size] = 1
    row["targets"][:targets.size] = targets
    row["weights"][:targets.size] = 1.0
    row["decoder_inputs"] = np.concatenate([[decoder_start_id], row["targets"][:-1]]).astype(np.int32)
    return row


def uncorrupt(inputs, targets, sentinel_ids: Sequence[int], eos_id: int) -> np.ndarray:
    """The original tokens back from one row's inputs and targets (padding and EOS dropped): each sentinel of the
    inputs is replaced by the target tokens that follow the same sentinel. For tests and for reading examples."""
    sentinels = {int(s): i for i, s in enumerate(sentinel_ids)}

    def real(x):
        x = [int(t) for t in np.asarray(x)]
        return x[:x.index(eos_id)] if eos_id in x else x

    spans, current = {}, None
    for t in real(targets):
        if t in sentinels:
            current = sentinels[t]
            spans[current] = []
        elif current is not None:
            spans[current].append(t)
    out = []
    for t in real(inputs):
        out.extend(spans.get(sentinels[t], []) if t in sentinels else [t])
    return np.asarray(out, np.int64)


# ----------------------------------------------------------------------------------------------------------------
# The objective

SPAN_CORRUPTION_KEYS = ("inputs", "segment_ids", "targets", "decoder_inputs", "weights")
DECODER_KEYS = ("targets", "decoder_inputs", "weights")


@dataclasses.dataclass
class CorruptChunk:
    """A concat-then-split chunk -> one span-corrupted row; the rng comes from grain (seeded by position)."""

    sentinel_ids: tuple[int, ...]
    eos_id: int
    pad_id: int
    inputs_length: int
    targets_length: int
    noise_density: float
    mean_noise_span_length: float

    def __call__(self, chunk: dict, rng: np.random.Generator) -> dict:
        tokens = chunk["tokens"][chunk["tokens_segment_ids"] > 0]
        return span_corruption_example(
            tokens, rng, sentinel_ids=self.sentinel_ids, eos_id=self.eos_id, inputs_length=self.inputs_length,
            targets_length=self.targets_length, noise_density=self.noise_density,
            mean_noise_span_length=self.mean_noise_span_length, pad_id=self.pad_id, decoder_start_id=self.pad_id)


def seq2seq_lm_loss(model, config: LossConfig = LossConfig()):
    """loss_fn over an encoder-decoder (T5): CE of the decoder's predictions of `targets` given `inputs`
    (encoder) and `decoder_inputs` (targets shifted right), weighted by `weights`. Span corruption and
    text-to-text fine-tuning share it. Optional keys: segment_ids (encoder, 0 = padding), decoder_segment_ids,
    positions, decoder_positions."""

    def loss_fn(params, batch, rng):
        kwargs = dict(encoder_segment_ids=batch.get("segment_ids"),
                      decoder_segment_ids=batch.get("decoder_segment_ids"),
                      encoder_positions=batch.get("positions"), decoder_positions=batch.get("decoder_positions"),
                      deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})
        def forward(return_hidden):
            return model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                               return_hidden=return_hidden, **kwargs)

        return losses.lm_cross_entropy(forward, lambda: model.output_embedding(params), batch["targets"],
                                       batch["weights"], config)

    return loss_fn


@dataclasses.dataclass(frozen=True)
class SpanCorruption(Objective):
    """T5's span corruption over documents concatenated with no separator (as T5's C4 task) and cut into chunks
    that corrupt to exactly seq_len encoder inputs; only the stream's last chunk is shorter (padded).

    Batch (T = targets length, T5's for L, e.g. 114 for 512; one example per row): inputs, segment_ids [B,L]
    int32 (encoder; sentinels and EOS included, 0 = padding); targets, decoder_inputs [B,T] int32
    (decoder_inputs = targets shifted right after the decoder start id 0); weights [B,T] float32.
    """
    name: ClassVar[str] = "span_corruption"
    needs_heads: ClassVar[tuple[str, ...]] = ("seq2seq_lm",)

    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0

    @property
    def lengths(self) -> tuple[int, int]:
        """(raw tokens per chunk, targets length) for seq_len encoder inputs."""
        return compute_input_and_target_lengths(self.seq_len, self.noise_density, self.mean_noise_span_length)

    def check_tokenizer(self, tokenizer):
        needed = noise_span_counts(self.lengths[0], self.noise_density, self.mean_noise_span_length)[1]
        if len(tokenizer.sentinel_ids) < needed:
            raise ValueError(f"objective span_corruption: {tokenizer!r} has {len(tokenizer.sentinel_ids)} sentinel "
                             f"tokens (<extra_id_N>) but seq_len={self.seq_len} makes {needed} noise spans per row; "
                             "train the tokenizer with num_sentinels=100 (config.data.tokenizer_num_sentinels)")
        _ = tokenizer.eos_id  # raises naming the tokenizer file when it has no EOS

    def prepare_model_config(self, model_config, tokenizer):
        # T5's generation and export read EOS from the model config.
        return dataclasses.replace(model_config, eos_token_id=tokenizer.eos_id)

    def batch_spec(self, batch_size):
        targets = self.lengths[1]
        return {k: ((batch_size, targets if k in DECODER_KEYS else self.seq_len),
                    np.dtype(np.float32 if k == "weights" else np.int32)) for k in SPAN_CORRUPTION_KEYS}

    def init_inputs(self, family, model_config):
        return family.init_inputs(model_config, 1, self.seq_len, targets=self.lengths[1])

    def dataset(self, source, tokenizer, options):
        self.check_tokenizer(tokenizer)
        chunk_length, targets_length = self.lengths
        ds = pipeline.documents(source, options).map(pipeline.TokenizeDocument(tokenizer, options.text_key,
                                                                               options.stats))
        it = concat_then_split(ds.to_iter_dataset(options.grain_read_options), {"tokens": chunk_length})
        it = it.random_map(CorruptChunk(tuple(tokenizer.sentinel_ids), tokenizer.eos_id, tokenizer.pad_id,
                                        self.seq_len, targets_length, self.noise_density,
                                        self.mean_noise_span_length), seed=options.mask_seed())
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def loss_fn(self, model):
        return seq2seq_lm_loss(model, self.loss)

    def train_flops_per_example(self, family, model_config):
        targets = self.lengths[1]
        return (family.backbone_train_flops(model_config, tokens=self.seq_len, targets=targets)
                + family.lm_head_train_flops(model_config, targets))
