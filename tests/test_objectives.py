"""Pretraining objective transforms (mlm, nsp, clm: numpy) and loss primitives (jax)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.data import pairing as nsp
from jaxlm.objectives import losses, mlm

# ----------------------------------------------------------------------------------------------- MLM
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIALS = [PAD, UNK, CLS, SEP, MASK]
VOCAB = 1000
MLM_KW = dict(mask_id=MASK, vocab_size=VOCAB, special_ids=SPECIALS, max_predictions=20)


def _mlm_rows(n_rows, L=128, seed=0):
    """BERT-like rows: [CLS] tokens [SEP] pad..., random lengths, a few UNKs inside."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n_rows, L), np.int64)
    for r in range(n_rows):
        n = int(rng.integers(20, L - 1))
        rows[r, 0] = CLS
        rows[r, 1:n + 1] = rng.integers(5, VOCAB, n)
        rows[r, n + 1] = SEP
    unk = (rng.random(rows.shape) < 0.02) & (rows >= 5)
    rows[unk] = UNK
    return rows


def _check_mask_invariants(rows, out):
    is_special = np.isin(rows, SPECIALS)
    for r in range(rows.shape[0]):
        w = out["masked_weights"][r]
        n = int(w.sum())
        assert np.all(w[:n] == 1.0) and np.all(w[n:] == 0.0)
        pos = out["masked_positions"][r, :n]
        assert np.all(np.diff(pos) > 0), "positions must be sorted ascending, no repeats"
        assert np.all(out["masked_positions"][r, n:] == 0) and np.all(out["masked_targets"][r, n:] == 0)
        assert not is_special[r, pos].any(), "a special token or padding was chosen"
        np.testing.assert_array_equal(out["masked_targets"][r, :n], rows[r, pos])
        unchosen = np.ones(rows.shape[1], bool)
        unchosen[pos] = False
        np.testing.assert_array_equal(out["inputs"][r, unchosen], rows[r, unchosen])
    assert not np.isin(out["inputs"][~is_special], SPECIALS[:4]).any()  # replacements are never specials
    np.testing.assert_array_equal(out["inputs"][is_special], rows[is_special])


def test_mask_tokens_statistics_on_250k_tokens():
    rows = _mlm_rows(2000)
    rng = np.random.default_rng(1)
    outs = [mlm.mask_tokens(row, rng, **MLM_KW) for row in rows]
    out = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
    assert out["inputs"].dtype == np.int32 and out["masked_positions"].dtype == np.int32
    assert out["masked_targets"].dtype == np.int32 and out["masked_weights"].dtype == np.float32
    assert out["masked_positions"].shape == (2000, 20)
    _check_mask_invariants(rows, out)

    n_cand = (~np.isin(rows, SPECIALS)).sum(1)
    n_chosen = out["masked_weights"].sum(1)
    expected = np.minimum(20, np.maximum(1, np.round(n_cand * 0.15)))
    np.testing.assert_array_equal(n_chosen, expected)  # exact count per row, as BERT
    assert abs(n_chosen.sum() / n_cand.sum() - 0.15) <= 0.01, n_chosen.sum() / n_cand.sum()

    w = out["masked_weights"] > 0
    new = np.take_along_axis(out["inputs"], out["masked_positions"], 1)[w]
    old = out["masked_targets"][w]
    frac_mask = np.mean(new == MASK)
    frac_random = np.mean((new != MASK) & (new != old))
    frac_same = np.mean(new == old)
    assert abs(frac_mask - 0.8) <= 0.01, frac_mask
    assert abs(frac_random - 0.1) <= 0.01, frac_random
    assert abs(frac_same - 0.1) <= 0.01, frac_same
    # random replacements cover the non-special vocabulary roughly uniformly
    replaced = new[(new != MASK) & (new != old)]
    assert replaced.min() >= 5 and len(np.unique(replaced)) > 0.8 * min(len(replaced), VOCAB - 5)


