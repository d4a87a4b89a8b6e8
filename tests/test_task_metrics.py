"""Task metrics: conlleval counting, SQuAD v1.1 scoring, correlations, against hand values and references.

scipy is the reference for rank statistics here (tests only; the package does not depend on it).
"""
import math

import numpy as np
import pytest
from scipy import stats

from jaxlm.tasks import metrics
from jaxlm.tasks.readers import iob1_to_bio

# ----- conlleval -----


def test_conlleval_counts_a_hand_checked_iob1_example():
    # true chunks: ORG[0], ORG[1-2] (B- only between same-type chunks), PER[4]; LOC[0-1], MISC[2] (type change)
    # predicted:   ORG[0-2], PER[4]; LOC[0-1] (B- then I- of the same type is one chunk), MISC[2]
    true = [["I-ORG", "B-ORG", "I-ORG", "O", "I-PER"], ["I-LOC", "I-LOC", "I-MISC"]]
    pred = [["I-ORG", "I-ORG", "I-ORG", "O", "I-PER"], ["B-LOC", "I-LOC", "I-MISC"]]
    s = metrics.conll_entity_scores(true, pred)
    assert (s["true_chunks"], s["pred_chunks"], s["correct_chunks"]) == (5, 4, 3)
    assert s["precision"] == pytest.approx(3 / 4) and s["recall"] == pytest.approx(3 / 5)
    assert s["f1"] == pytest.approx(2 / 3)
    assert (s["correct_tags"], s["tokens"]) == (6, 8) and s["accuracy"] == pytest.approx(0.75)
    org = s["per_type"]["ORG"]
    assert (org["true_chunks"], org["pred_chunks"], org["correct_chunks"], org["f1"]) == (2, 1, 0, 0.0)
    assert s["per_type"]["LOC"]["f1"] == 1.0


@pytest.mark.parametrize("true, pred, counts", [
    # I- after O starts a chunk (IOB1); a chunk at the sentence end is counted
    ([["O", "I-PER"]], [["O", "I-PER"]], (1, 1, 1)),
    # a predicted chunk ending early is wrong, and B- splits a same-type run into two
    ([["I-PER", "I-PER"]], [["I-PER", "B-PER"]], (1, 2, 0)),
    # a type change inside a run of I- tags ends one chunk and starts another
    ([["I-PER", "I-LOC", "O"]], [["I-PER", "I-PER", "O"]], (2, 1, 0)),
    # the sentence boundary ends a chunk even when the next sentence continues with the same I- type
    ([["O", "I-PER"], ["I-PER", "O"]], [["O", "I-PER"], ["I-PER", "O"]], (2, 2, 2)),
    # predicted chunk longer than the true one
    ([["I-LOC", "O", "O"]], [["I-LOC", "I-LOC", "O"]], (1, 1, 0)),
    # BIO input: B-X B-X are two chunks; I-X after B-Y starts a new chunk
    ([["B-PER", "B-PER", "I-LOC"]], [["B-PER", "I-PER", "I-LOC"]], (3, 2, 1)),
])
def test_conlleval_tricky_sequences(true, pred, counts):
    s = metrics.conll_entity_scores(true, pred)
    assert (s["true_chunks"], s["pred_chunks"], s["correct_chunks"]) == counts


def _chunks(sentences):
    """Straightforward chunk decoding (independent of conlleval's start/end tables): a chunk starts at B-X or at
    I-X that does not continue a chunk of type X; it ends at O, B-, a type change or the sentence end."""
    out = set()
    for number, tags in enumerate(sentences):
        start, kind = None, None
        for i, tag in enumerate(list(tags) + ["O"]):
            prefix, _, t = tag.partition("-")
            if start is not None and (prefix in ("O", "B") or t != kind):
                out.add((number, start, i, kind))
                start = None
            if prefix in ("B", "I") and start is None:
                start, kind = i, t
    return out


def test_conlleval_agrees_with_a_span_set_implementation_on_random_tags():
    rng = np.random.default_rng(0)
    tags = ["O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    for _ in range(200):
        lengths = rng.integers(1, 9, size=rng.integers(1, 5))
        true = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lengths]
        pred = [[tags[i] for i in rng.integers(0, len(tags), n)] for n in lengths]
        s = metrics.conll_entity_scores(true, pred)
        true_chunks, pred_chunks = _chunks(true), _chunks(pred)
        assert s["true_chunks"] == len(true_chunks)
        assert s["pred_chunks"] == len(pred_chunks)
        assert s["correct_chunks"] == len(true_chunks & pred_chunks), (true, pred)
        for kind, t in s["per_type"].items():
            assert t["correct_chunks"] == sum(c[3] == kind for c in true_chunks & pred_chunks)
        # IOB1 -> BIO keeps the chunks and leaves no I- that starts a chunk
        bio = [iob1_to_bio(t) for t in true]
        assert _chunks(bio) == true_chunks
        assert metrics.conll_entity_scores(true, bio)["f1"] == (1.0 if true_chunks else 0.0)
        for sentence in bio:
            for previous, tag in zip(["O"] + sentence, sentence):
                assert not (tag.startswith("I-") and previous[2:] != tag[2:])


