"""Task metrics in plain numpy / python (no sklearn or scipy in the package).

All scores are fractions in [0, 1] (the official conlleval and SQuAD scripts print them x 100), except BLEU and
ROUGE, which are on sacrebleu's and the papers' 0-100 scale, so a BLEU here reads like every BLEU in print.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np


def _pair(y_true, y_pred, name: str) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"{name}: y_true {y_true.shape} and y_pred {y_pred.shape} must be equal 1-D shapes")
    if y_true.size == 0:
        raise ValueError(f"{name}: no examples")
    return y_true, y_pred


# ----- classification -----

def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _pair(y_true, y_pred, "accuracy")
    return float(np.mean(y_true == y_pred))


def _f1(true_positives: int, false_positives: int, false_negatives: int) -> float:
    denominator = 2 * true_positives + false_positives + false_negatives
    return 0.0 if denominator == 0 else 2 * true_positives / denominator


def f1_binary(y_true, y_pred, positive=1) -> float:
    """F1 of the `positive` class (0 when it is never predicted nor present)."""
    y_true, y_pred = _pair(y_true, y_pred, "f1_binary")
    tp = int(np.sum((y_pred == positive) & (y_true == positive)))
    fp = int(np.sum((y_pred == positive) & (y_true != positive)))
    fn = int(np.sum((y_pred != positive) & (y_true == positive)))
    return _f1(tp, fp, fn)


def macro_f1(y_true, y_pred, labels: Sequence | None = None) -> float:
    """Unweighted mean of per-class F1 over `labels` (default: the classes in y_true or y_pred)."""
    y_true, y_pred = _pair(y_true, y_pred, "macro_f1")
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else labels
    return float(np.mean([f1_binary(y_true, y_pred, positive=c) for c in labels]))


def matthews_corrcoef(y_true, y_pred) -> float:
    """Matthews correlation (the multiclass R_K form; binary: (tp*tn - fp*fn) / sqrt(...)); 0 when undefined."""
    y_true, y_pred = _pair(y_true, y_pred, "matthews_corrcoef")
    classes, inverse = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    k = len(classes)
    t, p = inverse[:len(y_true)], inverse[len(y_true):]
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (t, p), 1)
    true_counts, pred_counts = confusion.sum(1), confusion.sum(0)
    correct, n = np.trace(confusion), confusion.sum()
    numerator = correct * n - true_counts @ pred_counts
    denominator = np.sqrt((n * n - pred_counts @ pred_counts) * (n * n - true_counts @ true_counts))
    return 0.0 if denominator == 0 else float(numerator / denominator)


# ----- regression -----

def pearson(x, y) -> float:
    x, y = _pair(np.asarray(x, np.float64), np.asarray(y, np.float64), "pearson")
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx @ dx) * (dy @ dy))
    return 0.0 if denominator == 0 else float(dx @ dy / denominator)


def average_ranks(x) -> np.ndarray:
    """1-based ranks; tied values share the mean of their ranks (scipy.stats.rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks_sorted = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), np.float64)
    ranks[order] = ranks_sorted
    return ranks


def spearman(x, y) -> float:
    """Pearson correlation of the average ranks (ties handled as scipy.stats.spearmanr does)."""
    x, y = _pair(np.asarray(x), np.asarray(y), "spearman")
    return pearson(average_ranks(x), average_ranks(y))


# ----- GLUE -----

GLUE_METRICS = {
    "sst2": ("accuracy",), "cola": ("matthews_corrcoef",), "mrpc": ("accuracy", "f1"), "qqp": ("accuracy", "f1"),
    "stsb": ("pearson", "spearman"), "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",),
    "wnli": ("accuracy",),
}
_METRIC_FUNCTIONS = {"accuracy": accuracy, "f1": f1_binary, "macro_f1": macro_f1,
                     "matthews_corrcoef": matthews_corrcoef, "pearson": pearson, "spearman": spearman}


def compute_metrics(names: Iterable[str], y_true, y_pred) -> dict[str, float]:
    """{name: value} for metric names among accuracy, f1 (class 1 positive), macro_f1, matthews_corrcoef,
    pearson, spearman. GLUE_METRICS[task] gives each GLUE task's official ones."""
    out = {}
    for name in names:
        if name not in _METRIC_FUNCTIONS:
            raise ValueError(f"unknown metric {name!r}; choose from {sorted(_METRIC_FUNCTIONS)}")
        out[name] = _METRIC_FUNCTIONS[name](y_true, y_pred)
    return out


# ----- conlleval -----

