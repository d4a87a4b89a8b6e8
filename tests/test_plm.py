"""XLNet's permutation LM (`plm`): the attention masks of the factorisation order, the target statistics of the
authors' _sample_mask, the grain pipeline (layout, determinism, resume; the recurrent layout with memory) and the
loss on a tiny XLNetLMHeadModel (hand computation, no leak from a target to its own prediction, training, the
memory a train step carries to the next)."""
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxlm import sharding as shd
from jaxlm.data import train_tokenizer
from jaxlm.data.corpus import pydoc_documents
from jaxlm.layers.relative_attention import xlnet_masks
from jaxlm.models import get_family
from jaxlm.models.common import unbox
from jaxlm.models.xlnet import XLNetConfig
from jaxlm.objectives.base import LossConfig
from jaxlm.objectives.plm import (
    PLM_KEYS,
    SEG_ID_PAD,
    PermutationLM,
    local_perm,
    plm_features,
    sample_mask,
    span_length_probs,
    token_streams,
)
from jaxlm.train import create_train_state, jit_train_step, make_train_step, with_memory

SEP, CLS, PAD = 4, 3, 0  # the numpy-only tests' ids
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
DOCS = [{"text": text} for _, text in list(pydoc_documents())[:40]]


def _runs(mask):
    """(start, end) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


# ----------------------------------------------------------------------------------------------------------------
# masks

def test_factorisation_order_masks():
    rng = np.random.default_rng(0)
    L, rows = 16, 300
    inputs, segment_ids, perm_masks, targets, ranks, sizes = [], [], [], [], [], []
    for _ in range(rows):
        ids = rng.integers(10, 60, L)
        ids[rng.random(L) < 0.15] = SEP
        ids[rng.random(L) < 0.05] = CLS
        valid = np.arange(L) < rng.integers(L // 2, L + 1)
        ids[~valid] = PAD
        is_masked = rng.random(L) < rng.uniform(0.1, 0.7)
        perm_size = int(rng.choice([1, 2, 4, 8, 16]))
        out = local_perm(rng, ids, is_masked, perm_size, L, sep_id=SEP, cls_id=CLS, valid=valid)
        target = is_masked & valid & (ids != SEP) & (ids != CLS)
        np.testing.assert_array_equal(out.target_mask, target)
        np.testing.assert_array_equal(out.target, ids)
        # one permutation of perm_size offsets, the same in every block, blocks in order
        blocks = out.rank.reshape(-1, perm_size)
        np.testing.assert_array_equal(blocks // perm_size, np.repeat(np.arange(L // perm_size)[:, None], perm_size, 1))
        np.testing.assert_array_equal(blocks % perm_size, np.broadcast_to(blocks[0] % perm_size, blocks.shape))
        assert sorted(blocks[0] % perm_size) == list(range(perm_size))
        inputs.append(ids), segment_ids.append(valid.astype(np.int32)), perm_masks.append(out.perm_mask)
        targets.append(target), ranks.append(out.rank), sizes.append(perm_size)
    segment_ids, perm_mask = np.stack(segment_ids), np.stack(perm_masks)
    mask_h, mask_g = (np.asarray(m[:, 0]) for m in xlnet_masks(jnp.asarray(segment_ids), jnp.asarray(perm_mask)))
    assert len(set(sizes)) == 5
    for b in range(rows):
        h, g, t, r, ids = mask_h[b], mask_g[b], targets[b], ranks[b], inputs[b]
        valid = segment_ids[b] > 0
        func = valid & ((ids == SEP) | (ids == CLS))
        plain = valid & ~t & ~func  # real non-target tokens
        earlier = r[None, :] < r[:, None]  # earlier[i, j]: j comes before i in the factorisation order
        assert h.diagonal().all(), "the content stream always sees its own token"
        # query stream of a target: not itself, no later target; every earlier target and separator, every plain token
        tt = t[:, None] & t[None, :]
        assert not g.diagonal()[t].any()
        assert not g[tt & ~earlier].any()
        assert g[tt & earlier].all()
        assert (g[t][:, func] == earlier[t][:, func]).all()
        assert g[t][:, plain].all()
        # non-targets never see a target (neither stream), nor a separator; they see each other
        assert not g[plain][:, t].any() and not h[plain][:, t].any()
        assert not g[plain][:, func].any()
        assert g[valid][:, plain].all()
        # padding is never seen, except by itself in the content stream
        assert not g[:, ~valid].any() and not (h[:, ~valid] & ~np.eye(len(ids), dtype=bool)[:, ~valid]).any()
        # a target's content stream sees what its query stream sees, plus itself
        np.testing.assert_array_equal(h[t], g[t] | np.eye(len(ids), dtype=bool)[t])


# ----------------------------------------------------------------------------------------------------------------
# statistics

@pytest.mark.parametrize("mask_alpha,rows", [(6, 10_000), (2, 2_000)])
def test_span_lengths_and_context_follow_the_authors_distribution(mask_alpha, rows):
    """No budget: spans only. Their lengths follow p(n) ~ 1/n; the gap between two spans is the context,
    mask_alpha / mask_beta x the mean span. (Spans cut off by the row's end bias long spans by ~1%.)"""
    rng = np.random.default_rng(0)
    lengths, gaps = [], []
    for _ in range(rows):
        starts, ends = _runs(sample_mask(rng, 512, None, mask_alpha=mask_alpha))
        lengths.append(ends - starts)
        gaps.append(starts[1:] - ends[:-1])
    lengths, gaps = np.concatenate(lengths), np.concatenate(gaps)
    p = (1 / np.arange(1, 6)) / (1 / np.arange(1, 6)).sum()  # the authors' pvals: .438 .219 .146 .109 .088
    np.testing.assert_allclose(span_length_probs(5), p)
    mean_span = float((np.arange(1, 6) * p).sum())  # 2.19
    frequencies = np.bincount(lengths, minlength=6)[1:] / lengths.size
    assert lengths.max() == 5 and np.abs(frequencies - p).max() < 0.01, (frequencies, p)
    assert lengths.mean() == pytest.approx(mean_span, rel=0.02)
    assert gaps.mean() == pytest.approx(mask_alpha * mean_span, rel=0.02)


def test_spans_begin_at_word_starts():
    """A span begins at a word start (the authors' start pieces); reverse=True samples on the reversed row, so
    there a span's last token is a word start."""
    rng = np.random.default_rng(0)
    starts = np.arange(120) % 3 == 0
    for _ in range(50):
        begins, ends = _runs(sample_mask(rng, 120, None, word_starts=starts))
        assert begins.size and (begins % 3 == 0).all()
        begins, ends = _runs(sample_mask(rng, 120, None, word_starts=starts, reverse=True))
        assert begins.size and ((ends - 1) % 3 == 0).all()


def test_rows_predict_the_configured_number_of_tokens():
    """10k full rows of 256 tokens, num_predict 42: exactly 42 tokens chosen; the targets are those that are not
    <sep> / <cls> (as the authors'): within 2% of 42 on average, never more."""
    rng = np.random.default_rng(0)
    L, P = 256, 42
    counts = []
    for _ in range(10_000):
        len_a = int(rng.integers(1, L - 4))
        a, b = rng.integers(10, 60, len_a), rng.integers(10, 60, L - 3 - len_a)
        row = plm_features(a, b, rng, seq_len=L, num_predict=P, sep_id=SEP, cls_id=CLS, pad_id=PAD)
        n = int(row["target_weights"].sum())
        counts.append(n)
        positions = row["target_mapping"][:n].argmax(-1)
        assert (np.diff(positions) > 0).all() and row["target_mapping"][n:].sum() == 0
        assert not np.isin(row["inputs"][positions], (SEP, CLS)).any()
    counts = np.asarray(counts)
    assert counts.max() <= P and counts.min() >= P - 3
    assert counts.mean() == pytest.approx(P, rel=0.02)
    assert counts.mean() < P  # some rows choose a separator
    # with the same rng draws, the chosen tokens are exactly P
    assert all(sample_mask(np.random.default_rng(s), L, P).sum() == P for s in range(200))


# ----------------------------------------------------------------------------------------------------------------
# the pipeline

@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(iter([d["text"] for d in DOCS]), tmp_path_factory.mktemp("tok") / "sp", vocab_size=300)


def _rows(batch):
    return [{k: v[i] for k, v in batch.items()} for i in range(len(batch["inputs"])) if batch["segment_ids"][i].any()]


def test_pipeline_layout_shapes_and_determinism(tok):
    objective = PermutationLM(seq_len=64)
    assert objective.predictions == 10 and objective.permutation_size == 64
    spec = objective.batch_spec(4)
    assert tuple(spec) == PLM_KEYS and spec["perm_mask"][0] == (4, 64, 64) and spec["target_mapping"][0] == (4, 10, 64)
    make = lambda seed=0: objective.iterator(DOCS, tok, batch_size=4, seed=seed)  # noqa: E731
    it = make()
    batches = [next(it) for _ in range(3)]
    again = make()
    for a, b in zip(batches, [next(again) for _ in range(3)]):
        assert {k: (v.shape, v.dtype) for k, v in a.items()} == spec
        assert all(np.array_equal(a[k], b[k]) for k in PLM_KEYS)
    assert not np.array_equal(next(make(seed=1))["inputs"], batches[0]["inputs"])
    full = 0
    for row in (r for batch in batches for r in _rows(batch)):
        real = int(row["segment_ids"].sum())
        full += real == 64
        ids, types = row["inputs"][:real], row["token_types"][:real]
        assert (row["segment_ids"][:real] == 1).all() and (row["inputs"][real:] == tok.pad_id).all()
        assert (row["token_types"][real:] == SEG_ID_PAD).all()
        # A <sep> B <sep> <cls>: A and its <sep> type 0, B and its <sep> type 1, <cls> type 2
        seps = np.flatnonzero(ids == tok.sep_id)
        assert ids[-1] == tok.cls_id and len(seps) == 2 and seps[1] == real - 2 and 0 < seps[0] < real - 3
        np.testing.assert_array_equal(types, [0] * (seps[0] + 1) + [1] * (real - 2 - seps[0]) + [2])
        n = int(row["target_weights"].sum())
        positions = row["target_mapping"][:n].argmax(-1)
        assert 1 <= n <= 10 and (row["target_mapping"][:n].sum(-1) == 1).all() and row["target_weights"][n:].sum() == 0
        np.testing.assert_array_equal(row["targets"][:n], ids[positions])
        assert (row["targets"][n:] == 0).all() and not np.isin(ids[positions], (tok.sep_id, tok.cls_id)).any()
        # the targets are hidden from their own query stream and from every non-target (but <sep> / <cls>, which
        # are ordered among the targets)
        perm = row["perm_mask"]
        assert perm[positions, positions].all()
        others = np.setdiff1d(np.flatnonzero((ids != tok.sep_id) & (ids != tok.cls_id)), positions)
        assert perm[np.ix_(others, positions)].all() and perm[:, real:].all()
    assert full >= len(batches)  # most pairs fill the row (the authors' rows are always full)
    # resume from a saved iterator state gives the same batches
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(2)]
    resumed = make()
    resumed.set_state(state)
    for a, b in zip([next(resumed) for _ in range(2)], expected):
        assert all(np.array_equal(a[k], b[k]) for k in PLM_KEYS)
    # eval: one pass, the last batch padded with all-padding rows; fixed masks
    evals = list(objective.eval_iterator(DOCS, tok, batch_size=16))
    assert len(evals) == 3 and evals[-1]["segment_ids"][8:].sum() == 0 and evals[-1]["target_weights"][8:].sum() == 0
    assert all(np.array_equal(a["perm_mask"], b["perm_mask"])
               for a, b in zip(evals, objective.eval_iterator(DOCS, tok, batch_size=16)))


