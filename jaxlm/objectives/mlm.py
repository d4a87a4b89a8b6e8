"""Masked language modelling (BERT, RoBERTa): the numpy masking transform and the `mlm` objective.

Follows BERT's `create_masked_lm_predictions`: choose exactly
`min(max_predictions, max(1, round(n_candidates * mask_rate)))` of the non-special tokens, replace 80% of
them with [MASK], 10% with a random non-special token and leave 10% unchanged; the model is scored only at
the chosen positions (`masked_positions`), which keeps the vocab projection small.

Dynamic masking (RoBERTa) is nothing more than calling `mask_tokens` again, with a fresh rng, every time a
sequence is seen (e.g. as a grain random map transform); static masking (BERT) calls it once when the
dataset is written. Everything is deterministic given the numpy Generator.
"""
import collections
import dataclasses
import functools
import math
from typing import ClassVar

import numpy as np

from jaxlm.data import pipeline
from jaxlm.data.packing import SentenceChunks, first_fit_pack
from jaxlm.objectives import losses
from jaxlm.objectives.base import LossConfig, Objective


@functools.lru_cache(maxsize=64)
def _special_tables(vocab_size, special_ids):
    """(is_special [V] bool, non-special ids) for a vocab; cached because it is the same for every row."""
    is_special = np.zeros(vocab_size, dtype=bool)
    is_special[list(special_ids)] = True
    is_special.setflags(write=False)
    normal_ids = np.flatnonzero(~is_special).astype(np.int32)
    normal_ids.setflags(write=False)
    return is_special, normal_ids


def _check_args(mask_id, vocab_size, special_ids, max_predictions, mask_rate, mask_token_prob,
                random_token_prob):
    """Validate once per distinct setting (cached: this runs on every row of the input pipeline)."""
    if isinstance(special_ids, (list, tuple, set, frozenset)):
        special_ids = tuple(special_ids)
    else:
        special_ids = tuple(np.asarray(special_ids).ravel().tolist())
    return _checked_args(mask_id, vocab_size, special_ids, max_predictions, mask_rate, mask_token_prob,
                         random_token_prob)


