"""Sliding-window perplexity of a causal LM over whole documents: the windows, their batched scoring on a mesh
and the normalisations (per token, per word, per byte). `python -m jaxlm.evaluate --checkpoint` is the command.

A document longer than the model's context is scored window by window; every token is scored once, with as much
context as its window gives it. Two window layouts, each reproducing the tool that defines it:

    hf       Hugging Face's perplexity guide (docs/transformers/perplexity): windows of `max_length` tokens
             starting every `stride` tokens; a window scores only its last trg_len = end - prev_end tokens (the
             ones no earlier window scored), and never its own first token (it has no context there). So the
             document's first token is never scored, and with stride = max_length (disjoint windows, the
             default) neither is the first token of each later window.
    lm_eval  lm-evaluation-harness's `loglikelihood_rolling`: the document is prefixed with the tokenizer's EOS
             (its "prefix token", so that the first token is scored too) and cut into chunks of `stride` targets
             (lm-eval: stride = max_length, its context_len=1), each predicted from the `max_length` inputs that
             end just before its last target (the first chunk: max_length targets from the prefix on).

The NLL is the exact sum of -log p(token | its window's context) over the scored tokens. (The guide's loop
re-weights each window's mean loss by trg_len - 1, which is that window's token count only when it scores all
its tokens but the first: for stride < max_length its number is slightly off, this one is not.)

Every window is one row of `max_length` inputs, padded with weight-0 positions: one compiled shape whatever the
documents. Rows of all documents are batched together; each row starts at position 0, as in both tools.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np

from jaxlm import sharding as shd
from jaxlm.models import build_model
from jaxlm.objectives import losses

WINDOWS = ("hf", "lm_eval")
LOGITS_CHUNK = 2048  # tokens projected onto the vocabulary at a time: [chunk, V] float32 logits, never [B, L, V]


@dataclasses.dataclass(frozen=True)
class Window:
    """One model input: tokens [begin, end) of document `document`'s sequence (inputs [begin, end - 1), at most
    max_length of them, targets [begin + 1, end)); targets at indices >= score_from are scored."""
    document: int
    begin: int
    end: int
    score_from: int

    @property
    def scored(self) -> int:
        return self.end - self.score_from


def check_window_options(max_length: int | None, stride: int | None, windows: str,
                         model_max_length: int | None) -> tuple[int, int]:
    """(max_length, stride) with their defaults (the model's positions; max_length); a bad value is an error
    naming its flag."""
    if windows not in WINDOWS:
        raise ValueError(f"--windows must be one of {list(WINDOWS)}, got {windows!r}")
    if max_length is None:
        if model_max_length is None:
            raise ValueError("the model has no position table to take the window length from: pass --max_length")
        max_length = model_max_length
    minimum = 2 if windows == "hf" else 1  # an hf window scores at most max_length - 1 tokens
    if max_length < minimum:
        raise ValueError(f"--max_length must be at least {minimum} with --windows={windows}, got {max_length}")
    if model_max_length is not None and max_length > model_max_length:
        raise ValueError(f"--max_length={max_length} is longer than the model's {model_max_length} positions")
    stride = max_length if stride is None else stride
    if stride < 1:
        raise ValueError(f"--stride must be at least 1, got {stride}")
    if stride > max_length:
        raise ValueError(f"--stride={stride} is larger than --max_length={max_length}: the tokens between windows "
                         "would never be scored")
    return max_length, stride


def hf_windows(n: int, max_length: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, score_from) of the guide's loop over a sequence of n tokens."""
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + max_length, n)
        yield begin, end, max(prev_end, begin + 1)
        prev_end = end
        if end == n:
            break