# ----------------------------------------------------------------------------------------------------------------
# the loss

XLNET = get_family("xlnet")


@pytest.fixture(scope="module")
def setup(tok):
    objective = PermutationLM(seq_len=32, num_predict=5)
    config = XLNetConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                         dropout=0.1)
    objective.check_model(XLNET, config)
    config = objective.prepare_model_config(config, tok)
    model = XLNET.build(config)
    inputs = objective.init_inputs(XLNET, config)
    init = jax.jit(lambda rng: unbox(model.init(rng, **inputs))["params"], compiler_options=FAST_COMPILE)
    params = init(jax.random.key(0))
    batch = next(objective.iterator(DOCS, tok, batch_size=2, seed=0))
    return objective, config, model, params, batch


def _forward(model):
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def forward(params, batch):
        return model.apply({"params": params}, batch["inputs"], segment_ids=batch["segment_ids"],
                           token_types=batch["token_types"], perm_mask=batch["perm_mask"],
                           target_mapping=batch["target_mapping"])
    return forward


def test_loss_is_cross_entropy_of_the_query_stream_at_the_targets(setup, tok):
    objective, config, model, params, batch = setup
    assert config.pad_token_id == tok.pad_id
    noise = np.random.default_rng(0)  # away from the init's near-uniform attention, so every mask entry matters
    params = jax.tree.map(lambda x: x + 0.3 * noise.standard_normal(x.shape).astype(x.dtype), params)
    loss_fn = jax.jit(objective.loss_fn(model), static_argnums=2, compiler_options=FAST_COMPILE)
    loss, metrics = loss_fn(params, batch, None)
    forward = _forward(model)
    out = jax.tree.map(np.asarray, forward(params, batch))
    # by hand: the tied output layer on the query stream, log-softmax, the targets' NLL, mean over the real targets
    embedding, bias = np.asarray(params["xlnet"]["word_embeddings"]["embedding"]), np.asarray(params["lm_bias"])
    logits = out["query_hidden"] @ embedding.T + bias
    np.testing.assert_allclose(logits, out["logits"], rtol=1e-5, atol=1e-5)
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    w = batch["target_weights"]
    nll = -np.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0]
    assert float(loss) == pytest.approx((nll * w).sum() / w.sum(), rel=1e-5)
    assert float(metrics["lm_loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(metrics["num_tokens"]) == w.sum() and 0 <= float(metrics["accuracy"]) <= 1
    assert float(metrics["accuracy"]) == pytest.approx(((logits.argmax(-1) == batch["targets"]) * w).sum() / w.sum())
    # chunked projection: the same loss
    chunked = jax.jit(PermutationLM(seq_len=32, num_predict=5, loss=LossConfig(logits_chunk_size=3)).loss_fn(model),
                      static_argnums=2, compiler_options=FAST_COMPILE)
    assert float(chunked(params, batch, None)[0]) == pytest.approx(float(loss), rel=1e-5)

    # no leak: a target's prediction does not change with any token its query stream cannot see (itself, later
    # targets), and does change with one it sees
    b, p = 0, 0
    i = int(batch["target_mapping"][b, p].argmax())
    hidden = ~np.asarray(xlnet_masks(jnp.asarray(batch["segment_ids"]), jnp.asarray(batch["perm_mask"]))[1])[b, 0, i]
    ids = batch["inputs"][b]
    hidden &= (batch["segment_ids"][b] > 0) & (ids != tok.sep_id) & (ids != tok.cls_id)
    seen = np.flatnonzero(~hidden & (batch["segment_ids"][b] > 0) & (ids != tok.sep_id) & (ids != tok.cls_id))
    assert hidden[i] and seen.size

    def changed(positions):
        edited = dict(batch, inputs=batch["inputs"].copy())
        edited["inputs"][b, positions] = (edited["inputs"][b, positions] + 1 - 7) % (tok.vocab_size - 7) + 7
        return np.asarray(forward(params, edited)["logits"])[b, p]

    np.testing.assert_allclose(changed(np.flatnonzero(hidden)), out["logits"][b, p], atol=1e-5)
    assert np.abs(changed(seen[:1]) - out["logits"][b, p]).max() > 1e-4


def test_a_few_adam_steps_lower_the_loss(setup):
    objective, config, model, params, batch = setup
    loss_fn = objective.loss_fn(model)
    tx = optax.adam(1e-2)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(params, opt_state, rng):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch, rng)  # dropout on
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for k in range(25):
        params, opt_state, loss = step(params, opt_state, jax.random.key(k))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses


def test_train_flops_count_both_streams_and_the_head():
    objective = PermutationLM(seq_len=32, num_predict=5)
    config = XLNetConfig(vocab_size=300, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48)
    D, A, F, N, L, P, V = 32, 32, 48, 2, 32, 5, 300
    # content stream, layers 1..N-1: L tokens over L keys, scores and values, position scores over 2L encodings
    content = 6 * (N - 1) * (4 * D * A + 2 * D * F) * L + 12 * (N - 1) * A * L * L + 6 * (N - 1) * A * 2 * L * L
    last_layer = 6 * 2 * D * A * L  # its content output is never read: only the keys / values the queries use
    # query stream at the P targets: its own query / output projections and feed-forward, the content's keys
    query = 6 * N * (2 * D * A + 2 * D * F) * P + 12 * N * A * L * P + 6 * N * A * 2 * L * P
    projection = 4 * N * D * A * 2 * L  # dropout on: each row's relative encodings through each layer (no input grad)
    head = 6 * V * D * P  # tied embedding at the targets
    assert objective.train_flops_per_example(XLNET, config) == content + last_layer + query + projection + head
    assert objective.tokens_per_example == 32


# ----------------------------------------------------------------------------------------------------------------
# the recurrent layout: memory across steps

def test_memory_rows_continue_their_streams_step_after_step(tok):
    """Row r of step t+1 reuses the reuse_len tokens of stream r that follow step t's (whose hidden states the
    model cached); bi_data rows read the same streams backwards; the reuse part never sees the rest."""
    objective = PermutationLM(seq_len=32, num_predict=6, mem_len=8, reuse_len=8, bi_data=True)
    it = objective.iterator(DOCS, tok, batch_size=4, seed=3)
    batches = [next(it) for _ in range(3)]
    streams = token_streams(DOCS, tok, 2, 3, "text")
    for t, batch in enumerate(batches):
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == objective.batch_spec(4)
        assert (batch["segment_ids"] == 1).all()
        for r in range(4):
            stream = streams[r - 2][::-1] if r >= 2 else streams[r]
            np.testing.assert_array_equal(batch["inputs"][r, :8], stream[8 * t:8 * t + 8])
            assert batch["inputs"][r, 8] == stream[8 * t + 8]  # A follows the reused tokens
            ids, types = batch["inputs"][r], batch["token_types"][r]
            seps = np.flatnonzero(ids == tok.sep_id)
            assert ids[-1] == tok.cls_id and seps[-1] == 30 and types[0] == 0 and types[-1] == 2
            perm = batch["perm_mask"][r]
            assert perm[:8, 8:].all() and not perm[8:, :8].any()
            n = int(batch["target_weights"][r].sum())
            positions = batch["target_mapping"][r, :n].argmax(-1)
            assert 1 <= n <= 6 and (positions < 8).sum() <= 3 and (positions >= 8).sum() <= 3
            np.testing.assert_array_equal(batch["targets"][r, :n], ids[positions])
    state = it.get_state()
    expected = next(it)
    again = objective.iterator(DOCS, tok, batch_size=4, seed=3)
    again.set_state(state)
    resumed = next(again)
    assert all(np.array_equal(resumed[k], expected[k]) for k in PLM_KEYS)
    # evaluation reads independent sentence pairs, as without memory
    plain = PermutationLM(seq_len=32, num_predict=6)
    for a, b in zip(objective.eval_iterator(DOCS, tok, batch_size=8), plain.eval_iterator(DOCS, tok, batch_size=8)):
        assert all(np.array_equal(a[k], b[k]) for k in PLM_KEYS)


def test_the_train_step_carries_the_memory_a_batch_leaves(tok):
    """On a 2x2x2 mesh: after a step the state's memory is the model's new_mems of that batch (given the memory
    before it), and the next step's loss reads it; two microbatches give the same step (each reads and leaves its
    own rows of the memory)."""
    config = XLNetConfig(vocab_size=tok.vocab_size, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32,
                         dropout=0.0, mem_len=8, reuse_len=8, pad_token_id=tok.pad_id, scan_layers=True)
    objective = PermutationLM(seq_len=16, num_predict=4).for_model(config)
    assert (objective.mem_len, objective.reuse_len) == (8, 8)
    model, mesh, tx = XLNET.build(config), shd.make_mesh(2, 2, 2), optax.adam(1e-3)
    inputs = objective.init_inputs(XLNET, config)
    state, layout = create_train_state(lambda r: model.init(r, **inputs), tx, jax.random.key(0), mesh)
    state, layout = with_memory(state, layout, objective.memory_shape(config, 4), jnp.float32)
    copy = jax.tree.map(jnp.copy, state)  # the state is donated to the step
    assert state.memory.shape == (2, 4, 8, 16) and state.memory.sharding.spec == jax.sharding.PartitionSpec(
        None, ("data", "fsdp"))
    loss_fn = objective.loss_fn(model)
    step = jit_train_step(make_train_step(loss_fn, tx), layout, shd.batch_sharding(mesh), mesh)
    it = objective.iterator(DOCS, tok, batch_size=4, seed=0)
    first, second = next(it), next(it)
    params = jax.device_get(state.params)
    new_mems = jax.jit(lambda p, b, m: model.apply({"params": p}, b["inputs"], segment_ids=b["segment_ids"],
                                                   token_types=b["token_types"], perm_mask=b["perm_mask"],
                                                   target_mapping=b["target_mapping"], mems=m)["new_mems"],
                       compiler_options=FAST_COMPILE)
    expected = new_mems(params, first, jnp.zeros((2, 4, 8, 16)))
    state, _ = step(state, shd.host_local_to_global(first, mesh))
    np.testing.assert_allclose(jax.device_get(state.memory), expected, atol=1e-5)
    params, memory = jax.device_get(state.params), jax.device_get(state.memory)
    losses = jax.jit(lambda p, b, m: (loss_fn.with_memory(p, b, None, m)[0], loss_fn(p, b, None)[0]),
                     compiler_options=FAST_COMPILE)
    with_memory_loss, without = (float(x) for x in losses(params, second, memory))
    state, metrics = step(state, shd.host_local_to_global(second, mesh))
    assert float(metrics["loss"]) == pytest.approx(with_memory_loss, abs=1e-5)
    assert abs(with_memory_loss - without) > 1e-6  # the memory is read (a small effect at this init scale) ...
    noisy = memory + np.random.default_rng(0).standard_normal(memory.shape).astype(np.float32)
    assert abs(float(losses(params, second, noisy)[0]) - with_memory_loss) > 1e-4  # ... and what it holds matters
    split = jit_train_step(make_train_step(loss_fn, tx, num_microbatches=2), layout, shd.batch_sharding(mesh), mesh)
    for batch in (first, second):
        copy, split_metrics = split(copy, shd.host_local_to_global(batch, mesh))
    assert float(split_metrics["loss"]) == pytest.approx(float(metrics["loss"]), abs=1e-5)
    np.testing.assert_allclose(jax.device_get(copy.memory), jax.device_get(state.memory), atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), jax.device_get(copy.params),
                 jax.device_get(state.params))