@functools.lru_cache(maxsize=64)
def _checked_args(mask_id, vocab_size, special_ids, max_predictions, mask_rate, mask_token_prob,
                  random_token_prob):
    if int(vocab_size) <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if not 0 <= int(mask_id) < vocab_size:
        raise ValueError(f"mask_id={mask_id} is outside the vocabulary [0, vocab_size={vocab_size})")
    specials = tuple(sorted({int(s) for s in special_ids} | {int(mask_id)}))
    if specials[0] < 0 or specials[-1] >= vocab_size:
        raise ValueError(f"special_ids {specials} must lie in [0, vocab_size={vocab_size})")
    if int(max_predictions) < 1:
        raise ValueError(f"max_predictions must be >= 1, got {max_predictions}")
    if not 0.0 < mask_rate <= 1.0:
        raise ValueError(f"mask_rate must be in (0, 1], got {mask_rate}")
    for name, p in (("mask_token_prob", mask_token_prob), ("random_token_prob", random_token_prob)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {p}")
    if mask_token_prob + random_token_prob > 1.0 + 1e-9:
        raise ValueError(f"mask_token_prob + random_token_prob = {mask_token_prob} + {random_token_prob} "
                         "> 1 (the rest is the keep-unchanged probability)")
    is_special, normal_ids = _special_tables(int(vocab_size), specials)
    if random_token_prob > 0 and normal_ids.size == 0:
        raise ValueError("random_token_prob > 0 but every id in the vocabulary is in special_ids")
    return is_special, normal_ids


def _whole_word_choice(cand_L, word_starts_L, k, rng):
    """BERT's whole-word selection for one row: words in random order, skip a word that would overflow k.

    A word is a candidate token with word_starts True (or following a non-candidate) plus the candidate
    tokens after it that are not word starts.
    """
    prev_cand = np.concatenate([[False], cand_L[:-1]])
    starts = cand_L & (word_starts_L | ~prev_cand)
    word_id_L = np.cumsum(starts) - 1
    n_words = int(starts.sum())
    word_len = np.bincount(word_id_L[cand_L], minlength=n_words)
    order = rng.permutation(n_words)
    lens = word_len[order]
    cum = np.cumsum(lens)
    n_prefix = int(np.searchsorted(cum, k, side="right"))  # every word of this prefix fits
    taken = np.zeros(n_words, dtype=bool)
    taken[order[:n_prefix]] = True
    room = k - (int(cum[n_prefix - 1]) if n_prefix else 0)
    i = n_prefix + 1  # word n_prefix overflowed: skipped
    while room > 0 and i < n_words:  # at most (longest word - 1) rounds
        fits = np.flatnonzero(lens[i:] <= room)
        if fits.size == 0:
            break
        j = i + int(fits[0])
        taken[order[j]] = True
        room -= int(lens[j])
        i = j + 1
    return cand_L & taken[np.maximum(word_id_L, 0)]


def mask_batch(token_ids_BxL, rng, *, mask_id, vocab_size, special_ids, max_predictions, mask_rate=0.15,
               mask_token_prob=0.8, random_token_prob=0.1, word_starts=None):
    """`mask_tokens` for a [B, L] batch (vectorised across rows); returns the same keys stacked to [B, ...]."""
    ids_BxL = np.asarray(token_ids_BxL)
    if ids_BxL.ndim != 2 or not np.issubdtype(ids_BxL.dtype, np.integer):
        raise ValueError(f"token_ids must be an integer [B, L] array, got {ids_BxL.dtype} {ids_BxL.shape}")
    is_special, normal_ids = _check_args(mask_id, vocab_size, special_ids, max_predictions, mask_rate,
                                         mask_token_prob, random_token_prob)
    B, L = ids_BxL.shape
    P = int(max_predictions)
    if ids_BxL.size and (ids_BxL.min() < 0 or ids_BxL.max() >= vocab_size):
        raise ValueError(f"token_ids range [{ids_BxL.min()}, {ids_BxL.max()}] is outside "
                         f"[0, vocab_size={vocab_size})")
    cand_BxL = ~is_special[ids_BxL]
    n_cand_B = cand_BxL.sum(axis=1)
    k_B = np.minimum(P, np.maximum(1, np.round(n_cand_B * mask_rate).astype(np.int64)))
    k_B = np.where(n_cand_B == 0, 0, k_B)
    Pe = min(P, L)  # cannot choose more positions than the row has
    slot_Pe = np.arange(Pe)

    if word_starts is None:
        keys_BxL = rng.random((B, L))
        keys_BxL[~cand_BxL] = 2.0  # candidates sort first, in random order
        first_BxPe = np.argsort(keys_BxL, axis=1)[:, :Pe]
        pos_BxPe = np.where(slot_Pe < k_B[:, None], first_BxPe, L)
    else:
        starts_BxL = np.asarray(word_starts, dtype=bool)
        if starts_BxL.shape != ids_BxL.shape:
            raise ValueError(f"word_starts shape {starts_BxL.shape} != token_ids shape {ids_BxL.shape}")
        chosen_BxL = np.zeros((B, L), dtype=bool)
        for b in range(B):
            if k_B[b]:
                chosen_BxL[b] = _whole_word_choice(cand_BxL[b], starts_BxL[b], int(k_B[b]), rng)
        pos_BxPe = np.where(chosen_BxL, np.arange(L), L)
    pos_BxPe = np.sort(pos_BxPe, axis=1)[:, :Pe]
    valid_BxPe = pos_BxPe < L
    pos_BxPe = np.where(valid_BxPe, pos_BxPe, 0)

    targets_BxPe = np.take_along_axis(ids_BxL, pos_BxPe, axis=1)
    u_BxPe = rng.random((B, Pe))
    random_BxPe = normal_ids[rng.integers(0, max(normal_ids.size, 1), (B, Pe))] if normal_ids.size else 0
    new_BxPe = np.where(u_BxPe < mask_token_prob, mask_id,
                        np.where(u_BxPe < mask_token_prob + random_token_prob, random_BxPe, targets_BxPe))
    inputs_BxL = ids_BxL.astype(np.int32, copy=True)
    rows_B = np.broadcast_to(np.arange(B)[:, None], (B, Pe))
    inputs_BxL[rows_B[valid_BxPe], pos_BxPe[valid_BxPe]] = new_BxPe[valid_BxPe]

    out = {
        "inputs": inputs_BxL,
        "masked_positions": np.zeros((B, P), np.int32),
        "masked_targets": np.zeros((B, P), np.int32),
        "masked_weights": np.zeros((B, P), np.float32),
    }
    out["masked_positions"][:, :Pe] = pos_BxPe
    out["masked_targets"][:, :Pe] = np.where(valid_BxPe, targets_BxPe, 0)
    out["masked_weights"][:, :Pe] = valid_BxPe
    return out


def mask_tokens(token_ids, rng, *, mask_id, vocab_size, special_ids, max_predictions, mask_rate=0.15,
                mask_token_prob=0.8, random_token_prob=0.1, word_starts=None):
    """Mask ONE row of token ids (int [L], padding included) for MLM.

    special_ids: ids never chosen nor drawn as random replacements (pad, cls, sep, mask, ...); mask_id is
      always treated as special.
    word_starts: optional bool [L], True where a token begins a word: then whole words are masked (BERT's
      whole-word masking: words in random order, a word that would overflow the count is skipped, so a row
      may get slightly fewer than the target count and never more than max_predictions).
    Returns {'inputs' int32 [L], 'masked_positions' int32 [P], 'masked_targets' int32 [P],
    'masked_weights' float32 [P]} with P = max_predictions, positions ascending, unused slots 0/0/0.0.
    Equal to `mask_batch(token_ids[None], rng, ...)[...][0]`.
    """
    ids_L = np.asarray(token_ids)
    if ids_L.ndim != 1 or not np.issubdtype(ids_L.dtype, np.integer):
        raise ValueError(f"token_ids must be an integer 1-D [L] array for mask_tokens (mask_batch takes "
                         f"[B, L]), got {ids_L.dtype} {ids_L.shape}")
    is_special, normal_ids = _check_args(mask_id, vocab_size, special_ids, max_predictions, mask_rate,
                                         mask_token_prob, random_token_prob)
    # Same computation and random draws as mask_batch with B=1, written on 1-D arrays: ~3x fewer
    # microseconds per row, which is what a per-example pipeline transform pays.
    L, P = ids_L.shape[0], int(max_predictions)
    if L and (ids_L.min() < 0 or ids_L.max() >= vocab_size):
        raise ValueError(f"token_ids range [{ids_L.min()}, {ids_L.max()}] is outside "
                         f"[0, vocab_size={vocab_size})")
    cand_L = ~is_special[ids_L]
    n_cand = int(np.count_nonzero(cand_L))
    k = min(P, max(1, round(n_cand * mask_rate))) if n_cand else 0
    Pe = min(P, L)
    if word_starts is None:
        keys_L = rng.random(L)
        keys_L[~cand_L] = 2.0
        pos_k = np.sort(np.argsort(keys_L)[:k])
    else:
        starts_L = np.asarray(word_starts, dtype=bool)
        if starts_L.shape != ids_L.shape:
            raise ValueError(f"word_starts shape {starts_L.shape} != token_ids shape {ids_L.shape}")
        pos_k = np.flatnonzero(_whole_word_choice(cand_L, starts_L, k, rng)) if k else np.zeros(0, np.int64)
    n = pos_k.shape[0]
    targets_n = ids_L[pos_k]
    u_n = rng.random(Pe)[:n]
    random_n = normal_ids[rng.integers(0, normal_ids.size, Pe)[:n]] if normal_ids.size else 0
    inputs_L = ids_L.astype(np.int32, copy=True)
    inputs_L[pos_k] = np.where(u_n < mask_token_prob, mask_id,
                               np.where(u_n < mask_token_prob + random_token_prob, random_n, targets_n))
    out = {
        "inputs": inputs_L,
        "masked_positions": np.zeros(P, np.int32),
        "masked_targets": np.zeros(P, np.int32),
        "masked_weights": np.zeros(P, np.float32),
    }
    out["masked_positions"][:n] = pos_k
    out["masked_targets"][:n] = targets_n
    out["masked_weights"][:n] = 1.0
    return out


# ----------------------------------------------------------------------------------------------------------------
# The objective: packed sentence chunks, masked per batch, scored at the masked positions only

@dataclasses.dataclass
class MaskBatch:
    """A batch of packed rows [B, L] -> the MLM batch (masking vectorised over the batch; the rng comes from
    grain, seeded by position in the stream)."""

    tokenizer: object
    max_predictions: int
    mask_rate: float
    whole_word_masking: bool

    def mask(self, inputs: np.ndarray, rng: np.random.Generator) -> dict:
        """mask_tokens on a row [L] or mask_batch on a batch [B, L]."""
        tok = self.tokenizer
        mask_fn = mask_tokens if inputs.ndim == 1 else mask_batch
        return mask_fn(inputs, rng, mask_id=tok.mask_id, vocab_size=tok.vocab_size, special_ids=tok.special_ids,
                       max_predictions=self.max_predictions, mask_rate=self.mask_rate,
                       word_starts=tok.word_starts(inputs) if self.whole_word_masking else None)

    def __call__(self, batch: dict, rng: np.random.Generator) -> dict:
        out = {"segment_ids": batch["inputs_segment_ids"], "positions": batch["inputs_positions"],
               "token_types": np.zeros_like(batch["inputs"])}
        out.update(self.mask(batch["inputs"], rng))
        return out


MLM_KEYS = ("inputs", "segment_ids", "positions", "token_types", "masked_positions", "masked_targets",
            "masked_weights")


def masked_lm_outputs(model, params, batch, rng):
    """The model's outputs with MLM logits at the masked positions only (dropout on when rng is given)."""
    return model.apply(
        {"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"),
        token_types=batch.get("token_types"), positions=batch.get("positions"),
        masked_positions=batch["masked_positions"], deterministic=rng is None,
        rngs=None if rng is None else {"dropout": rng})


def masked_lm_loss(outputs, batch, config: LossConfig):
    """(mean MLM cross-entropy over the masked positions, metrics)."""
    loss, m = losses.weighted_mean_cross_entropy(
        outputs["mlm_logits"], batch["masked_targets"], batch["masked_weights"],
        label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    return loss, {"loss": loss, "lm_loss": m["lm_loss"], "accuracy": m["accuracy"], "mlm_loss": m["lm_loss"],
                  "mlm_accuracy": m["accuracy"], "num_tokens": m["num_tokens"]}


@dataclasses.dataclass(frozen=True)
class MaskedLM(Objective):
    """BERT's / RoBERTa's masked LM: sentence chunks `[CLS] ... [SEP]` packed several to a row (segment ids keep
    them apart), 15% of the tokens masked per batch (RoBERTa's dynamic masking: a fresh mask every epoch), the
    vocabulary projection computed only at the `max_predictions` masked slots."""
    name: ClassVar[str] = "mlm"
    needs_heads: ClassVar[tuple[str, ...]] = ("masked_lm",)

    max_predictions: int = 0  # MLM slots per row (BERT's max_predictions_per_seq); 0 = ceil(seq_len x mask_rate)
    mask_rate: float = 0.15
    whole_word_masking: bool = False

    @property
    def predictions(self) -> int:
        return self.max_predictions or max(1, math.ceil(self.seq_len * self.mask_rate))

    def check_tokenizer(self, tokenizer):
        for name in ("cls_id", "sep_id", "mask_id"):
            getattr(tokenizer, name)  # raises naming the tokenizer file and the missing token

    def batch_spec(self, batch_size):
        L, P = self.seq_len, self.predictions
        shapes = {k: (batch_size, P) for k in ("masked_positions", "masked_targets", "masked_weights")}
        return {k: (shapes.get(k, (batch_size, L)), np.dtype(np.float32 if k == "masked_weights" else np.int32))
                for k in MLM_KEYS}

    def masker(self, tokenizer) -> MaskBatch:
        return MaskBatch(tokenizer, self.predictions, self.mask_rate, self.whole_word_masking)

    def dataset(self, source, tokenizer, options):
        ds = pipeline.documents(source, options).map(SentenceChunks(tokenizer, options.text_key, self.seq_len,
                                                                    options.stats))
        it = first_fit_pack(ds.to_iter_dataset(options.grain_read_options), self.seq_len, options.batch_size)
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        it = it.random_map(self.masker(tokenizer), seed=options.mask_seed())
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def loss_fn(self, model):
        config = self.loss

        def loss_fn(params, batch, rng):
            return masked_lm_loss(masked_lm_outputs(model, params, batch, rng), batch, config)

        return loss_fn

    def train_flops_per_example(self, family, model_config):
        return (family.backbone_train_flops(model_config, tokens=self.seq_len)
                + family.lm_head_train_flops(model_config, self.predictions))

    def baselines(self, eval_batches):
        """MLM accuracy of always predicting the most frequent masked token: the bar a model must clear."""
        counts = collections.Counter()
        for batch in eval_batches:
            targets = batch["masked_targets"][batch["masked_weights"] > 0]
            counts.update(dict(zip(*(x.tolist() for x in np.unique(targets, return_counts=True)))))
        total = sum(counts.values())
        return {"eval_mlm_unigram_baseline_accuracy": max(counts.values()) / total} if total else {}