def test_mask_batch_matches_mask_tokens_and_is_deterministic():
    rows = _mlm_rows(64, seed=3)
    batch = mlm.mask_batch(rows, np.random.default_rng(7), **MLM_KW)
    _check_mask_invariants(rows, batch)
    again = mlm.mask_batch(rows, np.random.default_rng(7), **MLM_KW)
    for k in batch:
        np.testing.assert_array_equal(batch[k], again[k])
    other = mlm.mask_batch(rows, np.random.default_rng(8), **MLM_KW)
    assert np.mean(other["masked_positions"] != batch["masked_positions"]) > 0.5  # dynamic masking
    # one row through mask_tokens == the same row through mask_batch with the same generator state
    single = mlm.mask_tokens(rows[5], np.random.default_rng(11), **MLM_KW)
    single_b = mlm.mask_batch(rows[5:6], np.random.default_rng(11), **MLM_KW)
    for k in single:
        np.testing.assert_array_equal(single[k], single_b[k][0])
    # fresh draws from one generator (RoBERTa's dynamic masking) give different masks for the same row
    rng = np.random.default_rng(0)
    first = mlm.mask_tokens(rows[0], rng, **MLM_KW)["masked_positions"]
    second = mlm.mask_tokens(rows[0], rng, **MLM_KW)["masked_positions"]
    assert not np.array_equal(first, second)


def _words(cand, starts):
    """List of words (index arrays): same definition as mlm._whole_word_choice."""
    words, current = [], []
    for i in range(len(cand)):
        if not cand[i]:
            if current:
                words.append(current)
            current = []
            continue
        if starts[i] and current:
            words.append(current)
            current = []
        current.append(i)
    if current:
        words.append(current)
    return words


@pytest.mark.parametrize("batched", [False, True])
def test_whole_word_masking_masks_whole_words_only(batched):
    rows = _mlm_rows(300, seed=4)
    starts = np.random.default_rng(5).random(rows.shape) < 0.55  # words of ~1-4 pieces
    rng = np.random.default_rng(6)
    if batched:
        out = mlm.mask_batch(rows, rng, word_starts=starts, **MLM_KW)
    else:
        outs = [mlm.mask_tokens(r, rng, word_starts=s, **MLM_KW) for r, s in zip(rows, starts)]
        out = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
    _check_mask_invariants(rows, out)
    cand = ~np.isin(rows, SPECIALS)
    total, partial_rows = 0, 0
    for r in range(len(rows)):
        n = int(out["masked_weights"][r].sum())
        chosen = set(out["masked_positions"][r, :n].tolist())
        k = min(20, max(1, round(cand[r].sum() * 0.15)))
        assert 1 <= n <= k
        for word in _words(cand[r], starts[r]):
            hits = sum(i in chosen for i in word)
            assert hits in (0, len(word)), f"row {r}: word {word} partly masked ({hits})"
        total += n
        partial_rows += n < k
    assert abs(total / cand.sum() - 0.15) <= 0.01
    assert partial_rows < 0.1 * len(rows)  # skipping overflowing words still fills almost every row


