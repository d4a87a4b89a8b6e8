"""Model outputs over feature rows -> predictions per example: word labels for NER, answer text for SQuAD.

Outputs must be given for exactly the N feature rows, in feature order: concatenate the eval batches of
`iterate_batches(features, B, shuffle=False)` and drop the padding rows (`[:N]`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.tasks.readers import QAExample, TokenExample


def _check_rows(name: str, array: np.ndarray, features: dict, ndim: int):
    n = len(features["example_index"])
    if array.ndim != ndim or array.shape[0] != n:
        raise ValueError(f"{name} has shape {array.shape}; expected {ndim} dims with {n} rows (one per feature row; "
                         "concatenate the eval batches and drop the padding rows with [:N])")


def ner_word_predictions(examples: Sequence[TokenExample], features: dict[str, np.ndarray], predictions,
                         labels: Sequence[str], *, missing: str = "O") -> list[list[str]]:
    """Word-level tags from each word's FIRST sub-token: predictions are label ids [N, L] or logits [N, L, C].

    Words that no row covers (none, with token_classification_features' splitting) get `missing`.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    _check_rows("predictions", predictions, features, 2)
    out = [[missing] * len(e.words) for e in examples]
    seen = [np.zeros(len(e.words), bool) for e in examples]
    for row, index in enumerate(features["example_index"]):
        word_ids = features["word_ids"][row]
        for position in np.flatnonzero(word_ids >= 0):
            word = word_ids[position]
            if not seen[index][word]:  # the first sub-token of the word
                seen[index][word] = True
                out[index][word] = labels[int(predictions[row, position])]
    return out


def squad_nbest(examples: Sequence[QAExample], features: dict[str, np.ndarray], start_logits, end_logits, *,
                n_best: int = 20, max_answer_length: int = 30) -> list[list[dict]]:
    """The n best answer spans per example over all its windows, best first: dicts of text, score (start + end
    logit), probability (softmax over the n best), start/end char offsets into the context.

    As BERT's run_squad: candidate starts and ends are each window's top n_best logits; a span is valid when
    both ends lie in the context, end >= start, it has at most max_answer_length tokens, and its start token
    has its maximum context in this window. No valid span: a single empty answer.
    """
    start_logits, end_logits = np.asarray(start_logits, np.float32), np.asarray(end_logits, np.float32)
    _check_rows("start_logits", start_logits, features, 2)
    _check_rows("end_logits", end_logits, features, 2)
    candidates: list[list[tuple]] = [[] for _ in examples]
    offsets_NxLx2 = features["token_offsets"]
    for row, index in enumerate(features["example_index"]):
        offsets = offsets_NxLx2[row]
        in_context = offsets[:, 0] >= 0
        max_context = features["max_context"][row]
        starts = np.argsort(-start_logits[row], kind="stable")[:n_best]
        ends = np.argsort(-end_logits[row], kind="stable")[:n_best]
        for s in starts:
            if not (in_context[s] and max_context[s]):
                continue
            for e in ends:
                if not in_context[e] or e < s or e - s + 1 > max_answer_length:
                    continue
                candidates[index].append((float(start_logits[row, s] + end_logits[row, e]),
                                          int(offsets[s, 0]), int(offsets[e, 1])))
    results = []
    for example, found in zip(examples, candidates):
        found.sort(key=lambda c: -c[0])
        best, seen = [], set()
        for score, char_start, char_end in found:
            text = example.context[char_start:char_end]
            stripped = text.strip()  # sentencepiece / byte-level pieces include the space before a word
            char_start += len(text) - len(text.lstrip())
            if stripped in seen:
                continue
            seen.add(stripped)
            best.append({"text": stripped, "score": score, "start": char_start, "end": char_start + len(stripped)})
            if len(best) == n_best:
                break
        if not best:
            best = [{"text": "", "score": 0.0, "start": 0, "end": 0}]
        scores = np.array([b["score"] for b in best], np.float64)
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        for b, p in zip(best, probabilities):
            b["probability"] = float(p)
        results.append(best)
    return results


def squad_predictions(examples: Sequence[QAExample], features: dict[str, np.ndarray], start_logits, end_logits, *,
                      n_best: int = 20, max_answer_length: int = 30) -> dict[str, str]:
    """question id -> best answer text (the prediction file the official SQuAD script reads)."""
    nbest = squad_nbest(examples, features, start_logits, end_logits, n_best=n_best,
                        max_answer_length=max_answer_length)
    return {example.id: candidates[0]["text"] for example, candidates in zip(examples, nbest)}
