"""Length-bucketed fine-tuning batches (config.data.length_buckets; jaxlm.tasks.batches.EpochBatches): an epoch
covers every row exactly once in a seeded, resumable order, each batch cut to its bucket; and a bucketed batch gives
the per-example logits, losses and the gradients of the same rows padded to max_len."""
import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from jaxlm.config_defaults import finetune_config
from jaxlm.models import get_model_config
from jaxlm.tasks import EpochBatches, TaskSpec, get_task, iterate_batches
from jaxlm.tasks.base import apply_model
from jaxlm.tasks.batches import bucket_lengths, row_lengths
from jaxlm.tasks.finetuning import train_flops_per_step, train_length_buckets

MAX_LEN, VOCAB = 32, 100
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=VOCAB)
CLS, SEP = 2, 3


def synthetic_features(n: int, rng, *, task: str = "classification", max_len: int = MAX_LEN,
                       style: str = "bert") -> dict[str, np.ndarray]:
    """n rows of random lengths in [3, max_len] laid out as the task's features are (specials, token types,
    right padding), with labels; per-token labels only on some real tokens."""
    lengths = rng.integers(3, max_len + 1, n)
    lengths[:3] = (3, max_len, max_len // 2)  # both extremes and a bucket boundary
    f = {k: np.zeros((n, max_len), np.int32) for k in ("inputs", "segment_ids", "positions", "token_types")}
    for r, length in enumerate(lengths):
        f["inputs"][r, :length] = rng.integers(5, VOCAB, length)
        if style == "xlnet":  # a <sep> b <sep> <cls>: the head reads the last real token
            f["inputs"][r, length - 2:length] = SEP, CLS
            f["token_types"][r, length - 1] = 2
        else:
            f["inputs"][r, 0], f["inputs"][r, length - 1] = CLS, SEP
        f["segment_ids"][r, :length] = 1
        f["positions"][r, :length] = np.arange(length)
    if task == "classification":
        f["labels"] = rng.integers(0, 3, n).astype(np.int32)
    else:
        f["labels"] = rng.integers(0, 3, (n, max_len)).astype(np.int32)
        f["label_weights"] = ((rng.random((n, max_len)) < 0.6) & (f["segment_ids"] > 0)).astype(np.float32)
        f["label_weights"][:, 0] = 0.0
    f["example_index"] = np.arange(n, dtype=np.int32)
    f["example_weights"] = np.ones(n, np.float32)
    return f


# ----------------------------------------------------------------------------------------------------------------
# The batches

def test_bucket_lengths_and_row_lengths():
    assert bucket_lengths((16, 32, 64, 128, 256, 512), 128) == (16, 32, 64, 128)
    assert bucket_lengths((64, 16), 50) == (16, 50) and bucket_lengths((), 128) == () == bucket_lengths((0,), 64)
    with pytest.raises(ValueError, match="positive"):
        bucket_lengths((-8,), 64)
    segment_ids = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 2, 2, 0]])
    assert row_lengths(segment_ids).tolist() == [2, 4, 0, 3]