def _split_tag(tag: str) -> tuple[str, str]:
    """conlleval's /^([^-]*)-(.*)$/: 'B-ORG' -> ('B', 'ORG'), 'O' -> ('O', '')."""
    prefix, dash, rest = tag.partition("-")
    return (prefix, rest) if dash else (tag, "")


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    end = ((prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"),
                               ("E", "O")})
    if prev_tag not in ("O", ".") and prev_type != type_:
        end = True
    return end or prev_tag in ("]", "[")


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    start = ((prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"),
                                 ("O", "E")})
    if tag not in ("O", ".") and prev_type != type_:
        start = True
    return start or tag in ("[", "]")


def conll_entity_scores(true_sentences: Sequence[Sequence[str]],
                        pred_sentences: Sequence[Sequence[str]]) -> dict:
    """Entity precision / recall / F1 exactly as conlleval.pl counts them (IOB1, BIO and IOE tags).

    Sentences are separated as by conlleval's blank lines (a boundary with tags O). Returns precision, recall,
    f1, accuracy (token), the counts (correct_chunks, true_chunks, pred_chunks, correct_tags, tokens) and
    per_type {type: {precision, recall, f1, true_chunks, pred_chunks, correct_chunks}}.
    """
    if len(true_sentences) != len(pred_sentences):
        raise ValueError(f"conll_entity_scores: {len(true_sentences)} true vs {len(pred_sentences)} predicted "
                         "sentences")
    correct_chunks, found_true, found_pred = Counter(), Counter(), Counter()
    correct_tags = tokens = 0
    last_true, last_pred, last_true_type, last_pred_type = "O", "O", "", ""
    in_correct = False

    def step(true_tag: str, true_type: str, pred_tag: str, pred_type: str):
        nonlocal in_correct, last_true, last_pred, last_true_type, last_pred_type
        end_true = _end_of_chunk(last_true, true_tag, last_true_type, true_type)
        end_pred = _end_of_chunk(last_pred, pred_tag, last_pred_type, pred_type)
        start_true = _start_of_chunk(last_true, true_tag, last_true_type, true_type)
        start_pred = _start_of_chunk(last_pred, pred_tag, last_pred_type, pred_type)
        if in_correct:
            if end_true and end_pred and last_pred_type == last_true_type:
                in_correct = False
                correct_chunks[last_true_type] += 1
            elif end_true != end_pred or pred_type != true_type:
                in_correct = False
        if start_true and start_pred and pred_type == true_type:
            in_correct = True
        if start_true:
            found_true[true_type] += 1
        if start_pred:
            found_pred[pred_type] += 1
        last_true, last_pred, last_true_type, last_pred_type = true_tag, pred_tag, true_type, pred_type

    for number, (true_tags, pred_tags) in enumerate(zip(true_sentences, pred_sentences)):
        if len(true_tags) != len(pred_tags):
            raise ValueError(f"conll_entity_scores: sentence {number} has {len(true_tags)} true tags and "
                             f"{len(pred_tags)} predicted")
        for true_full, pred_full in zip(true_tags, pred_tags):
            true_tag, true_type = _split_tag(true_full)
            pred_tag, pred_type = _split_tag(pred_full)
            step(true_tag, true_type, pred_tag, pred_type)
            correct_tags += true_tag == pred_tag and true_type == pred_type
            tokens += 1
        step("O", "", "O", "")  # the blank line after each sentence
    if in_correct:
        correct_chunks[last_true_type] += 1

    def prf(correct: int, true: int, pred: int) -> dict:
        precision = correct / pred if pred else 0.0
        recall = correct / true if true else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1}

    total_correct, total_true, total_pred = (sum(c.values()) for c in (correct_chunks, found_true, found_pred))
    types = sorted(set(found_true) | set(found_pred))
    per_type = {t: {**prf(correct_chunks[t], found_true[t], found_pred[t]), "true_chunks": found_true[t],
                    "pred_chunks": found_pred[t], "correct_chunks": correct_chunks[t]} for t in types}
    return {**prf(total_correct, total_true, total_pred), "accuracy": correct_tags / tokens if tokens else 0.0,
            "correct_chunks": total_correct, "true_chunks": total_true, "pred_chunks": total_pred,
            "correct_tags": correct_tags, "tokens": tokens, "per_type": per_type}


# ----- SQuAD v1.1 (the official evaluate-v1.1.py) -----

