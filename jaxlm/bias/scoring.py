"""Sentence scores for bias probes, batched on the mesh: what a language model thinks of each sentence of a pair.

    pll       masked LMs (BERT, RoBERTa; XLNet): the pseudo-log-likelihood of the tokens the two sentences share,
              as CrowS-Pairs' metric.py computes it. The shared tokens are difflib's 'equal' blocks over the token
              ids of (sent1, sent2); each is masked in turn and scored by the log-softmax at its position; the
              special tokens ([CLS] / [SEP], <s> / </s>, XLNet's <sep> <cls>) are never masked (metric.py skips the
              first and last shared token, which for BERT and RoBERTa are exactly those). XLNet predicts the masked
              token from its query stream: no position may see it (perm_mask), target_mapping points at it.
    sentence  causal LMs (GPT-2) and T5: log p(sentence) as lm-evaluation-harness's crows_pairs task asks it
              (an empty context): the tokens without special tokens, conditioned on the prefix token (BOS, else
              EOS); T5's encoder reads that prefix token and its decoder writes the sentence.

A sentence with n shared tokens is n rows; every row of every pair goes through one jitted function, longest
first, in fixed-size batches cut to a bucketed width (16, 24, 32, 48, 64, 96, ...), so a whole data set compiles a few
shapes and never runs a forward pass per token from Python.
"""
from __future__ import annotations

import collections
import dataclasses
import difflib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding as shd
from jaxlm.tasks.batches import iterate_batches
from jaxlm.tasks.features import sequence_layout
from jaxlm.workdir import Run

MIN_WIDTH = 16
# The pretraining head a family's model has -> how its sentences are scored.
SCORING_BY_HEAD = {"masked_lm": "pll", "permutation_lm": "pll", "causal_lm": "sentence", "seq2seq_lm": "sentence"}
IN_FLIGHT = 4  # batches dispatched ahead of the one whose scores are read back
DEFAULT_BATCH_SIZE = {"pll": 128, "sentence": 32}  # rows per batch (a pll row projects one position)


def bucket(length: int, cap: int | None = None) -> int:
    """The narrowest width of the ladder 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5 times them) that holds
    `length`, at most `cap` (the position table): a row pays at most half its length in padding, a data set of
    short sentences compiles a handful of widths."""
    width = MIN_WIDTH
    while width < length:
        width = width * 3 // 2 if width & (width - 1) == 0 else width * 4 // 3
    return width if cap is None else max(length, min(width, cap))


def scoring_of(run: Run) -> str:
    """'pll' or 'sentence' for the run's pretraining head."""
    heads = run.family.heads(run.model_config)
    for head in heads:
        if head in SCORING_BY_HEAD:
            return SCORING_BY_HEAD[head]
    raise ValueError(f"{run.path}: a {run.family.name!r} model with heads {heads} has no language-model head to "
                     f"score sentences with (one of {sorted(SCORING_BY_HEAD)})")


def shared_spans(ids1: Sequence[int], ids2: Sequence[int]) -> tuple[list[int], list[int]]:
    """metric.py's get_span: the positions of the tokens difflib finds in 'equal' blocks, in each sequence."""
    matcher = difflib.SequenceMatcher(None, [str(x) for x in ids1], [str(x) for x in ids2])
    template1, template2 = [], []
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            template1 += list(range(a0, a1))
            template2 += list(range(b0, b1))
    return template1, template2


@dataclasses.dataclass
class Scores:
    """One score per sentence pair (float64 sums of float32 log-probabilities), and what computing them took."""
    sent1: np.ndarray  # [N] metric.py's sent1 (pll) or the first sentence given
    sent2: np.ndarray
    scoring: str
    rows: int  # model rows scored (pll: masked copies; sentence: sentences)
    batches: int
    widths: tuple[int, ...]  # the bucketed widths compiled
    seconds: float  # from the first row built to the last score on the host, compiles included

    @property
    def pairs_per_second(self) -> float:
        return len(self.sent1) / self.seconds if self.seconds > 0 else float("inf")