def test_bucketed_epoch_covers_every_row_once_in_a_seeded_resumable_order():
    features = synthetic_features(203, np.random.default_rng(0))
    keys = ("inputs", "segment_ids", "positions", "token_types", "labels", "example_weights", "example_index")
    cut = ("inputs", "segment_ids", "positions", "token_types")
    make = lambda seed=3, **kw: EpochBatches(features, 16, keys, seed=seed, buckets=(8, 16, 32),  # noqa: E731
                                             bucket_keys=cut, **kw)
    lengths = row_lengths(features["segment_ids"])
    straight = make()
    per_bucket = {b: int(np.ceil(np.sum((lengths <= b) & (lengths > prev)) / 16))
                  for prev, b in zip((0, 8, 16), (8, 16, 32))}
    assert straight.batches_per_bucket == per_bucket and straight.steps_per_epoch == sum(per_bucket.values())
    steps = straight.steps_per_epoch
    batches = [next(straight) for _ in range(2 * steps + 3)]
    for epoch in range(2):
        seen = []
        for b in batches[epoch * steps:(epoch + 1) * steps]:
            length = b["inputs"].shape[1]
            assert length in (8, 16, 32) and all(b[k].shape == (16, length) for k in cut)
            assert b["labels"].shape == (16,) and b["example_weights"].shape == (16,)
            real = b["example_weights"] > 0
            rows = b["example_index"][real]
            assert (b["example_index"][~real] == -1).all() and not b["segment_ids"][~real].any()
            np.testing.assert_array_equal(b["inputs"][real], features["inputs"][rows, :length])  # nothing cut off
            assert (lengths[rows] <= length).all() and (lengths[rows] > {8: 0, 16: 8, 32: 16}[length]).all()
            seen += rows.tolist()
        assert sorted(seen) == list(range(203)), "every row exactly once per epoch"
    assert [b["inputs"].shape[1] for b in batches[:steps]] != sorted(b["inputs"].shape[1] for b in batches[:steps])
    first = lambda it: [next(it)["example_index"].tolist() for _ in range(steps)]  # noqa: E731
    assert first(make()) == [b["example_index"].tolist() for b in batches[:steps]]  # seeded
    assert first(make(seed=4)) != first(make())
    assert [b["example_index"].tolist() for b in batches[:steps]] != \
        [b["example_index"].tolist() for b in batches[steps:2 * steps]]  # reshuffled per epoch

    for stop in (5, steps, steps + 2):  # mid-epoch, at the epoch's end, in the next epoch
        run = make()
        for _ in range(stop):
            next(run)
        resumed = make()
        resumed.set_state(json.loads(json.dumps(run.get_state())))
        for expected in batches[stop:]:
            got = next(resumed)
            assert set(got) == set(expected)
            for k in got:
                np.testing.assert_array_equal(got[k], expected[k])

    with pytest.raises(ValueError, match=r"length buckets \(8, 16, 32\), this run's are none"):
        EpochBatches(features, 16, keys, seed=3).set_state(run.get_state())
    with pytest.raises(ValueError, match=r"length buckets none, this run's are \(8, 16, 32\)"):
        make().set_state({"epoch": 0, "batch": 3})  # a position saved before length buckets

    halves = [make(process_index=p, process_count=2) for p in range(2)]
    for whole in batches[:steps]:
        parts = [next(h) for h in halves]
        for k in keys:
            np.testing.assert_array_equal(whole[k], np.concatenate([p[k] for p in parts]))


def test_without_buckets_the_batches_are_the_shuffled_padded_ones():
    """buckets=() is the old behaviour batch for batch (a checkpointed run resumes onto the same batches)."""
    features = synthetic_features(50, np.random.default_rng(1))
    keys = ("inputs", "example_weights", "example_index")
    plain = EpochBatches(features, 16, keys, seed=3)
    assert plain.steps_per_epoch == 4 and plain.buckets == ()
    for epoch in range(2):
        for expected in iterate_batches({k: features[k] for k in keys}, 16, shuffle=True, seed=3, epoch=epoch):
            got = next(plain)
            for k in keys:
                np.testing.assert_array_equal(got[k], expected[k])


def test_config_buckets_per_task_and_flops_follow_the_buckets():
    config = finetune_config()
    assert tuple(config.data.length_buckets) == (16, 32, 64, 128, 256, 512)
    spec = TaskSpec(task="classification", format="sst2", labels=("0", "1"), pair=False, style="bert", max_len=64)
    assert train_length_buckets(config, get_task("classification"), spec)[0] == (16, 32, 64)
    ner = dataclasses.replace(spec, task="token_classification", labels=("O", "B", "I"))
    assert "label_weights" in train_length_buckets(config, get_task("token_classification"), ner)[1]
    qa = dataclasses.replace(spec, task="question_answering", labels=None, pair=True)
    assert train_length_buckets(config, get_task("question_answering"), qa) == ((), ())
    with config.unlocked():
        config.data.length_buckets = ()
    assert train_length_buckets(config, get_task("classification"), spec) == ((), ())

    model_config = get_model_config("bert", None, **TINY)
    task = get_task("classification")
    features = synthetic_features(100, np.random.default_rng(2), max_len=64)
    keys = task.device_keys(spec)
    bucketed = EpochBatches(features, 16, keys, buckets=(16, 32, 64), bucket_keys=task.length_bucket_keys(spec))
    per_row = {b: task.train_flops_per_example(dataclasses.replace(spec, max_len=b), model_config)
               for b in (16, 32, 64)}
    expected = sum(c * per_row[b] for b, c in bucketed.batches_per_bucket.items()) / bucketed.steps_per_epoch * 16
    assert train_flops_per_step(task, spec, model_config, bucketed) == pytest.approx(expected)
    assert expected < per_row[64] * 16
    assert train_flops_per_step(task, spec, model_config, EpochBatches(features, 16, keys)) == per_row[64] * 16


# ----------------------------------------------------------------------------------------------------------------
# The same numbers as full rows