def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, articles (a, an, the) and extra whitespace."""
    s = s.lower()
    exclude = set(string.punctuation)
    s = "".join(ch for ch in s if ch not in exclude)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, ground_truth: str) -> float:
    prediction_tokens = normalize_answer(prediction).split()
    truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def squad_scores(references: dict[str, Sequence[str]], predictions: dict[str, str]) -> dict[str, float]:
    """exact_match and f1 averaged over ALL reference questions (max over each question's answers); a question
    with no prediction scores 0, as in the official script. references: id -> answer texts."""
    if not references:
        raise ValueError("squad_scores: no reference questions")
    exact = f1 = 0.0
    for qid, truths in references.items():
        if qid not in predictions:
            continue
        prediction = predictions[qid]
        if not truths:
            raise ValueError(f"squad_scores: question {qid!r} has no reference answers")
        exact += max(squad_exact_match(prediction, t) for t in truths)
        f1 += max(squad_f1(prediction, t) for t in truths)
    return {"exact_match": exact / len(references), "f1": f1 / len(references),
            "answered": sum(qid in predictions for qid in references) / len(references)}


# ----- text generation: BLEU (sacrebleu), ROUGE (rouge-score) -----

TEXT_METRICS = ("bleu", "rouge1", "rouge2", "rougeL", "rougeLsum")


def bleu(references: Sequence[str], hypotheses: Sequence[str], *, tokenize: str = "13a") -> float:
    """Corpus BLEU (0-100) with sacrebleu's defaults (13a tokenisation, exponential smoothing off), the number
    WMT and the T5 paper report; detokenized text in, one reference per hypothesis."""
    import sacrebleu

    if len(references) != len(hypotheses):
        raise ValueError(f"bleu: {len(hypotheses)} hypotheses for {len(references)} references")
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)], tokenize=tokenize).score)


def rouge(references: Sequence[str], hypotheses: Sequence[str],
          names: Sequence[str] = ("rouge1", "rouge2", "rougeLsum")) -> dict[str, float]:
    """Mean ROUGE F-measures (0-100) with Porter stemming, as t5x and the summarisation papers compute them
    (rougeLsum splits summaries into sentences on newlines). Needs `pip install rouge-score` (jaxlm[rouge])."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as e:
        raise ImportError("ROUGE needs the rouge-score package: pip install 'jaxlm[rouge]' (or rouge-score)") from e
    if len(references) != len(hypotheses):
        raise ValueError(f"rouge: {len(hypotheses)} hypotheses for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(names), use_stemmer=True)
    totals = dict.fromkeys(names, 0.0)
    for reference, hypothesis in zip(references, hypotheses):
        for name, score in scorer.score(reference, hypothesis).items():
            totals[name] += score.fmeasure
    return {name: 100.0 * total / max(len(references), 1) for name, total in totals.items()}


def text_metrics(names: Iterable[str], references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """{name: score} for names among TEXT_METRICS."""
    names = list(names)
    unknown = [n for n in names if n not in TEXT_METRICS]
    if unknown:
        raise ValueError(f"unknown text metric(s) {unknown}; choose from {TEXT_METRICS}")
    out = {"bleu": bleu(references, hypotheses)} if "bleu" in names else {}
    rouge_names = [n for n in names if n != "bleu"]
    if rouge_names:
        out.update(rouge(references, hypotheses, rouge_names))
    return out


# ----- retrieval -----

RETRIEVAL_METRICS = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10")


def retrieval_scores(ranked: Sequence[Sequence[int]], relevant: Sequence[Iterable[int]],
                     recall_at: Sequence[int] = (1, 5, 10), cutoff: int = 10) -> dict[str, float]:
    """Ranking metrics with binary relevance, as sentence-transformers' InformationRetrievalEvaluator computes
    them: recall@k = |relevant in the top k| / |relevant|, MRR@cutoff = 1 / rank of the first relevant passage
    (0 beyond the cutoff), nDCG@cutoff = DCG / ideal DCG with gain 1 / log2(rank + 1). Means over queries."""
    if len(ranked) != len(relevant) or not len(ranked):
        raise ValueError(f"retrieval_scores: {len(ranked)} rankings for {len(relevant)} relevance sets")
    recall = {k: [] for k in recall_at}
    mrr, ndcg = [], []
    for ids, rel in zip(ranked, relevant):
        rel = set(rel)
        if not rel:
            raise ValueError("retrieval_scores: a query without relevant passages")
        ids = list(ids)
        for k in recall_at:
            recall[k].append(len(rel.intersection(ids[:k])) / len(rel))
        hits = [rank for rank, i in enumerate(ids[:cutoff], 1) if i in rel]
        mrr.append(1.0 / hits[0] if hits else 0.0)
        dcg = sum(1.0 / np.log2(rank + 1) for rank in hits)
        ideal = sum(1.0 / np.log2(rank + 1) for rank in range(1, min(len(rel), cutoff) + 1))
        ndcg.append(dcg / ideal)
    out = {f"recall@{k}": float(np.mean(v)) for k, v in recall.items()}
    out.update({f"mrr@{cutoff}": float(np.mean(mrr)), f"ndcg@{cutoff}": float(np.mean(ndcg))})
    return out