def test_mask_tokens_edge_cases_and_errors():
    rng = np.random.default_rng(0)
    only_specials = np.array([CLS, SEP, PAD, PAD])
    out = mlm.mask_tokens(only_specials, rng, **MLM_KW)
    assert out["masked_weights"].sum() == 0
    np.testing.assert_array_equal(out["inputs"], only_specials)
    tiny = np.array([CLS, 17, SEP, PAD])  # round(0.15) = 0 -> still one prediction
    out = mlm.mask_tokens(tiny, rng, **dict(MLM_KW, max_predictions=3))
    assert out["masked_positions"].tolist() == [1, 0, 0] and out["masked_targets"].tolist() == [17, 0, 0]
    long_row = np.full(8, 9)  # max_predictions larger than the row
    out = mlm.mask_tokens(long_row, rng, **dict(MLM_KW, max_predictions=12, mask_rate=1.0))
    assert out["masked_weights"].sum() == 8 and out["masked_positions"][:8].tolist() == list(range(8))
    with pytest.raises(ValueError, match="mask_id"):
        mlm.mask_tokens(tiny, rng, **dict(MLM_KW, mask_id=VOCAB))
    with pytest.raises(ValueError, match="> 1"):
        mlm.mask_tokens(tiny, rng, **dict(MLM_KW, mask_token_prob=0.8, random_token_prob=0.3))
    with pytest.raises(ValueError, match="mask_rate"):
        mlm.mask_tokens(tiny, rng, **dict(MLM_KW, mask_rate=0.0))
    with pytest.raises(ValueError, match="vocab_size"):
        mlm.mask_tokens(np.array([CLS, VOCAB + 3]), rng, **MLM_KW)
    with pytest.raises(ValueError, match="word_starts shape"):
        mlm.mask_tokens(tiny, rng, word_starts=np.ones(3, bool), **MLM_KW)
    with pytest.raises(ValueError, match="1-D"):
        mlm.mask_tokens(tiny[None], rng, **MLM_KW)


# ----------------------------------------------------------------------------------------------- NSP
N_CLS, N_SEP = 1, 2
DOC_STRIDE = 10_000  # document d owns token ids [DOC_STRIDE*(d+1), DOC_STRIDE*(d+2)), increasing in order


def _nsp_corpus(n_docs=60, seed=0):
    rng = np.random.default_rng(seed)
    docs = []
    for d in range(n_docs):
        n_sent = 1 if d % 10 == 0 else int(rng.integers(2, 15))  # some one-sentence documents
        lengths = rng.integers(1, 40, n_sent)
        ids = DOC_STRIDE * (d + 1) + np.arange(lengths.sum())
        docs.append(np.split(ids, np.cumsum(lengths)[:-1]))
    return docs


def _contiguous(x):
    return x.size >= 1 and np.all(np.diff(x) == 1)