CASES = {  # family, task, style, check a training step's gradients too
    "bert/classification": ("bert", "classification", "bert", True),  # the pooler on [CLS]
    "gpt2/classification": ("gpt2", "classification", "gpt2", False),  # causal, the last real token
    "xlnet/classification": ("xlnet", "classification", "xlnet", False),  # relative attention, the last token
    "bert/token_classification": ("bert", "token_classification", "bert", True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bucketed_batches_give_the_full_length_logits_losses_and_gradients(case):
    """The same params and rows: per-example logits and losses of the bucketed batches equal those of the rows
    padded to max_len (atol 1e-5), and so do a training step's loss and gradients on a short bucketed batch. (RoBERTa's
    first-token head: test_finetune.py's test_classification_ignores_padding.)"""
    family, task_name, style, check_gradients = CASES[case]
    fields = dict(TINY, hidden_dropout=0.0, attention_dropout=0.0) if family in ("bert", "roberta") else dict(TINY)
    if family == "gpt2":
        fields.update(dropout=0.0, attention_dropout=0.0, max_position_embeddings=64)
    elif family == "xlnet":
        fields.update(dropout=0.0)
    model_config = get_model_config(family, None, **fields)
    task = get_task(task_name)
    labels = ("a", "b", "c")
    spec = TaskSpec(task=task_name, format="", labels=labels, pair=False, style=style, max_len=MAX_LEN)
    model = task.model(spec, model_config)
    features = synthetic_features(40, np.random.default_rng(3), task=task_name, style=style)
    init = {k: features[k][:2] for k in ("inputs", "segment_ids", "positions", "token_types")}
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), **init)["params"])

    device_keys = task.device_keys(spec)
    keys = device_keys + ("example_index",)

    @jax.jit
    def forward(params, batch):
        """(logits, the task's loss of each row on its own)."""
        logits = apply_model(model, params, batch, None)["logits"]
        one_row = lambda x, b: task.loss(spec, {"logits": x[None]}, jax.tree.map(lambda v: v[None], b))[0]  # noqa
        return logits, jax.vmap(one_row)(logits, batch)

    # Full rows in batches of 8 too (the program of the max_len bucket: no extra compile).
    chunks = [jax.device_get(forward(params, {k: features[k][i:i + 8] for k in device_keys})) for i in range(0, 40, 8)]
    full, full_losses = (np.concatenate([c[j] for c in chunks]) for j in range(2))
    batches = EpochBatches(features, 8, keys, seed=0, buckets=(8, 16, MAX_LEN),
                           bucket_keys=task.length_bucket_keys(spec))
    lengths, covered, short_batch = set(), [], None
    for _ in range(batches.steps_per_epoch):
        batch = next(batches)
        if short_batch is None and batch["inputs"].shape[1] < MAX_LEN:
            short_batch = batch
        rows = batch["example_index"]
        real = rows >= 0
        length = batch["inputs"].shape[1]
        lengths.add(length)
        logits, losses = jax.device_get(forward(params, {k: batch[k] for k in device_keys}))
        logits, expected = logits[real], full[rows[real]]
        if task_name == "token_classification":  # the real tokens' logits (a padding position's are never read)
            assert (features["segment_ids"][rows[real], length:] == 0).all()
            tokens = batch["segment_ids"][real] > 0
            logits, expected = logits[tokens], expected[:, :length][tokens]
        np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)
        np.testing.assert_allclose(losses[real], full_losses[rows[real]], atol=1e-5, rtol=0)
        covered += rows[real].tolist()
    assert sorted(covered) == list(range(40)) and lengths == {8, 16, MAX_LEN}

    if not check_gradients:
        return
    # One training step's loss and gradients: a short bucketed batch vs the same rows at full length.
    loss_and_grad = jax.jit(jax.value_and_grad(task.loss_fn(spec, model), has_aux=True))
    short = {k: short_batch[k] for k in device_keys}
    rows = short_batch["example_index"]
    padded = {k: features[k][np.maximum(rows, 0)] for k in device_keys}
    if "example_weights" in padded:
        padded["example_weights"] = short_batch["example_weights"]
    if "label_weights" in padded:
        padded["label_weights"] = padded["label_weights"] * (rows >= 0)[:, None]
    (loss_short, _), grad_short = loss_and_grad(params, short, None)
    (loss_full, _), grad_full = loss_and_grad(params, padded, None)
    np.testing.assert_allclose(loss_short, loss_full, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), grad_short, grad_full)