def test_memory_settings_are_checked():
    with pytest.raises(ValueError, match=r"config.model.reuse_len=0: with a memory \(config.model.mem_len=8\)"):
        PermutationLM(seq_len=32).for_model(XLNetConfig(mem_len=8))
    with pytest.raises(ValueError, match=r"perm_size=16 must divide config.model.reuse_len=8"):
        PermutationLM(seq_len=32, perm_size=16).for_model(XLNetConfig(mem_len=8, reuse_len=8))
    assert PermutationLM(seq_len=32).for_model(XLNetConfig()).memory_shape(XLNetConfig(), 4) is None


# ----------------------------------------------------------------------------------------------------------------
# bad settings

def test_bad_settings_are_named():
    with pytest.raises(ValueError, match=r"config\.data\.num_predict=14 must be in \[1, 13\].*data\.seq_len=16"):
        PermutationLM(seq_len=16, num_predict=14)
    with pytest.raises(ValueError, match=r"config\.data\.num_predict=40 .*seq_len=32"):
        PermutationLM.from_config({"seq_len": 32, "num_predict": 40})
    with pytest.raises(ValueError, match=r"config\.data\.perm_size=5 must divide config\.data\.seq_len=32"):
        PermutationLM(seq_len=32, perm_size=5)
    with pytest.raises(ValueError, match=r"mask_alpha=1 .*mask_beta=2"):
        PermutationLM(seq_len=32, mask_alpha=1, mask_beta=2)
    with pytest.raises(ValueError, match=r"num_predict=9 must be in \[0, seg_len=8\]"):
        sample_mask(np.random.default_rng(0), 8, 9)
    with pytest.raises(ValueError, match=r"do not fit in seq_len=8"):
        plm_features(np.arange(3), np.arange(3), np.random.default_rng(0), seq_len=8, num_predict=2, sep_id=SEP,
                     cls_id=CLS)
    assert PermutationLM.from_config({"seq_len": 64, "num_predict": 0, "mask_rate": 0.15}).predictions == 10
    with pytest.raises(ValueError, match=r"'plm' trains the model's \['permutation_lm'\] head"):
        PermutationLM(seq_len=32).check_model(get_family("bert"), get_family("bert").make_config("tiny"))