def test_nsp_pairs_layout_labels_and_sources():
    docs = _nsp_corpus()
    L = 64
    rng = np.random.default_rng(123)
    labels, short = [], 0
    for _ in range(10_000):
        d = int(rng.integers(0, len(docs)))
        ex = nsp.make_sentence_pair(docs, d, rng, max_length=L, cls_id=N_CLS, sep_id=N_SEP)
        inputs = ex["inputs"]
        assert inputs.shape == (L,) and inputs.dtype == np.int32
        seps = np.flatnonzero(inputs == N_SEP)
        assert inputs[0] == N_CLS and len(seps) == 2
        a, b = inputs[1:seps[0]], inputs[seps[0] + 1:seps[1]]
        n_real = seps[1] + 1
        assert np.all(inputs[n_real:] == 0) and a.size >= 1 and b.size >= 1
        tt = np.zeros(L, np.int32)
        tt[seps[0] + 1:n_real] = 1
        np.testing.assert_array_equal(ex["token_types"], tt)
        np.testing.assert_array_equal(ex["segment_ids"], (np.arange(L) < n_real).astype(np.int32))
        np.testing.assert_array_equal(ex["positions"], np.arange(L))
        assert np.all(a // DOC_STRIDE - 1 == d) and _contiguous(a)
        assert _contiguous(b)
        label = int(ex["nsp_labels"])
        assert ex["nsp_labels"].shape == () and ex["nsp_labels"].dtype == np.int32
        if label == 0:
            assert ex["b_doc_index"] == d and np.all(b // DOC_STRIDE - 1 == d)
            assert b[0] > a[-1]  # B follows A in the same document (truncation may cut the seam)
            if n_real < L:  # nothing truncated: B starts right after A
                assert b[0] == a[-1] + 1
        else:
            assert ex["b_doc_index"] != d and np.all(b // DOC_STRIDE - 1 == ex["b_doc_index"])
        labels.append(label)
        short += n_real < 24
    frac = np.mean(labels)
    assert abs(frac - 0.5) <= 0.02, frac
    assert short > 0.03 * len(labels)  # short_seq_prob gives short targets


def test_nsp_single_sentence_document_and_errors():
    docs = [[np.arange(100, 130)], [np.arange(200, 210), np.arange(210, 220)]]
    rng = np.random.default_rng(0)
    labels = []
    for _ in range(200):
        ex = nsp.make_sentence_pair(docs, 0, rng, max_length=16, cls_id=N_CLS, sep_id=N_SEP)
        seps = np.flatnonzero(ex["inputs"] == N_SEP)
        a, b = ex["inputs"][1:seps[0]], ex["inputs"][seps[0] + 1:seps[1]]
        assert seps[1] + 1 <= 16 and np.all((a >= 100) & (a < 130))
        if int(ex["nsp_labels"]) == 0:
            assert np.all((b >= 100) & (b < 130)) and b[0] > a[-1]
        else:
            assert np.all((b >= 200) & (b < 220))
        labels.append(int(ex["nsp_labels"]))
    assert 0 < np.mean(labels) < 1
    one_token = [[np.array([7])], [np.array([8, 9])]]
    ex = nsp.make_sentence_pair(one_token, 0, rng, max_length=8, cls_id=N_CLS, sep_id=N_SEP,
                                random_next_prob=0.0)
    assert int(ex["nsp_labels"]) == 1  # no real continuation exists
    with pytest.raises(ValueError, match="at least 2 documents"):
        nsp.make_sentence_pair(docs[:1], 0, rng, max_length=16, cls_id=N_CLS, sep_id=N_SEP)
    with pytest.raises(ValueError, match="max_length"):
        nsp.make_sentence_pair(docs, 0, rng, max_length=4, cls_id=N_CLS, sep_id=N_SEP)


def test_nsp_short_seq_prob():
    long_docs = [[DOC_STRIDE * (d + 1) + np.arange(i * 4, i * 4 + 4) for i in range(50)] for d in range(4)]
    rng = np.random.default_rng(1)

    def lengths(prob):
        return np.array([nsp.make_sentence_pair(long_docs, i % 4, rng, max_length=64, cls_id=N_CLS, sep_id=N_SEP,
                                                short_seq_prob=prob)["segment_ids"].sum() for i in range(300)])

    full, short = lengths(0.0), lengths(1.0)
    assert np.median(full) == 64 and full.min() >= 11  # only a chunk at a document's end is shorter
    assert short.mean() < 0.75 * full.mean() and short.min() <= 11  # target length in [2, max_length - 3]


def test_truncation_counts_match_berts_loop():
    for la in range(1, 30):
        for lb in range(1, 30):
            for max_tokens in (2, 5, 17, 40):
                a, b = la, lb
                while a + b > max_tokens:
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert nsp.truncation_counts(la, lb, max_tokens) == (la - a, lb - b)


# -------------------------------------------------------------------------------------------- losses
def _np_log_softmax(x):
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_padding_never_counts():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 7, 11)).astype(np.float32)
    targets = rng.integers(0, 11, (3, 7))
    weights = (rng.random((3, 7)) < 0.6).astype(np.float32)
    pad = weights == 0
    changed = logits.copy()
    changed[pad] = rng.normal(size=(pad.sum(), 11)) * 1e4
    changed_targets = np.where(pad, -100, targets)
    nan_logits = logits.copy()
    nan_logits[pad] = np.nan
    kw = dict(label_smoothing=0.1, z_loss=1e-3)
    ce = jax.jit(lambda lg, tg: losses.cross_entropy_with_logits(lg, tg, jnp.array(weights), **kw))
    acc = jax.jit(lambda lg, tg: losses.weighted_accuracy(lg, tg, jnp.array(weights)))
    ref, ref_acc = ce(logits, targets), acc(logits, targets)
    for lg, tg in ((changed, targets), (changed, changed_targets), (nan_logits, targets)):
        np.testing.assert_allclose(np.array(ce(lg, tg)), np.array(ref), rtol=1e-6)
        np.testing.assert_allclose(np.array(acc(lg, tg)), np.array(ref_acc))
    assert float(ref[2]) == weights.sum()
    grad = jax.jit(jax.grad(lambda x: ce(x, targets)[0]))(changed)
    assert np.all(np.array(grad)[pad] == 0) and np.all(np.abs(np.array(grad)[~pad]).sum(-1) > 0)


def test_cross_entropy_hand_values_label_smoothing_and_z_loss():
    rng = np.random.default_rng(1)
    V = 5
    logits = rng.normal(size=(4, V)).astype(np.float32) * 3
    targets = np.array([0, 3, 4, 1])
    weights = np.array([1.0, 0.5, 0.0, 2.0], np.float32)
    log_p = _np_log_softmax(logits)
    nll = -log_p[np.arange(4), targets]
    loss, z, wsum = losses.cross_entropy_with_logits(jnp.array(logits), targets, jnp.array(weights))
    np.testing.assert_allclose(float(loss), np.sum(nll * weights), rtol=1e-6)
    assert float(z) == 0.0 and float(wsum) == 3.5

    eps = 0.2
    q = np.full((4, V), eps / (V - 1))
    q[np.arange(4), targets] = 1 - eps
    entropy = -np.sum(q[0] * np.log(q[0]))
    smoothed = -(q * log_p).sum(-1) - entropy
    loss, _, _ = losses.cross_entropy_with_logits(jnp.array(logits), targets, jnp.array(weights),
                                                  label_smoothing=eps)
    np.testing.assert_allclose(float(loss), np.sum(smoothed * weights), rtol=1e-6)
    # a prediction equal to the smoothed targets scores 0 (the normaliser is subtracted)
    best, _, _ = losses.cross_entropy_with_logits(jnp.log(jnp.array(q, jnp.float32)), targets, None,
                                                  label_smoothing=eps)
    assert abs(float(best)) < 1e-5

    zc = 1e-2
    lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    loss, z, _ = losses.cross_entropy_with_logits(jnp.array(logits), targets, jnp.array(weights), z_loss=zc)
    np.testing.assert_allclose(float(z), np.sum(zc * lse ** 2 * weights), rtol=1e-6)
    np.testing.assert_allclose(float(loss), np.sum((nll + zc * lse ** 2) * weights), rtol=1e-6)

    mean, metrics = losses.weighted_mean_cross_entropy(jnp.array(logits), targets, jnp.array(weights))
    np.testing.assert_allclose(float(mean), np.sum(nll * weights) / 3.5, rtol=1e-6)
    correct = (logits.argmax(-1) == targets) * weights
    np.testing.assert_allclose(float(metrics["accuracy"]), correct.sum() / 3.5, rtol=1e-6)
    assert float(metrics["num_tokens"]) == 3.5
    np.testing.assert_allclose(float(losses.perplexity(metrics["loss"])), np.exp(np.sum(nll * weights) / 3.5),
                               rtol=1e-5)
    empty, _ = losses.weighted_mean_cross_entropy(jnp.array(logits), targets, jnp.zeros(4))
    assert float(empty) == 0.0

    # The trained loss carries smoothing and the z-loss (once); lm_loss, what perplexity is the exp of, is the NLL.
    mean, metrics = losses.weighted_mean_cross_entropy(jnp.array(logits), targets, jnp.array(weights),
                                                       label_smoothing=eps, z_loss=zc)
    np.testing.assert_allclose(float(mean), np.sum((smoothed + zc * lse ** 2) * weights) / 3.5, rtol=1e-6)
    np.testing.assert_allclose(float(metrics["lm_loss"]), np.sum(nll * weights) / 3.5, rtol=1e-6)


def test_bfloat16_logits_are_upcast():
    rng = np.random.default_rng(2)
    logits = jnp.array(rng.normal(size=(6, 50)) * 4, jnp.bfloat16)
    targets = jnp.array(rng.integers(0, 50, 6))
    loss, z, w = losses.cross_entropy_with_logits(logits, targets, None, z_loss=1e-4)
    assert loss.dtype == jnp.float32 and z.dtype == jnp.float32
    ref, _, _ = losses.cross_entropy_with_logits(logits.astype(jnp.float32), targets, None, z_loss=1e-4)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


def _all_shapes(jaxpr):
    """Shapes of every value in a (closed) jaxpr, sub-jaxprs (scan, checkpoint, pjit) included."""
    shapes = []
    for eqn in jaxpr.eqns:
        shapes += [tuple(v.aval.shape) for v in eqn.outvars]
        for p in eqn.params.values():
            for sub in (p if isinstance(p, (list, tuple)) else [p]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    shapes += _all_shapes(inner)
    return shapes


@pytest.mark.parametrize("use_bias", [False, True])
def test_chunked_cross_entropy_equals_plain(use_bias):
    rng = np.random.default_rng(3)
    B, L, D, V = 2, 13, 16, 97  # 26 tokens: not a multiple of the chunk
    hidden = jnp.array(rng.normal(size=(B, L, D)), jnp.float32)
    emb = jnp.array(rng.normal(size=(V, D)) * 0.3, jnp.float32)
    bias = jnp.array(rng.normal(size=(V,)), jnp.float32) if use_bias else None
    targets = jnp.array(rng.integers(0, V, (B, L)))
    weights = jnp.array(rng.random((B, L)) < 0.8, jnp.float32)

    def plain(h, e, b):
        logits = jnp.einsum("bld,vd->blv", h, e) + (0.0 if b is None else b)
        loss, _, w = losses.cross_entropy_with_logits(logits, targets, weights)
        correct, _ = losses.weighted_accuracy(logits, targets, weights)
        return loss, (w, correct)

    def chunked(h, e, b):
        loss, w, correct = losses.chunked_cross_entropy(h, e, targets, weights, chunk_size=8, bias=b)
        return loss, (w, correct)

    argnums = (0, 1, 2) if use_bias else (0, 1)
    (lp, (wp, cp)), gp = jax.jit(jax.value_and_grad(plain, argnums, has_aux=True))(hidden, emb, bias)
    (lc, (wc, cc)), gc = jax.jit(jax.value_and_grad(chunked, argnums, has_aux=True))(hidden, emb, bias)
    np.testing.assert_allclose(float(lc), float(lp), rtol=1e-5, atol=1e-5)
    assert float(wc) == float(wp) and float(cc) == float(cp)
    for g_plain, g_chunk in zip(gp, gc):
        np.testing.assert_allclose(np.array(g_chunk), np.array(g_plain), rtol=1e-5, atol=1e-5)
    # the [B, L, V] (or [B*L, V]) logits never exist, forward or backward: only [chunk, V] pieces
    shapes = _all_shapes(jax.make_jaxpr(jax.grad(lambda h, e: chunked(h, e, bias)[0], (0, 1)))(hidden, emb).jaxpr)
    assert (8, V) in shapes
    too_big = [s for s in shapes if V in s and int(np.prod(s)) >= B * L * V]
    assert not too_big, too_big


def test_chunked_cross_entropy_shape_errors():
    with pytest.raises(ValueError, match="embedding shape"):
        losses.chunked_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((10, 5)), jnp.zeros((2, 3), jnp.int32),
                                     None, chunk_size=4)
    with pytest.raises(ValueError, match="targets shape"):
        losses.chunked_cross_entropy(jnp.zeros((2, 3, 4)), jnp.zeros((10, 4)), jnp.zeros((2, 4), jnp.int32),
                                     None, chunk_size=4)


# ----------------------------------------------------------------------------------------------------------------
# A new objective is one class and one registry line: pretrain.run trains it with nothing else changed


def test_a_registered_toy_objective_trains_through_pretrain(tmp_path):
    """Right-to-left language modelling (predict each token from the ones after it), defined here, outside the
    package, from the Objective interface and the data stages; `pretrain.run` picks it by config.objective."""
    import dataclasses
    from typing import ClassVar

    from jaxlm import pretrain
    from jaxlm.data import pipeline
    from jaxlm.data.packing import concat_then_split
    from jaxlm.objectives import OBJECTIVES, register_objective
    from jaxlm.objectives.clm import CausalLM, NextTokenPairs, causal_lm_loss, clm_row
    from jaxlm.train.metrics import loss_history, read_metrics
    from tests.configs.tiny import get_config

    @dataclasses.dataclass(frozen=True)
    class RightToLeftLM(CausalLM):
        name: ClassVar[str] = "toy_right_to_left"

        def dataset(self, source, tokenizer, options):
            ds = pipeline.documents(source, options).map(
                NextTokenPairs(tokenizer, options.text_key, self.seq_len, options.stats))
            it = concat_then_split(ds.to_iter_dataset(options.grain_read_options),
                                   {"inputs": self.seq_len, "targets": self.seq_len}).map(clm_row)
            # a row read backwards: each input is followed by the token that came before it (weights, segment ids
            # and positions reversed with it: packed documents stay apart)
            it = it.map(lambda r: {**{k: v[::-1].copy() for k, v in r.items()},
                                   "inputs": r["targets"][::-1].copy(), "targets": r["inputs"][::-1].copy()})
            it = it.batch(options.batch_size, drop_remainder=options.drop_remainder)
            return pipeline.finalize(it, self.name, self.batch_spec(options.batch_size), options)

        def loss_fn(self, model):
            return causal_lm_loss(model, self.loss)

    register_objective(RightToLeftLM)
    try:
        with pytest.raises(ValueError, match="toy_right_to_left.*taken"):
            register_objective(type("Other", (CausalLM,), {"name": "toy_right_to_left"}))
        config = get_config("gpt2")
        config.objective = "toy_right_to_left"
        config.data.data_dir = str(tmp_path / "tfds")
        config.train.num_steps = 30
        config.train.checkpoint_every = 30
        config.optimizer.learning_rate = 1e-2
        workdir = str(tmp_path / "run")
        summary = pretrain.run(config, workdir)
    finally:
        OBJECTIVES.pop("toy_right_to_left", None)
    steps, losses = loss_history(read_metrics(workdir), "train")
    assert steps == list(range(1, 31)) and summary["status"] == "completed"
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses  # from ~ln(500) = 6.2 nats
    # compute, energy and carbon accounting (jaxlm.train.accounting): the 29 steps after the compiled first one
    accounting = summary["accounting"]
    assert accounting["train_flops"] == pytest.approx(summary["flops"] / 30 * 29)
    assert accounting["device_hours"] > 0 and accounting["energy_method"] in ("rapl", "estimate")
    assert accounting["co2e_kg"] == pytest.approx(accounting["facility_energy_kwh"] * 475.0 / 1000)  # world average


def test_mlm_nsp_eval_perplexity_is_exp_of_the_mlm_loss_only():
    """The eval of an MLM + NSP run: loss = MLM + NSP, perplexity = exp(MLM loss), never exp of the sum."""
    from jaxlm.models import build_model, get_model_config
    from jaxlm.objectives import get_objective
    from jaxlm.train.step import average_eval_metrics, make_eval_step

    rng = np.random.default_rng(0)
    ids = rng.integers(10, 100, (4, 16))
    batch = {**mlm.mask_batch(ids, rng, mask_id=6, vocab_size=100, special_ids=(0, 4, 5, 6), max_predictions=3),
             "segment_ids": np.ones_like(ids), "token_types": np.zeros_like(ids), "nsp_labels": np.array([0, 1, 1, 0])}
    model = build_model(get_model_config("bert", None, vocab_size=100, hidden_size=32, num_layers=1, num_heads=2,
                                         intermediate_size=64, max_position_embeddings=16))
    params = model.init(jax.random.key(0), batch["inputs"])["params"]
    loss_fn = get_objective("mlm_nsp")(seq_len=16).loss_fn(model)
    _, metrics = loss_fn(params, batch, None)
    out = average_eval_metrics(jax.device_get(make_eval_step(loss_fn)(params, batch)))
    assert out["nsp_loss"] > 0.3 and out["loss"] == pytest.approx(out["mlm_loss"] + out["nsp_loss"], rel=1e-5)
    assert out["perplexity"] == pytest.approx(np.exp(float(metrics["mlm_loss"])), rel=1e-5)
    assert out["perplexity"] < 0.8 * np.exp(out["loss"])


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_chunked_vocabulary_projection_gives_the_unchunked_loss(family):
    """config.loss.logits_chunk_size: the CLM / seq2seq loss without [B,L,V] logits equals the plain one."""
    from jaxlm.models import build_model, get_model_config
    from jaxlm.objectives import LossConfig
    from jaxlm.objectives.clm import causal_lm_loss
    from jaxlm.objectives.span_corruption import seq2seq_lm_loss

    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, (2, 12))
    batch = {"inputs": ids, "targets": np.roll(ids, -1, 1), "weights": (rng.random((2, 12)) > 0.2).astype(np.float32),
             "decoder_inputs": np.roll(ids, 1, 1)}
    if family == "gpt2":
        config = get_model_config("gpt2", None, vocab_size=64, hidden_size=16, num_layers=1, num_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
        make, init = causal_lm_loss, (ids,)
    else:
        config = get_model_config("t5", None, vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
        make, init = seq2seq_lm_loss, (ids, batch["decoder_inputs"])
    model = build_model(config)
    params = nn.unbox(model.init(jax.random.key(0), *init)["params"])
    plain_loss, plain = make(model, LossConfig())(params, batch, None)
    chunked_loss, chunked = make(model, LossConfig(logits_chunk_size=5))(params, batch, None)
    assert float(plain_loss) > 3.0  # ~ln(64): a real number, not a trivial zero
    np.testing.assert_allclose(float(chunked_loss), float(plain_loss), rtol=1e-5)
    np.testing.assert_allclose(float(chunked["accuracy"]), float(plain["accuracy"]), atol=1e-6)
    assert float(chunked["num_tokens"]) == float(plain["num_tokens"]) == batch["weights"].sum()


def test_accuracy_by_max_logit_equals_argmax_without_ties_and_counts_a_tie_as_correct():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 7, 50)).astype(np.float32)
    targets = rng.integers(0, 50, (4, 7)).astype(np.int32)
    targets[0, :3] = logits[0, :3].argmax(-1)  # some hits
    weights = rng.uniform(0.5, 2.0, (4, 7)).astype(np.float32)
    weights[1, 2] = 0.0
    correct, total = losses.weighted_accuracy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights))
    expected = np.sum(np.where(logits.argmax(-1) == targets, weights, 0.0))
    assert expected > 0
    np.testing.assert_allclose(float(correct), expected, rtol=1e-6)
    np.testing.assert_allclose(float(total), weights.sum(), rtol=1e-6)
    tie = jnp.asarray([[[1.0, 3.0, 3.0]]])
    assert float(losses.weighted_accuracy(tie, jnp.asarray([[2]]))[0]) == 1.0  # argmax would say 1
    assert float(losses.weighted_accuracy(tie, jnp.asarray([[-100]]))[0]) == 0.0  # an ignored label never hits