class SentenceScorer:
    """`scorer(pairs of texts) -> Scores` for one run on its mesh (see the module docstring)."""

    def __init__(self, run: Run, batch_size: int = 0):
        self.run = run
        self.scoring = scoring_of(run)
        self.heads = run.family.heads(run.model_config)
        shards = run.mesh.shape["data"] * run.mesh.shape["fsdp"]
        rows = batch_size or DEFAULT_BATCH_SIZE[self.scoring]
        self.batch_size = -(-rows // shards) * shards
        self.max_length = run.family.max_length(run.model_config)
        tok = run.tokenizer
        if self.scoring == "pll":
            self.layout = sequence_layout(tok, run.family.text_style)
            self.mask_id = tok.mask_id
        else:
            bos = _optional_id(tok, "bos")
            self.prefix_id = tok.eos_id if bos is None else bos
        self._jitted = None

    # ------------------------------------------------------------------ rows
    def _encode(self, text: str) -> list[int]:
        ids = list(self.run.tokenizer.encode(text))
        if self.scoring == "pll":
            ids = [*self.layout.prefix, *ids, *self.layout.a_suffix, *self.layout.end]
        return ids

    def _pll_rows(self, ids1: list[int], ids2: list[int], owner: int) -> list[dict]:
        """The masked copies of a pair's two sentences: one row per shared text token of each."""
        template1, template2 = shared_spans(ids1, ids2)
        specials = set(self.layout.prefix) | set(self.layout.a_suffix) | set(self.layout.end)
        rows = []
        for p1, p2 in zip(template1, template2):
            if ids1[p1] in specials:  # shared, so ids2[p2] is the same token
                continue
            for side, (ids, p) in enumerate(((ids1, p1), (ids2, p2))):
                masked = list(ids)
                masked[p] = self.mask_id
                rows.append({"inputs": masked, "position": p, "target": ids[p], "owner": 2 * owner + side})
        return rows

    def _sentence_row(self, ids: list[int], owner: int) -> dict:
        """lm-eval's request for an empty context: the prefix token, then the sentence (if the sentence already
        starts with the prefix token, that token is the context)."""
        context, continuation = [self.prefix_id], ids
        if ids and ids[0] == self.prefix_id:
            context, continuation = ids[:1], ids[1:]
        if "seq2seq_lm" in self.heads:
            start = self.run.model_config.decoder_start_token_id
            return {"inputs": context, "decoder_inputs": [start, *continuation[:-1]], "targets": continuation,
                    "first_target": 0, "owner": owner}
        whole = context + continuation
        return {"inputs": whole[:-1], "targets": whole[1:], "first_target": len(context) - 1, "owner": owner}

    def rows(self, pairs: Sequence[tuple[str, str]], where: Sequence[str] | None = None) -> list[dict]:
        """Every model row of `pairs` (sent1, sent2); `where` names each pair in errors (file:line)."""
        rows = []
        for n, (text1, text2) in enumerate(pairs):
            ids1, ids2 = self._encode(text1), self._encode(text2)
            longest = max(len(ids1), len(ids2))  # pll: the row; sentence: the prefix + all but the last token
            if self.max_length is not None and longest > self.max_length:
                name = where[n] if where is not None else f"pair {n}"
                raise ValueError(f"{name}: {longest} tokens, longer than the model's {self.max_length} positions")
            if self.scoring == "pll":
                rows += self._pll_rows(ids1, ids2, n)
            else:
                rows += [self._sentence_row(ids1, 2 * n), self._sentence_row(ids2, 2 * n + 1)]
        return rows

    # ------------------------------------------------------------------ the jitted scorer
    def _score_fn(self):
        model, heads = self.run.model, self.heads

        def target_logp(logits, targets):
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

        def score(params, batch):
            variables = {"params": params}
            if "masked_lm" in heads:  # MLM logits at the masked position only
                out = model.apply(variables, batch["inputs"], batch["segment_ids"],
                                  token_types=jnp.zeros_like(batch["inputs"]),
                                  masked_positions=batch["position"][:, None])
                return target_logp(out["mlm_logits"][:, 0], batch["target"])
            if "permutation_lm" in heads:  # the query stream at the masked position, which no position sees
                width = batch["inputs"].shape[1]
                hidden = jax.nn.one_hot(batch["position"], width, dtype=jnp.float32)  # [B, L]
                perm_mask = jnp.broadcast_to(hidden[:, None, :] > 0, (hidden.shape[0], width, width))
                out = model.apply(variables, batch["inputs"], batch["segment_ids"], perm_mask=perm_mask,
                                  target_mapping=hidden[:, None, :])
                return target_logp(out["logits"][:, 0], batch["target"])
            if "seq2seq_lm" in heads:
                logits = model.apply(variables, batch["inputs"], batch["decoder_inputs"], batch["segment_ids"],
                                     batch["decoder_segment_ids"])
            else:
                logits = model.apply(variables, batch["inputs"], segment_ids=batch["segment_ids"])
            return jnp.sum(jnp.where(batch["target_mask"], target_logp(logits, batch["targets"]), 0.0), axis=-1)

        if self._jitted is None:
            shardings = jax.tree.map(lambda a: a.sharding, self.run.params)
            self._jitted = jax.jit(score, in_shardings=(shardings, shd.batch_sharding(self.run.mesh)),
                                   out_shardings=shd.replicated(self.run.mesh))
        return self._jitted

    def _batch(self, rows: list[dict]) -> dict[str, np.ndarray]:
        """Rows -> fixed-size numpy arrays (batch_size rows, padding rows all zero), width the longest's bucket."""
        n = self.batch_size
        width = bucket(max(len(r["inputs"]) for r in rows), self.max_length)
        batch = {"inputs": np.zeros((n, width), np.int32), "segment_ids": np.zeros((n, width), np.int32)}
        for i, r in enumerate(rows):
            batch["inputs"][i, :len(r["inputs"])] = r["inputs"]
            batch["segment_ids"][i, :len(r["inputs"])] = 1
        if self.scoring == "pll":
            batch["position"] = np.array([r["position"] for r in rows] + [0] * (n - len(rows)), np.int32)
            batch["target"] = np.array([r["target"] for r in rows] + [0] * (n - len(rows)), np.int32)
            return batch
        target_width = width
        if "seq2seq_lm" in self.heads:
            target_width = bucket(max(len(r["targets"]) for r in rows), self.max_length)
            batch["decoder_inputs"] = np.zeros((n, target_width), np.int32)
            batch["decoder_segment_ids"] = np.zeros((n, target_width), np.int32)
            for i, r in enumerate(rows):
                batch["decoder_inputs"][i, :len(r["decoder_inputs"])] = r["decoder_inputs"]
                batch["decoder_segment_ids"][i, :len(r["decoder_inputs"])] = 1
        batch["targets"] = np.zeros((n, target_width), np.int32)
        batch["target_mask"] = np.zeros((n, target_width), bool)
        for i, r in enumerate(rows):
            batch["targets"][i, :len(r["targets"])] = r["targets"]
            batch["target_mask"][i, r["first_target"]:len(r["targets"])] = True
        return batch

    def __call__(self, pairs: Sequence[tuple[str, str]], where: Sequence[str] | None = None,
                 progress=None) -> Scores:
        """Scores of (sent1, sent2) pairs; `progress(rows)` is called as batches finish (a progress bar)."""
        start = time.perf_counter()
        rows = self.rows(pairs, where)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["inputs"]))
        score = self._score_fn()
        mesh, sharding = self.run.mesh, shd.batch_sharding(self.run.mesh)
        totals = np.zeros(2 * len(pairs), np.float64)
        pending, widths = collections.deque(), set()

        def collect():  # the oldest batch's scores onto their sentences
            index, out = pending.popleft()
            values = np.asarray(jax.device_get(out), np.float64)[:len(index)]
            np.add.at(totals, [rows[i]["owner"] for i in index], values)
            if progress is not None:
                progress(len(index))

        for first in range(0, len(order), self.batch_size):
            index = order[first:first + self.batch_size]
            batch = self._batch([rows[i] for i in index])
            widths.add(batch["inputs"].shape[1])
            local = next(iterate_batches(batch, self.batch_size, process_index=jax.process_index(),
                                         process_count=jax.process_count()))
            with shd.mesh_context(mesh, self.run.rules):
                pending.append((index, score(self.run.params, shd.host_local_to_global(local, mesh, sharding))))
            if len(pending) > IN_FLIGHT:  # the host builds ahead while the device computes, never all of it
                collect()
        batches = -(-len(order) // self.batch_size)
        while pending:
            collect()
        return Scores(totals[0::2], totals[1::2], self.scoring, len(rows), batches, tuple(sorted(widths)),
                      time.perf_counter() - start)


def _optional_id(tokenizer, name: str) -> int | None:
    try:
        return getattr(tokenizer, f"{name}_id")
    except (AttributeError, ValueError):
        return None