def lm_eval_windows(n: int, max_length: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, score_from) of lm-eval's get_rolling_token_windows + make_disjoint_window over a sequence of n
    tokens whose first is the prefix token (context_len = max_length - stride + 1)."""
    score_from = 1
    while score_from < n:
        end = min(score_from + (max_length if score_from == 1 else stride), n)
        yield max(0, end - 1 - max_length), end, score_from
        score_from = end


def sequences(documents: Sequence[Sequence[int]], windows: str, prefix_id: int | None = None) -> list[np.ndarray]:
    """The token sequence each document is windowed over: its ids, after the prefix token for lm_eval."""
    if windows == "lm_eval":
        if prefix_id is None:
            raise ValueError("--windows=lm_eval prefixes every document with the tokenizer's EOS (or BOS) token, "
                             "and this tokenizer has neither")
        return [np.asarray([prefix_id, *ids], np.int32) for ids in documents]
    return [np.asarray(ids, np.int32) for ids in documents]


def plan_windows(lengths: Sequence[int], max_length: int, stride: int, windows: str) -> list[Window]:
    """Every window of every document (sequence lengths `lengths`) that scores at least one token."""
    layout = hf_windows if windows == "hf" else lm_eval_windows
    return [Window(d, *w) for d, n in enumerate(lengths) for w in layout(n, max_length, stride) if w[1] > w[2]]


def window_rows(seqs: Sequence[np.ndarray], plan: Sequence[Window], width: int, pad_id: int = 0
                ) -> dict[str, np.ndarray]:
    """inputs / targets [R, width] int32 and weights [R, width] float32 of the windows (weight 0 on padding and
    on the context-only positions)."""
    inputs = np.full((len(plan), width), pad_id, np.int32)
    targets = np.zeros((len(plan), width), np.int32)
    weights = np.zeros((len(plan), width), np.float32)
    for r, w in enumerate(plan):
        seq = seqs[w.document]
        length = w.end - 1 - w.begin
        inputs[r, :length] = seq[w.begin:w.end - 1]
        targets[r, :length] = seq[w.begin + 1:w.end]
        weights[r, w.score_from - w.begin - 1:length] = 1.0
    return {"inputs": inputs, "targets": targets, "weights": weights}


@functools.lru_cache(maxsize=8)
def _jitted_nll(model_config, chunk: int):
    """jit(params, batch) -> (summed NLL, scored tokens) of a causal LM; one per model config."""
    model = build_model(model_config)

    def nll(params, batch):
        hidden = model.apply({"params": params}, batch["inputs"], return_hidden=True)
        total, count, _ = losses.chunked_cross_entropy(hidden, model.output_embedding(params), batch["targets"],
                                                       batch["weights"], chunk_size=chunk)
        return total, count

    return jax.jit(nll)


def score_windows(model_config, params: Any, seqs: Sequence[np.ndarray], plan: Sequence[Window], *, width: int,
                  batch_size: int, mesh, rules=shd.DEFAULT_RULES, pad_id: int = 0) -> tuple[float, int]:
    """(summed NLL, scored tokens) of the windows, batch_size rows at a time (rounded up to fill the mesh's batch
    axes; the last batch padded with weight-0 rows), dispatched back to back and summed on the host in float64.
    Every process plans the same windows and feeds its slice of each global batch."""
    shards = math.prod(mesh.shape[a] for a in shd.BATCH_AXES)
    batch_size = -(-max(batch_size, 1) // shards) * shards
    processes, index = jax.process_count(), jax.process_index()
    if batch_size % processes:
        raise ValueError(f"batch size {batch_size} is not a multiple of the {processes} processes")
    local = batch_size // processes
    jitted, sharding = _jitted_nll(model_config, LOGITS_CHUNK), shd.batch_sharding(mesh)
    pending = []
    for start in range(0, len(plan), batch_size):
        rows = list(plan[start:start + batch_size][index * local:(index + 1) * local])
        batch = window_rows(seqs, rows, width, pad_id)
        if len(rows) < local:  # padding rows: weight 0 everywhere
            batch = {k: np.concatenate([v, np.zeros((local - len(rows), width), v.dtype)]) for k, v in batch.items()}
        with shd.mesh_context(mesh, rules):
            pending.append(jitted(params, shd.host_local_to_global(batch, mesh, sharding)))
    sums = jax.device_get(pending)
    return float(np.sum([s[0] for s in sums], dtype=np.float64)), int(round(sum(float(s[1]) for s in sums)))


def count_words(text: str) -> int:
    """lm-eval's word count: len(re.split(r'\\s+', text)) (so leading / trailing whitespace counts one more)."""
    return len(re.split(r"\s+", text))


def count_bytes(text: str) -> int:
    return len(text.encode("utf-8"))


def normalised(nll: float, tokens: int, words: int, num_bytes: int) -> dict[str, float]:
    """Perplexities per token, word and byte and bits per byte of a summed NLL (nats), as lm-eval's
    word_perplexity / byte_perplexity / bits_per_byte weigh them."""
    return {"token_perplexity": math.exp(nll / tokens), "word_perplexity": math.exp(nll / words),
            "byte_perplexity": math.exp(nll / num_bytes), "bits_per_byte": nll / (num_bytes * math.log(2))}