def test_conlleval_rejects_misaligned_input():
    with pytest.raises(ValueError, match="sentence 1 has 2 true tags and 1 predicted"):
        metrics.conll_entity_scores([["O"], ["O", "O"]], [["O"], ["O"]])


# ----- SQuAD v1.1 -----


def test_squad_normalisation():
    assert metrics.normalize_answer("The  Quick, brown-fox!\tan apple") == "quick brownfox apple"
    assert metrics.normalize_answer("A theatre, a banana") == "theatre banana"  # articles only as whole words
    assert metrics.normalize_answer("  (the)  ") == ""


def test_squad_scores_take_the_max_over_references_and_count_unanswered_as_zero():
    assert metrics.squad_f1("the Denver Broncos", "Denver Broncos won") == pytest.approx(0.8)
    assert metrics.squad_exact_match("The Broncos!", "broncos") == 1.0
    references = {"q1": ["Denver Broncos", "the Broncos", "Broncos"],
                  "q2": ["Panthers", "Carolina Panthers team"],
                  "q3": ["Santa Clara"]}
    predictions = {"q1": "broncos", "q2": "Carolina Panthers", "extra": "ignored"}
    s = metrics.squad_scores(references, predictions)
    # q2: vs "Panthers" P=1/2 R=1 F1=2/3; vs "carolina panthers team" P=1 R=2/3 F1=0.8 -> max 0.8
    assert s["exact_match"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx((1 + 0.8 + 0) / 3)
    assert s["answered"] == pytest.approx(2 / 3)


# ----- classification -----


def test_matthews_binary_closed_form_and_multiclass():
    # tp=5, tn=3, fp=2, fn=1: (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 13 / sqrt(840)
    y_true = [1] * 5 + [0] * 3 + [0] * 2 + [1] * 1
    y_pred = [1] * 5 + [0] * 3 + [1] * 2 + [0] * 1
    assert metrics.matthews_corrcoef(y_true, y_pred) == pytest.approx(13 / math.sqrt(840))
    assert metrics.matthews_corrcoef([0, 1, 1, 0], [1, 1, 1, 1]) == 0.0  # constant prediction: undefined -> 0
    assert metrics.matthews_corrcoef([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)
    # multiclass: Gorodkin's R_K = sum_k cov(X_k, Y_k) / sqrt(sum_k var(X_k) * sum_k var(Y_k)) on one-hot columns
    rng = np.random.default_rng(1)
    y_true, y_pred = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    x, y = np.eye(3)[y_true], np.eye(3)[y_pred]
    x, y = x - x.mean(0), y - y.mean(0)
    expected = (x * y).sum() / math.sqrt((x * x).sum() * (y * y).sum())
    assert metrics.matthews_corrcoef(y_true, y_pred) == pytest.approx(expected)


def test_accuracy_and_f1_scores():
    y_true = [1, 1, 0, 0, 2, 2]
    y_pred = [1, 0, 0, 1, 2, 0]
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.5)
    assert metrics.f1_binary(y_true, y_pred, positive=1) == pytest.approx(0.5)  # tp 1, fp 1, fn 1
    assert metrics.f1_binary(y_true, y_pred, positive=0) == pytest.approx(2 * 1 / (2 + 2 + 1))  # tp 1 fp 2 fn 1
    assert metrics.f1_binary(y_true, y_pred, positive=2) == pytest.approx(2 / 3)  # tp 1, fp 0, fn 1
    assert metrics.macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.4 + 2 / 3) / 3)
    assert metrics.compute_metrics(metrics.GLUE_METRICS["mrpc"], [0, 1, 1], [0, 1, 0]) == {
        "accuracy": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="unknown metric 'auc'"):
        metrics.compute_metrics(["auc"], [0], [0])
    with pytest.raises(ValueError, match=r"y_true \(3,\) and y_pred \(2,\)"):
        metrics.accuracy([0, 1, 1], [0, 1])


# ----- regression -----


def test_spearman_with_ties_by_hand_and_against_scipy():
    # x ranks (1, 2.5, 2.5, 4); y ranks (1, 3, 2, 4): r = 4.5 / sqrt(4.5 * 5)
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(22.5))
    np.testing.assert_array_equal(metrics.average_ranks([3, 1, 3, 3, 2]), [4, 1, 4, 4, 2])
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = rng.integers(0, 6, 40).astype(float)  # many ties, as STS-B scores
        y = x + rng.normal(0, 2, 40).round()
        np.testing.assert_allclose(metrics.average_ranks(x), stats.rankdata(x))
        assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-12)


def test_pearson_closed_form():
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
