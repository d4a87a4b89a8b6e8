"""GLUE and SQuAD as text pairs for a model that writes its answers (T5), and the scores of what it writes.

T5 (Raffel et al. 2020, appendix D; t5.data.preprocessors.glue / stsb / squad) casts every task as text to
text: the input names the task and each field, sorted by feature name, and the target is the label's word:

    sst2  'sst2 sentence: it is a charming journey .'                       -> 'positive'
    mnli  'mnli hypothesis: The cat sat. premise: A cat was sitting.'      -> 'entailment'
    stsb  'stsb sentence1: ... sentence2: ...'                             -> '3.8' (the score rounded to 0.2)
    squad 'question: Who won? context: Denver won the game.'              -> 'Denver'

The dev metrics are GLUE's and SQuAD's own, computed on the generated text: a word that is no label counts as
wrong (class -1), an STS-B output that is no number scores -1, as T5's postprocessors do.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlm.tasks.metrics import GLUE_METRICS, compute_metrics, squad_scores
from jaxlm.tasks.readers import GLUE_LAYOUTS, QAExample, Seq2SeqExample, TextExample

# Each GLUE task's fields in T5's order (TFDS feature names, sorted) and which TextExample text fills them.
T5_GLUE_FIELDS = {
    "sst2": (("sentence", "text_a"),), "cola": (("sentence", "text_a"),),
    "mrpc": (("sentence1", "text_a"), ("sentence2", "text_b")),
    "qqp": (("question1", "text_a"), ("question2", "text_b")),
    "stsb": (("sentence1", "text_a"), ("sentence2", "text_b")),
    "mnli": (("hypothesis", "text_b"), ("premise", "text_a")),
    "qnli": (("question", "text_a"), ("sentence", "text_b")),
    "rte": (("sentence1", "text_a"), ("sentence2", "text_b")),
    "wnli": (("sentence1", "text_a"), ("sentence2", "text_b")),
}
# The target word of each class, in the order of GLUE_LAYOUTS[task].labels (the TFDS ClassLabel names T5 uses).
T5_LABEL_WORDS = {
    "sst2": ("negative", "positive"), "cola": ("unacceptable", "acceptable"),
    "mrpc": ("not_equivalent", "equivalent"), "qqp": ("not_duplicate", "duplicate"),
    "mnli": GLUE_LAYOUTS["mnli"].labels, "qnli": GLUE_LAYOUTS["qnli"].labels, "rte": GLUE_LAYOUTS["rte"].labels,
    "wnli": ("not_entailment", "entailment"),
}
TEXT_TO_TEXT_FORMATS = tuple(T5_GLUE_FIELDS) + ("squad",)


def stsb_target(score: float) -> str:
    """T5's STS-B target: the score rounded to the nearest 0.2, one decimal ('3.8')."""
    return f"{round(score * 5) / 5:.1f}"


def glue_source(task: str, example: TextExample) -> str:
    return " ".join([task] + [f"{name}: {getattr(example, attr)}" for name, attr in T5_GLUE_FIELDS[task]])


def to_text_pairs(fmt: str, examples: Sequence[TextExample | QAExample]) -> list[Seq2SeqExample]:
    """Classification / regression / QA examples of `fmt` (a GLUE task or 'squad') -> T5's text pairs, each
    keeping its example for scoring. The target is None for unlabelled examples; SQuAD's is the first answer."""
    if fmt not in TEXT_TO_TEXT_FORMATS:
        raise ValueError(f"no text-to-text form for format {fmt!r}; known: {TEXT_TO_TEXT_FORMATS}")
    pairs = []
    for e in examples:
        if fmt == "squad":
            target = e.answers[0].text if e.answers else None
            pairs.append(Seq2SeqExample(e.id, f"question: {e.question} context: {e.context}", target, e))
        elif e.label is None:
            pairs.append(Seq2SeqExample(e.guid, glue_source(fmt, e), None, e))
        else:
            target = stsb_target(e.label) if fmt == "stsb" else T5_LABEL_WORDS[fmt][e.label]
            pairs.append(Seq2SeqExample(e.guid, glue_source(fmt, e), target, e))
    return pairs


def _as_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        return -1.0


def metric_names(fmt: str) -> tuple[str, ...]:
    return ("exact_match", "f1") if fmt == "squad" else GLUE_METRICS[fmt]


def scores(fmt: str, examples: Sequence[TextExample | QAExample], generated: Sequence[str]) -> dict[str, float]:
    """The task's dev metrics (fractions in [0, 1], as jaxlm.tasks.metrics) of the generated texts against the
    original examples (GLUE labels, or every SQuAD reference answer)."""
    if len(generated) != len(examples):
        raise ValueError(f"{len(generated)} generated texts for {len(examples)} examples")
    if fmt == "squad":
        references = {e.id: [a.text for a in e.answers] for e in examples}
        return squad_scores(references, {e.id: text.strip() for e, text in zip(examples, generated)})
    if any(e.label is None for e in examples):
        raise ValueError("scores: the examples have no labels")
    y_true = np.array([e.label for e in examples])
    if fmt == "stsb":
        y_pred = np.array([_as_float(text) for text in generated])
    else:
        words = T5_LABEL_WORDS[fmt]
        y_pred = np.array([words.index(t.strip()) if t.strip() in words else -1 for t in generated])
    names = list(metric_names(fmt))
    if fmt != "stsb" and "accuracy" not in names:
        names.append("accuracy")  # CoLA: also how often the word itself is right
    return compute_metrics(names, y_true, y_pred)
