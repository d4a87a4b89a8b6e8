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

Differences from the authors' pipeline, all deliberate:
- no memory: rows are independent (no reuse_len split of a row into a cached part and a new part, no mems fed
  to the model); with reuse_len the authors also split num_predict and the permutation in two halves, here one
  sample_mask / local_perm covers the whole row (perm_size defaults to seq_len, the authors' reuse_len = L / 2);
- no bi_data: every row reads forward (`sample_mask(reverse=True)` is there for a pipeline that adds it);
- rows come one sentence pair per example index from a document (as `mlm_nsp`), not a stream cut across
  documents: a pair shorter than seq_len is padded on the right (segment_ids 0, token_types SEG_ID_PAD; padding
  is blocked in perm_mask too) and predicts round(num_predict * real tokens / seq_len) tokens.
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

from jaxlm.data import pipeline
from jaxlm.data.pairing import TokenizedDocuments, make_sentence_pair
from jaxlm.objectives import losses
from jaxlm.objectives.base import LossConfig, Objective

# XLNet's segment ids (token_types): the authors' pretraining rows and classifier_utils.
SEG_ID_A, SEG_ID_B, SEG_ID_CLS, SEG_ID_PAD = 0, 1, 2, 4
PLM_KEYS = ("inputs", "segment_ids", "token_types", "perm_mask", "target_mapping", "targets", "target_weights")
SALT_PLM = pipeline.SALT_EXAMPLE


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
    positions = np.flatnonzero(perm.target_mask)
    k = positions.size
    target_mapping = np.zeros((num_predict, seq_len), np.float32)
    target_mapping[np.arange(k), positions] = 1.0
    targets = np.zeros(num_predict, np.int32)
    targets[:k] = inputs[positions]
    target_weights = np.zeros(num_predict, np.float32)
    target_weights[:k] = 1.0
    token_types = np.full(seq_len, SEG_ID_PAD, np.int32)
    token_types[:real] = np.concatenate([np.full(a.size + 1, SEG_ID_A), np.full(b.size + 1, SEG_ID_B), [SEG_ID_CLS]])
    return {"inputs": inputs, "segment_ids": valid.astype(np.int32), "token_types": token_types,
            "perm_mask": perm.perm_mask, "target_mapping": target_mapping, "targets": targets,
            "target_weights": target_weights}


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

def permutation_lm_outputs(model, params, batch, rng, return_hidden: bool = False):
    """The XLNet LM head model's outputs: logits of the query stream at the target_mapping rows [B, P, V]."""
    return model.apply(
        {"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"),
        token_types=batch.get("token_types"), perm_mask=batch["perm_mask"], target_mapping=batch["target_mapping"],
        deterministic=rng is None, rngs=None if rng is None else {"dropout": rng}, return_hidden=return_hidden)


def permutation_lm_loss(model, config: LossConfig | None = None):
    """loss_fn: mean cross-entropy of the query stream's predictions of `targets`, weighted by target_weights."""
    config = config or LossConfig()

    def loss_fn(params, batch, rng):
        if config.use_chunks():
            hidden = permutation_lm_outputs(model, params, batch, rng, return_hidden=True)["lm_hidden"]
            loss_sum, weight_sum, correct = losses.chunked_cross_entropy(
                hidden, model.output_embedding(params), batch["targets"], batch["target_weights"],
                chunk_size=config.logits_chunk_size, bias=params["lm_bias"])
            denom = jnp.maximum(weight_sum, 1e-8)
            loss = loss_sum / denom
            return loss, {"loss": loss, "lm_loss": jax.lax.stop_gradient(loss),
                          "accuracy": correct / denom, "num_tokens": weight_sum}
        logits = permutation_lm_outputs(model, params, batch, rng)["logits"]
        loss, metrics = losses.weighted_mean_cross_entropy(logits, batch["targets"], batch["target_weights"],
                                                           label_smoothing=config.label_smoothing,
                                                           z_loss=config.z_loss)
        return loss, {k: metrics[k] for k in ("loss", "lm_loss", "accuracy", "num_tokens")}

    return loss_fn


@dataclasses.dataclass(frozen=True)
class PermutationLM(Objective):
    """XLNet's permutation LM over sentence pairs `A <sep> B <sep> <cls>` (see the module docstring).

    Settings (config.data): seq_len; num_predict (targets per row, 0 = seq_len // 6: the paper's K = 6, the
    authors' 85 of 512); perm_size (0 = seq_len; must divide it); max_span (5), mask_alpha (6), mask_beta (1).

    Batch (P = num_predict; one sentence pair per row, right-padded): inputs, segment_ids (1 real, 0 padding),
    token_types (XLNet's segment ids) [B,L] int32; perm_mask [B,L,L] bool (True: i may not attend to j);
    target_mapping [B,P,L] float32; targets [B,P] int32; target_weights [B,P] float32.
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
        return {**family.init_inputs(model_config, 1, L),
                "segment_ids": jnp.ones((1, L), jnp.int32), "token_types": jnp.zeros((1, L), jnp.int32),
                "perm_mask": jnp.zeros((1, L, L), bool),
                "target_mapping": jax.nn.one_hot(jnp.arange(P), L, dtype=jnp.float32)[None]}

    def dataset(self, source, tokenizer, options):
        self.check_tokenizer(tokenizer)
        documents = TokenizedDocuments(source, tokenizer, options.text_key, options.stats)
        ds = pipeline.epochs(grain.MapDataset.range(len(source) * self.pairs_per_document), options)
        # Before the process slice: the rng is keyed by the *global* example index (exact resume, any process count).
        ds = ds.random_map(PermutationExample(documents, tokenizer, self),
                           seed=pipeline.derive_seed(options.seed, SALT_PLM))
        it = pipeline.shard(ds, options).to_iter_dataset(options.grain_read_options)
        it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
        return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

    def loss_fn(self, model):
        return permutation_lm_loss(model, self.loss)

    def train_flops_per_example(self, family, model_config):
        """Both streams (the family counts the query stream at the P targets beside the content stream) and the
        LM head at the P targets."""
        return (family.backbone_train_flops(model_config, tokens=self.seq_len, query_positions=self.predictions)
                + family.lm_head_train_flops(model_config, self.predictions))

    def baselines(self, eval_batches):
        """Accuracy of always predicting the most frequent target token."""
        counts = collections.Counter()
        for batch in eval_batches:
            targets = batch["targets"][batch["target_weights"] > 0]
            counts.update(dict(zip(*(x.tolist() for x in np.unique(targets, return_counts=True)))))
        total = sum(counts.values())
        return {"eval_plm_unigram_baseline_accuracy": max(counts.values()) / total} if total else {}
