"""XLNet's permutation language modelling (Yang et al. 2019, sections 2.2-2.4 and appendix A.2), the `plm` objective.

Host side, in numpy, one row at a time, deterministic given the rng; faithful to the authors' zihangdai/xlnet
`data_utils.py` (`_sample_mask`, `_local_perm`, and the sentence-pair layout of `create_tfrecords`):

- a row is a sentence pair laid out as XLNet does, `A <sep> B <sep> <cls>`, with XLNet's segment ids (A and its
  <sep> 0, B and its <sep> 1, <cls> 2) in `token_types`. B is A's continuation or (half the time) text of
  another document (jaxlm.data.pairing.make_sentence_pair; XLNet drops the NSP loss but keeps the pairs);
- `sample_mask` picks the `num_predict` tokens to predict in spans ("n-grams") of n = 1..max_span tokens,
  p(n) proportional to 1/n, each span inside a context of n * mask_alpha / mask_beta tokens, the rest of the
  budget as single random tokens;
- `local_perm` samples a factorisation order (one permutation of `perm_size` positions, applied to every block of
  perm_size consecutive positions, later blocks after earlier ones) and builds `perm_mask` [L, L], 1 = position i
  may not attend to position j (the authors' and Hugging Face's convention, what jaxlm.models.xlnet reads):
  * plain tokens (real, not chosen, not <sep> / <cls>) are seen by every position; they see each other and
    no target, <sep> or <cls>;
  * targets (chosen tokens that are not <sep> / <cls>) and <sep> / <cls> are ordered: they see the plain
    tokens and the targets and separators earlier than themselves in the factorisation order; in the query
    stream a target never sees itself (a <sep> / <cls> does; the content stream always does,
    jaxlm.layers.relative_attention.xlnet_masks adds the diagonal).
  A chosen <sep> / <cls> is not a target (as the authors: rows then predict fewer than num_predict tokens);
- `plm_features` builds one row: inputs, segment_ids (1 real, 0 padding), token_types, perm_mask [L, L],
  target_mapping [P, L] (one-hot rows at the targets in ascending position order, padded rows zero), targets [P]
  (the token at each target: XLNet predicts the token itself, not the next one) and target_weights [P].

Two row layouts, chosen by the model's memory (config.model.mem_len):
- without memory (mem_len 0, the default), rows are independent: one sentence pair per example index from a
  document (as `mlm_nsp`), not a stream cut across documents; a pair shorter than seq_len is padded on the right
  (segment_ids 0, token_types SEG_ID_PAD; padding is blocked in perm_mask too) and predicts
  round(num_predict * real tokens / seq_len) tokens. One sample_mask / local_perm covers the whole row.
- with memory (mem_len > 0, reuse_len > 0), the authors' recurrent layout (`create_tfrecords`, `batchify`): the
  training split's tokens, documents in a seeded order, are cut into one contiguous stream per global batch row;
  at step t row r is `reuse A <sep> B <sep> <cls>`, where `reuse` is the reuse_len tokens of stream r that follow
  step t-1's (the model caches their hidden states: the memory step t+1 reads), A the tokens after it and B A's
  continuation or (half the time) a span of another stream. As the authors, num_predict and the factorisation
  order are split between the reuse part (num_predict - num_predict // 2 targets) and the rest, and the reuse
  part never sees the rest (its hidden states must be a valid past for the next segment). With bi_data the
  second half of the global batch reads the first half's streams backwards (the model gives those rows backward
  relative positions). A and B are cut at a random token, not at sentence ends (the authors' `_split_a_and_b`
  cuts at sentences); the stream repeats (memory resets at the wrap) when it runs out. Evaluation reads the
  memoryless layout. Every host tokenizes the whole training split into memory when the run starts (4 bytes a
  token: fine up to a few hundred million tokens; a C4-sized corpus needs the streams prepared offline, as the
  authors' tfrecords are, which jaxlm does not do yet).
The released `_sample_mask` counts the span length in tokens, not words (its end loop tests the start piece
`seg[beg]` instead of `seg[end]`): a span is n tokens that begin at a word start; kept as released.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
from typing import ClassVar, NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxlm.data import pipeline
from jaxlm.data.pairing import TokenizedDocuments, make_sentence_pair
from jaxlm.objectives import losses
from jaxlm.objectives.base import LossConfig, Objective

# XLNet's segment ids (token_types): the authors' pretraining rows and classifier_utils.
SEG_ID_A, SEG_ID_B, SEG_ID_CLS, SEG_ID_PAD = 0, 1, 2, 4
PLM_KEYS = ("inputs", "segment_ids", "token_types", "perm_mask", "target_mapping", "targets", "target_weights")
SALT_PLM = pipeline.SALT_EXAMPLE
STREAM_STEPS = 2**40  # the recurrent layout's batches: as many as any run takes (they repeat every cycle)


# ----------------------------------------------------------------------------------------------------------------
# Target sampling (the authors' _sample_mask)

@functools.lru_cache(maxsize=16)
def span_length_probs(max_span: int = 5) -> np.ndarray:
    """p(n) for n = 1..max_span, proportional to 1/n (the authors' `pvals`): for 5, .438 .219 .146 .109 .088."""
    if max_span < 1:
        raise ValueError(f"max_span={max_span} must be >= 1")
    p = 1.0 / np.arange(1, max_span + 1)
    p = p / p.sum()
    p.setflags(write=False)
    return p


def _check_mask_args(max_span, mask_alpha, mask_beta):
    if max_span < 1:
        raise ValueError(f"config.data.max_span={max_span} must be >= 1")
    if not mask_alpha >= mask_beta >= 1:
        raise ValueError(f"config.data.mask_alpha={mask_alpha} and config.data.mask_beta={mask_beta} must satisfy "
                         "mask_alpha >= mask_beta >= 1 (about mask_beta tokens predicted in every mask_alpha; "
                         "XLNet: 6 and 1)")


def sample_mask(rng: np.random.Generator, seg_len: int, num_predict: int | None = None, *, max_span: int = 5,
                mask_alpha: int = 6, mask_beta: int = 1, word_starts=None, reverse: bool = False) -> np.ndarray:
    """bool [seg_len]: the tokens to predict, the authors' `_sample_mask` (max_gram = max_span).

    Left to right: draw a span length n (p ~ 1/n, n <= max_span, capped by what is left of num_predict), a
    context of ctx = n * mask_alpha // mask_beta tokens, l_ctx ~ U{0..ctx-1} of them before the span; the span
    starts at the first word start (word_starts; None = every token) from there and covers n tokens; the next
    span's context starts r_ctx = ctx - l_ctx tokens after it. A span that would reach the last token ends the
    loop (as released). Then single random tokens until exactly num_predict are chosen (None: no budget, spans
    only: about mask_beta / (mask_alpha + mask_beta) of the tokens). reverse: the same on the reversed segment.
    """
    seg_len = int(seg_len)
    _check_mask_args(max_span, mask_alpha, mask_beta)
    if num_predict is not None and not 0 <= num_predict <= seg_len:
        raise ValueError(f"sample_mask: num_predict={num_predict} must be in [0, seg_len={seg_len}]")
    starts = np.ones(seg_len, bool) if word_starts is None else np.asarray(word_starts, bool).reshape(-1)
    if starts.shape != (seg_len,):
        raise ValueError(f"sample_mask: word_starts has shape {starts.shape}, not [seg_len] = ({seg_len},)")
    if reverse:
        starts = starts[::-1]
    cdf = np.cumsum(span_length_probs(max_span))
    mask = np.zeros(seg_len, bool)
    chosen, cur = 0, 0
    while cur < seg_len:
        if num_predict is not None and chosen >= num_predict:
            break
        n = min(int(np.searchsorted(cdf, rng.random(), side="right")) + 1, max_span)
        if num_predict is not None:
            n = min(n, num_predict - chosen)
        ctx = (n * mask_alpha) // mask_beta
        l_ctx = int(rng.integers(ctx))
        beg = cur + l_ctx
        while beg < seg_len and not starts[beg]:
            beg += 1
        end = beg + n
        if end >= seg_len:  # also beg >= seg_len
            break
        mask[beg:end] = True
        chosen += n
        cur = end + ctx - l_ctx
    while num_predict is not None and chosen < num_predict:
        i = int(rng.integers(seg_len))
        if not mask[i]:
            mask[i] = True
            chosen += 1
    return mask[::-1].copy() if reverse else mask


# ----------------------------------------------------------------------------------------------------------------
# Factorisation order and attention masks (the authors' _local_perm)

def permutation_ranks(rng: np.random.Generator, seq_len: int, perm_size: int) -> np.ndarray:
    """int64 [seq_len]: each position's place in the factorisation order (the authors' `index`): one random
    permutation of perm_size offsets, shared by every block of perm_size consecutive positions; block k takes
    ranks k * perm_size ... (k + 1) * perm_size - 1."""
    if perm_size < 1 or seq_len % perm_size:
        raise ValueError(f"perm_size={perm_size} must divide seq_len={seq_len} (config.data.perm_size)")
    sigma = rng.permutation(perm_size)
    return (np.arange(0, seq_len, perm_size)[:, None] + sigma[None, :]).reshape(-1)


class LocalPerm(NamedTuple):
    """What `local_perm` returns: the authors' five outputs, then the order."""
    perm_mask: np.ndarray  # bool [L, L]: True = i may not attend to j
    target: np.ndarray  # int [L]: the token to predict at each position (the input token itself)
    target_mask: np.ndarray  # float32 [L]: 1 at the targets
    input_k: np.ndarray  # int [L]: the content stream's input (= inputs)
    input_q: np.ndarray  # float32 [L]: 1 where the query stream runs (= target_mask)
    rank: np.ndarray  # int64 [L]: place in the factorisation order (permutation_ranks)


def local_perm(rng: np.random.Generator, inputs, is_masked, perm_size: int, seq_len: int, *, sep_id: int,
               cls_id: int, valid=None) -> LocalPerm:
    """The authors' `_local_perm`: a factorisation order and the attention it allows.

    Non-target real tokens get the smallest rank (-1): everyone sees them and they see no target nor <sep> /
    <cls>. Targets (is_masked, not <sep> / <cls>) and <sep> / <cls> keep their permutation rank; i may see such
    a j only if rank j < rank i, except that a <sep> / <cls> also sees itself and a target never does.
    valid: bool [L], False on padding (never a target; no position may attend to it).
    """
    inputs = np.asarray(inputs)
    is_masked = np.asarray(is_masked, bool)
    if inputs.shape != (seq_len,) or is_masked.shape != (seq_len,):
        raise ValueError(f"local_perm: inputs {inputs.shape} and is_masked {is_masked.shape} must be [seq_len] = "
                         f"({seq_len},)")
    rank = permutation_ranks(rng, seq_len, perm_size)
    non_func = ~((inputs == sep_id) | (inputs == cls_id))
    if valid is not None:
        valid = np.asarray(valid, bool)
        is_masked = is_masked & valid
    non_mask = ~is_masked & non_func
    masked_or_func = ~non_mask
    rev_rank = np.where(non_mask, -1, rank)
    target_tokens = masked_or_func & non_func
    self_rev_rank = np.where(target_tokens, rev_rank, rev_rank + 1)  # targets cannot see themselves
    perm_mask = (self_rev_rank[:, None] <= rev_rank[None, :]) & masked_or_func[None, :]
    if valid is not None:
        perm_mask[:, ~valid] = True
    target_mask = target_tokens.astype(np.float32)
    return LocalPerm(perm_mask, inputs.copy(), target_mask, inputs, target_mask.copy(), rank)


# ----------------------------------------------------------------------------------------------------------------
# One row

def check_num_predict(num_predict: int, seq_len: int) -> None:
    """A row `A <sep> B <sep> <cls>` of seq_len tokens has at most seq_len - 3 tokens to predict."""
    if num_predict < 1 or num_predict > seq_len - 3:
        raise ValueError(f"config.data.num_predict={num_predict} must be in [1, {seq_len - 3}]: a row of "
                         f"config.data.seq_len={seq_len} tokens (A <sep> B <sep> <cls>) has {seq_len - 3} tokens "
                         "that can be predicted")


def row_goal(num_predict: int, seq_len: int, real_tokens: int) -> int:
    """Tokens to choose in a row of `real_tokens` real tokens: num_predict for a full row, proportionally fewer
    (at least 1) for a shorter one."""
    if real_tokens >= seq_len:
        return num_predict
    return max(1, min(real_tokens - 3, round(num_predict * real_tokens / seq_len)))


def _prediction_slots(inputs: np.ndarray, target_mask: np.ndarray, num_predict: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """target_mapping [P, L] (one-hot rows at the targets in ascending position order, then zero rows), targets [P]
    (the token at each target) and target_weights [P] of a row's target mask."""
    positions = np.flatnonzero(target_mask)[:num_predict]
    k = positions.size
    target_mapping = np.zeros((num_predict, inputs.size), np.float32)
    target_mapping[np.arange(k), positions] = 1.0
    targets = np.zeros(num_predict, np.int32)
    targets[:k] = inputs[positions]
    target_weights = np.zeros(num_predict, np.float32)
    target_weights[:k] = 1.0
    return target_mapping, targets, target_weights


def plm_features(tokens_a, tokens_b, rng: np.random.Generator, *, seq_len: int, num_predict: int, sep_id: int,
                 cls_id: int, pad_id: int = 0, perm_size: int | None = None, max_span: int = 5, mask_alpha: int = 6,
                 mask_beta: int = 1, word_starts=None) -> dict[str, np.ndarray]:
    """One row from sentences A and B (1-D int arrays, len(A) + len(B) + 3 <= seq_len).

    Returns inputs `A <sep> B <sep> <cls> <pad>...`, segment_ids (1 real, 0 pad), token_types (A and its <sep> 0,
    B and its <sep> 1, <cls> 2, pad SEG_ID_PAD) int32 [L]; perm_mask bool [L, L] (local_perm); target_mapping
    float32 [P, L], targets int32 [P], target_weights float32 [P] with P = num_predict, the targets in ascending
    position order, then zero rows. word_starts: ids [n] -> bool [n] (a tokenizer's `word_starts`) or None.
    """
    a, b = np.asarray(tokens_a).reshape(-1), np.asarray(tokens_b).reshape(-1)
    check_num_predict(num_predict, seq_len)
    real = a.size + b.size + 3
    if real > seq_len:
        raise ValueError(f"plm_features: A ({a.size} tokens) + B ({b.size}) + <sep> <sep> <cls> = {real} tokens "
                         f"do not fit in seq_len={seq_len}")
    row = np.concatenate([a, [sep_id], b, [sep_id, cls_id]]).astype(np.int32)
    goal = row_goal(num_predict, seq_len, real)
    chosen = sample_mask(rng, real, goal, max_span=max_span, mask_alpha=mask_alpha, mask_beta=mask_beta,
                         word_starts=None if word_starts is None else word_starts(row))
    inputs = np.full(seq_len, pad_id, np.int32)
    inputs[:real] = row
    valid = np.arange(seq_len) < real
    is_masked = np.zeros(seq_len, bool)
    is_masked[:real] = chosen
    perm = local_perm(rng, inputs, is_masked, perm_size or seq_len, seq_len, sep_id=sep_id, cls_id=cls_id,
                      valid=valid)
    target_mapping, targets, target_weights = _prediction_slots(inputs, perm.target_mask, num_predict)
    token_types = np.full(seq_len, SEG_ID_PAD, np.int32)
    token_types[:real] = np.concatenate([np.full(a.size + 1, SEG_ID_A), np.full(b.size + 1, SEG_ID_B), [SEG_ID_CLS]])
    return {"inputs": inputs, "segment_ids": valid.astype(np.int32), "token_types": token_types,
            "perm_mask": perm.perm_mask, "target_mapping": target_mapping, "targets": targets,
            "target_weights": target_weights}


def plm_stream_features(reuse, tokens_a, tokens_b, rng: np.random.Generator, *, seq_len: int, num_predict: int,
                        sep_id: int, cls_id: int, perm_size: int = 0, max_span: int = 5, mask_alpha: int = 6,
                        mask_beta: int = 1, reverse: bool = False) -> dict[str, np.ndarray]:
    """One full row of the recurrent layout `reuse A <sep> B <sep> <cls>` (the authors' create_tfrecords and
    the reuse_len branch of their input pipeline): targets and factorisation orders drawn apart for the reuse part
    and the rest, the reuse part blocked from the rest; the rest sees all of the reuse part. Same keys as
    plm_features; segment_ids all 1 (the row is full)."""
    reuse, a, b = (np.asarray(x, np.int32).reshape(-1) for x in (reuse, tokens_a, tokens_b))
    check_num_predict(num_predict, seq_len)
    reuse_len = reuse.size
    rest = np.concatenate([a, [sep_id], b, [sep_id, cls_id]]).astype(np.int32)
    if reuse_len + rest.size != seq_len:
        raise ValueError(f"plm_stream_features: reuse ({reuse_len}) + A ({a.size}) + B ({b.size}) + 3 must be "
                         f"seq_len={seq_len}")
    inputs = np.concatenate([reuse, rest])
    goal_1 = num_predict // 2
    goal_0 = num_predict - goal_1
    parts = []
    for part, goal in ((reuse, goal_0), (rest, goal_1)):
        chosen = sample_mask(rng, part.size, min(goal, part.size), max_span=max_span, mask_alpha=mask_alpha,
                             mask_beta=mask_beta, reverse=reverse)
        parts.append(local_perm(rng, part, chosen, perm_size or part.size, part.size, sep_id=sep_id, cls_id=cls_id))
    rest_len = rest.size
    perm_mask = np.block([[parts[0].perm_mask, np.ones((reuse_len, rest_len), bool)],
                          [np.zeros((rest_len, reuse_len), bool), parts[1].perm_mask]])
    target_mask = np.concatenate([parts[0].target_mask, parts[1].target_mask])
    target_mapping, targets, target_weights = _prediction_slots(inputs, target_mask, num_predict)
    token_types = np.concatenate([np.full(reuse_len + a.size + 1, SEG_ID_A), np.full(b.size + 1, SEG_ID_B),
                                  [SEG_ID_CLS]]).astype(np.int32)
    return {"inputs": inputs, "segment_ids": np.ones(seq_len, np.int32), "token_types": token_types,
            "perm_mask": perm_mask, "target_mapping": target_mapping, "targets": targets,
            "target_weights": target_weights}


def token_streams(source, tokenizer, num_streams: int, seed: int, text_key: str, stats=None) -> np.ndarray:
    """[num_streams, n] int32: every document's tokens, documents in a seeded order, cut into num_streams
    contiguous streams of equal length (the authors' `batchify`; the remainder is dropped)."""
    documents = TokenizedDocuments(source, tokenizer, text_key, stats)
    order = np.random.default_rng([seed, SALT_PLM]).permutation(len(source))
    pieces = [sentence for i in order for sentence in documents.sentences(int(i))]
    tokens = np.concatenate(pieces).astype(np.int32) if pieces else np.zeros(0, np.int32)
    n = tokens.size // num_streams
    return tokens[:n * num_streams].reshape(num_streams, n)


@dataclasses.dataclass
class StreamRows:
    """step index -> this process's rows of the recurrent layout (a batch; deterministic given the step)."""

    streams: np.ndarray  # [num_streams, n]: forward streams (bi_data: the backward rows read them reversed)
    rows: tuple[int, ...]  # the global batch rows this process holds
    objective: "PermutationLM"
    sep_id: int
    cls_id: int
    seed: int

    @property
    def steps_per_cycle(self) -> int:
        o = self.objective
        return (self.streams.shape[1] - o.seq_len) // o.reuse_len + 1

    def __call__(self, step):
        o, step = self.objective, int(step)
        num_streams, length = self.streams.shape
        start = (step % self.steps_per_cycle) * o.reuse_len
        body = o.seq_len - o.reuse_len - 3  # A + B
        out = []
        for r in self.rows:
            rng = np.random.default_rng([self.seed, SALT_PLM, step, r])
            reverse = r >= num_streams
            stream = self.streams[r - num_streams][::-1] if reverse else self.streams[r]
            reuse = stream[start:start + o.reuse_len]
            len_a = int(rng.integers(1, body))
            a = stream[start + o.reuse_len:start + o.reuse_len + len_a]
            len_b = body - len_a
            if rng.random() < 0.5:  # B continues A
                b = stream[start + o.reuse_len + len_a:start + o.reuse_len + body]
            else:  # B from another place of the corpus
                other = self.streams[int(rng.integers(num_streams))]
                other = other[::-1] if reverse else other
                j = int(rng.integers(0, length - len_b + 1))
                b = other[j:j + len_b]
            out.append(plm_stream_features(reuse, a, b, rng, seq_len=o.seq_len, num_predict=o.predictions,
                                           sep_id=self.sep_id, cls_id=self.cls_id, perm_size=o.perm_size,
                                           max_span=o.max_span, mask_alpha=o.mask_alpha, mask_beta=o.mask_beta,
                                           reverse=reverse))
        return {k: np.stack([row[k] for row in out]) for k in out[0]}


def split_pair(pair: dict) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of a make_sentence_pair row `[CLS] A [SEP] B [SEP] <pad>...`."""
    real = int(pair["segment_ids"].sum())
    len_b = int(pair["token_types"][:real].sum()) - 1
    len_a = real - 3 - len_b
    inputs = pair["inputs"]
    return inputs[1:1 + len_a], inputs[2 + len_a:2 + len_a + len_b]


@dataclasses.dataclass
class PermutationExample:
    """global example index -> a sentence pair of document index (B random with prob 1/2) -> one PLM row."""

    documents: TokenizedDocuments
    tokenizer: object
    objective: "PermutationLM"

    def __call__(self, example_index, rng: np.random.Generator):
        o = self.objective
        doc_index, tok, stats = int(example_index) // o.pairs_per_document, self.tokenizer, self.documents.stats
        if not self.documents.sentences(doc_index):
            if stats is not None:
                stats.add("empty_skipped")
            return None  # an empty document makes no example (grain drops the None)
        if stats is not None:
            stats.add("documents")
        pair = make_sentence_pair(self.documents, doc_index, rng, max_length=o.seq_len, cls_id=tok.cls_id,
                                  sep_id=tok.sep_id, pad_id=tok.pad_id, random_next_prob=0.5, short_seq_prob=0.0)
        tokens_a, tokens_b = split_pair(pair)
        return plm_features(tokens_a, tokens_b, rng, seq_len=o.seq_len, num_predict=o.predictions,
                            sep_id=tok.sep_id, cls_id=tok.cls_id, pad_id=tok.pad_id, perm_size=o.permutation_size,
                            max_span=o.max_span, mask_alpha=o.mask_alpha, mask_beta=o.mask_beta,
                            word_starts=getattr(tok, "word_starts", None))


# ----------------------------------------------------------------------------------------------------------------
# Model side

def permutation_lm_outputs(model, params, batch, rng, return_hidden: bool = False, mems=None):
    """The XLNet LM head model's outputs: logits of the query stream at the target_mapping rows [B, P, V], and
    new_mems (with the model's mem_len) for the next segment."""
    return model.apply(
        {"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"),
        token_types=batch.get("token_types"), perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"],
        mems=mems, deterministic=rng is None, rngs=None if rng is None else {"dropout": rng},
        return_hidden=return_hidden)


def permutation_lm_loss(model, config: LossConfig | None = None):
    """loss_fn: mean cross-entropy of the query stream's predictions of `targets`, weighted by target_weights.
    `loss_fn.with_memory(params, batch, rng, mems) -> (loss, (metrics, new_mems))` is the same loss reading the
    previous segment's memory (what jaxlm.train.make_train_step calls when the state carries one)."""
    config = config or LossConfig()

    def loss_and_memory(params, batch, rng, mems):
        if config.use_chunks():
            out = permutation_lm_outputs(model, params, batch, rng, return_hidden=True, mems=mems)
            loss_sum, weight_sum, correct = losses.chunked_cross_entropy(
                out["lm_hidden"], model.output_embedding(params), batch["targets"], batch["target_weights"],
                chunk_size=config.logits_chunk_size, bias=params["lm_bias"])
            denom = jnp.maximum(weight_sum, 1e-8)
            loss = loss_sum / denom
            return loss, {"loss": loss, "lm_loss": jax.lax.stop_gradient(loss),
                          "accuracy": correct / denom, "num_tokens": weight_sum}, out["new_mems"]
        out = permutation_lm_outputs(model, params, batch, rng, mems=mems)
        loss, metrics = losses.weighted_mean_cross_entropy(out["logits"], batch["targets"], batch["target_weights"],
                                                           label_smoothing=config.label_smoothing,
                                                           z_loss=config.z_loss)
        return loss, {k: metrics[k] for k in ("loss", "lm_loss", "accuracy", "num_tokens")}, out["new_mems"]

    def loss_fn(params, batch, rng):
        loss, metrics, _ = loss_and_memory(params, batch, rng, None)
        return loss, metrics

    def with_memory(params, batch, rng, mems):
        loss, metrics, new_mems = loss_and_memory(params, batch, rng, mems)
        if new_mems is None:
            raise ValueError("loss_fn.with_memory: the model keeps no memory (config.model.mem_len is 0)")
        return loss, (metrics, new_mems)

    loss_fn.with_memory = with_memory
    return loss_fn


@dataclasses.dataclass(frozen=True)
class PermutationLM(Objective):
    """XLNet's permutation LM over sentence pairs `A <sep> B <sep> <cls>` (see the module docstring).

    Settings (config.data): seq_len; num_predict (targets per row, 0 = seq_len // 6: the paper's K = 6, the
    authors' 85 of 512); perm_size (0 = seq_len; must divide it); max_span (5), mask_alpha (6), mask_beta (1).

    Batch (P = num_predict; one sentence pair per row, right-padded): inputs, segment_ids (1 real, 0 padding),
    token_types (XLNet's segment ids) [B,L] int32; perm_mask [B,L,L] bool (True: i may not attend to j);
    target_mapping [B,P,L] float32; targets [B,P] int32; target_weights [B,P] float32.

    mem_len / reuse_len / bi_data are the model's (config.model; `for_model` copies them): with mem_len > 0 the
    training rows follow the recurrent layout (module docstring) and the train state carries the memory.
    """
    name: ClassVar[str] = "plm"
    needs_heads: ClassVar[tuple[str, ...]] = ("permutation_lm",)
    min_seq_len: ClassVar[int] = 8

    num_predict: int = 0
    perm_size: int = 0
    max_span: int = 5
    mask_alpha: int = 6
    mask_beta: int = 1
    pairs_per_document: int = 1  # sentence pairs drawn from each document per epoch
    # The model's memory settings (config.model.mem_len / reuse_len / bi_data), set by `for_model`.
    mem_len: int = 0
    reuse_len: int = 0
    bi_data: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.num_predict < 0:
            raise ValueError(f"config.data.num_predict={self.num_predict} must be >= 0 (0 = seq_len // 6)")
        check_num_predict(self.predictions, self.seq_len)
        if self.perm_size < 0 or self.seq_len % self.permutation_size:
            raise ValueError(f"config.data.perm_size={self.perm_size} must divide config.data.seq_len="
                             f"{self.seq_len} (0 = seq_len)")
        _check_mask_args(self.max_span, self.mask_alpha, self.mask_beta)
        if self.pairs_per_document < 1:
            raise ValueError(f"config.data.pairs_per_document={self.pairs_per_document} must be >= 1")
        if self.mem_len:
            self._check_memory_layout()

    def _check_memory_layout(self):
        L, R = self.seq_len, self.reuse_len
        if not 1 <= R <= L - 5:
            raise ValueError(f"config.model.reuse_len={R}: with a memory (config.model.mem_len={self.mem_len}) each "
                             f"row reuses 1..seq_len - 5 = {L - 5} tokens of its stream (the authors: seq_len / 2)")
        if self.perm_size and (R % self.perm_size or (L - R) % self.perm_size):
            raise ValueError(f"config.data.perm_size={self.perm_size} must divide config.model.reuse_len={R} and "
                             f"seq_len - reuse_len = {L - R} (the two parts are permuted apart)")

    def for_model(self, model_config):
        """The objective with the model's memory settings (mem_len, reuse_len, bi_data), checked."""
        return dataclasses.replace(self, mem_len=getattr(model_config, "mem_len", None) or 0,
                                   reuse_len=getattr(model_config, "reuse_len", None) or 0,
                                   bi_data=bool(getattr(model_config, "bi_data", False)))

    def memory_shape(self, model_config, batch_size: int) -> tuple[int, ...] | None:
        """[layers, global batch, mem_len, hidden] with a memory, else None."""
        if not self.mem_len:
            return None
        return (model_config.num_layers, batch_size, self.mem_len, model_config.hidden_size)

    @property
    def predictions(self) -> int:
        return self.num_predict or max(1, self.seq_len // 6)

    @property
    def permutation_size(self) -> int:
        return self.perm_size or self.seq_len

    def check_tokenizer(self, tokenizer):
        for name in ("cls_id", "sep_id", "pad_id"):
            getattr(tokenizer, name)  # raises naming the tokenizer file and the missing token

    def prepare_model_config(self, model_config, tokenizer):
        # XLNet reads padding from pad_token_id where no segment_ids are given (fine-tuning, export).
        if hasattr(model_config, "pad_token_id"):
            return dataclasses.replace(model_config, pad_token_id=tokenizer.pad_id)
        return model_config

    def batch_spec(self, batch_size):
        L, P, B = self.seq_len, self.predictions, batch_size
        return {"inputs": ((B, L), np.dtype(np.int32)), "segment_ids": ((B, L), np.dtype(np.int32)),
                "token_types": ((B, L), np.dtype(np.int32)), "perm_mask": ((B, L, L), np.dtype(bool)),
                "target_mapping": ((B, P, L), np.dtype(np.float32)), "targets": ((B, P), np.dtype(np.int32)),
                "target_weights": ((B, P), np.dtype(np.float32))}

    def init_inputs(self, family, model_config):
        L, P = self.seq_len, self.predictions
        B = 2 if getattr(model_config, "bi_data", False) else 1  # bi_data needs a forward and a backward row
        return {**family.init_inputs(model_config, B, L),
                "segment_ids": jnp.ones((B, L), jnp.int32), "token_types": jnp.zeros((B, L), jnp.int32),
                "perm_mask": jnp.zeros((B, L, L), bool),
                "target_mapping": jnp.broadcast_to(jax.nn.one_hot(jnp.arange(P), L, dtype=jnp.float32), (B, P, L))}

    def dataset(self, source, tokenizer, options):
        self.check_tokenizer(tokenizer)
        if self.mem_len:
            return self._stream_dataset(source, tokenizer, options)
        documents = TokenizedDocuments(source, tokenizer, options.text_key, options.stats)
        ds = pipeline.epochs(grain.MapDataset.range(len(source) * self.pairs_per_document), options)
        # Before the process slice: the rng is keyed by the *global* example index (exact resume, any process count).
        ds = ds.random_map(PermutationExample(documents, tokenizer, self),
                           seed=pipeline.derive_seed(options.seed, SALT_PLM))
        it = pipeline.shard(ds, options).to_iter_dataset(options.grain_read_options)
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def _stream_dataset(self, source, tokenizer, options):
        """The recurrent layout: batch t holds step t's rows of this process (grain keeps t, so resumes are
        exact); every process reads the same streams and takes its own rows of the global batch."""
        global_batch = options.batch_size * options.process_count
        if self.bi_data and global_batch % 2:
            raise ValueError(f"config.model.bi_data=True needs an even global batch (config.train.batch_size="
                             f"{global_batch})")
        num_streams = global_batch // 2 if self.bi_data else global_batch
        streams = token_streams(source, tokenizer, num_streams, options.seed, options.text_key, options.stats)
        if streams.shape[1] < self.seq_len:
            raise ValueError(f"the training split has {streams.size:,} tokens: too few for {num_streams} streams "
                             f"(one per batch row) of at least seq_len={self.seq_len} tokens; lower "
                             "config.train.batch_size or give more text")
        first = options.process_index * options.batch_size
        rows = StreamRows(streams, tuple(range(first, first + options.batch_size)), self, tokenizer.sep_id,
                          tokenizer.cls_id, pipeline.derive_seed(options.seed, SALT_PLM))
        logging.info("plm with memory: %d streams of %d tokens, %d steps before they repeat", num_streams,
                     streams.shape[1], rows.steps_per_cycle)
        it = grain.MapDataset.range(STREAM_STEPS).map(rows).to_iter_dataset(options.grain_read_options)
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def eval_iterator(self, source, tokenizer, **kwargs):
        """Evaluation reads independent sentence pairs (no memory: a dev score that does not depend on the
        order the rows come in)."""
        return super(PermutationLM, dataclasses.replace(self, mem_len=0)).eval_iterator(source, tokenizer, **kwargs)

    def loss_fn(self, model):
        return permutation_lm_loss(model, self.loss)

    def train_flops_per_example(self, family, model_config):
        """Both streams (the family counts the query stream at the P targets beside the content stream) and the
        LM head at the P targets; with a memory, the M extra keys every position attends to and their projection."""
        flops = (family.backbone_train_flops(model_config, tokens=self.seq_len, query_positions=self.predictions,
                                             memory=self.mem_len)
                 + family.lm_head_train_flops(model_config, self.predictions))
        if self.mem_len:  # each layer projects the memory to keys and values; XLA differentiates the whole
            # [memory, segment] concatenation, so the memory's (discarded) input gradient is computed too: 6x
            width = model_config.num_heads * model_config.head_dim
            flops += 6.0 * 2 * model_config.hidden_size * width * self.mem_len * model_config.num_layers
        return flops

    def baselines(self, eval_batches):
        """Accuracy of always predicting the most frequent target token."""
        counts = collections.Counter()
        for batch in eval_batches:
            targets = batch["targets"][batch["target_weights"] > 0]
            counts.update(dict(zip(*(x.tolist() for x in np.unique(targets, return_counts=True)))))
        total = sum(counts.values())
        return {"eval_plm_unigram_baseline_accuracy": max(counts.values()) / total} if total else {}
