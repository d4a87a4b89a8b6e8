"""T5 span corruption: T5's lengths, noise statistics, sentinels, determinism, exact reconstruction, and the
grain pipeline (batch format, concat-then-split of the whole stream, exact resume, eval padding)."""
import json

import numpy as np
import pytest

from jaxlm.data import train_tokenizer
from jaxlm.data.corpus import pydoc_documents
from jaxlm.objectives.span_corruption import (
    SpanCorruption,
    compute_input_and_target_lengths,
    noise_span_counts,
    random_spans_noise_mask,
    span_corruption_example,
    uncorrupt,
)

SENTINELS = tuple(range(7, 107))  # jaxlm's layout: <extra_id_0> is id 7
EOS = 3


def t5_random_spans_helper(inputs_length, noise_density, mean_noise_span_length):
    """t5.data.preprocessors.random_spans_helper (extra_tokens_per_span 1), transcribed as the reference."""
    def lengths(tokens_length):
        num_noise_tokens = int(round(tokens_length * noise_density))
        num_nonnoise_tokens = tokens_length - num_noise_tokens
        num_noise_spans = int(round(num_noise_tokens / mean_noise_span_length))
        return num_nonnoise_tokens + num_noise_spans + 1, num_noise_tokens + num_noise_spans + 1

    tokens_length = inputs_length - 1
    while lengths(tokens_length + 1)[0] <= inputs_length:
        tokens_length += 1
    inputs_length, targets_length = lengths(tokens_length)
    if noise_density == 0.5 and targets_length > inputs_length:
        tokens_length -= 1
        targets_length -= 1
    return tokens_length, targets_length


def test_lengths_are_t5s_and_a_full_chunk_fills_the_row_exactly():
    assert compute_input_and_target_lengths(512, 0.15, 3.0) == (568, 114)  # T5's C4 span corruption rows
    for density, span in ((0.15, 3.0), (0.5, 3.0), (0.15, 8.0), (0.3, 2.0)):
        for inputs_length in range(10, 1100, 7):
            tokens_length, targets_length = compute_input_and_target_lengths(inputs_length, density, span)
            reference = t5_random_spans_helper(inputs_length, density, span)
            if round(round(reference[0] * density) / span) >= 1:  # T5's formula counts no span below that
                assert (tokens_length, targets_length) == reference
            noise, spans = noise_span_counts(tokens_length, density, span)
            full = (tokens_length - noise + spans + 1, noise + spans + 1)
            if density == 0.5:  # T5 gives up a token there to keep targets <= inputs: nearly full
                assert inputs_length - 1 <= full[0] <= inputs_length and targets_length - 1 <= full[1] <= targets_length
            else:  # the rows are exactly full
                assert full == (inputs_length, targets_length)
            shorter = [noise_span_counts(n, density, span) for n in range(1, tokens_length)]
            assert all(n - k + s + 1 <= inputs_length and k + s + 1 <= targets_length  # the last, short chunk fits
                       for n, (k, s) in enumerate(shorter, 1))


def _spans(mask):
    """Lengths of the runs of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


@pytest.mark.parametrize("length,density,mean_span", [(568, 0.15, 3.0), (141, 0.15, 3.0), (300, 0.5, 8.0)])
def test_noise_mask_density_and_span_statistics(length, density, mean_span):
    num_noise, num_spans = round(length * density), round(round(length * density) / mean_span)
    rng = np.random.default_rng(0)
    masks = np.stack([random_spans_noise_mask(length, rng, density, mean_span) for _ in range(400)])
    span_lengths = []
    for mask in masks:
        assert mask.sum() == num_noise and not mask[0] and mask[-1]  # starts kept, ends dropped
        spans = _spans(mask)
        assert len(spans) == num_spans and spans.min() >= 1
        span_lengths.extend(spans)
    assert np.mean(span_lengths) == pytest.approx(num_noise / num_spans)
    assert abs(np.mean(span_lengths) - mean_span) < 0.25
    # the spans' lengths vary (a uniform random segmentation), and the noise lands everywhere
    assert np.std(span_lengths) > 0.5 * mean_span ** 0.5
    rate_by_position = masks[:, 1:-1].mean(axis=0)
    assert abs(rate_by_position[: length // 2].mean() - rate_by_position[length // 2:].mean()) < 0.05


def test_rows_have_sentinels_in_order_lengths_and_reconstruct_the_tokens():
    tokens = np.random.default_rng(1).integers(200, 1000, 568)
    row = span_corruption_example(tokens, np.random.default_rng(2), sentinel_ids=SENTINELS, eos_id=EOS,
                                  inputs_length=512, targets_length=114)
    assert {k: (v.shape, v.dtype.name) for k, v in row.items()} == {
        "inputs": ((512,), "int32"), "segment_ids": ((512,), "int32"), "targets": ((114,), "int32"),
        "decoder_inputs": ((114,), "int32"), "weights": ((114,), "float32")}
    # a full chunk fills both rows exactly, EOS last
    assert row["segment_ids"].sum() == 512 and row["weights"].sum() == 114
    assert row["inputs"][-1] == EOS and row["targets"][-1] == EOS
    in_sentinels = [t for t in row["inputs"] if t in SENTINELS]
    out_sentinels = [t for t in row["targets"] if t in SENTINELS]
    assert in_sentinels == out_sentinels == list(SENTINELS[:28])  # <extra_id_0>, <extra_id_1>, ... once each
    assert row["targets"][0] == SENTINELS[0]  # the targets open with the first span's sentinel
    np.testing.assert_array_equal(row["decoder_inputs"], np.concatenate([[0], row["targets"][:-1]]))
    np.testing.assert_array_equal(uncorrupt(row["inputs"], row["targets"], SENTINELS, EOS), tokens)
    # a short chunk (the end of the data) is padded, and still reconstructs
    short = span_corruption_example(tokens[:40], np.random.default_rng(3), sentinel_ids=SENTINELS, eos_id=EOS,
                                    inputs_length=512, targets_length=114)
    n_in, n_out = int(short["segment_ids"].sum()), int(short["weights"].sum())
    assert (short["inputs"][n_in:] == 0).all() and (short["targets"][n_out:] == 0).all() and n_out == 6 + 2 + 1
    np.testing.assert_array_equal(uncorrupt(short["inputs"], short["targets"], SENTINELS, EOS), tokens[:40])


def test_corruption_is_deterministic_given_the_rng_and_needs_enough_sentinels():
    tokens = np.arange(200, 341)
    kw = dict(sentinel_ids=SENTINELS, eos_id=EOS, inputs_length=128, targets_length=29)
    a, b = (span_corruption_example(tokens, np.random.default_rng(5), **kw) for _ in range(2))
    c = span_corruption_example(tokens, np.random.default_rng(6), **kw)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["inputs"], c["inputs"])
    with pytest.raises(ValueError, match="needs 7 sentinels but the tokenizer has 3.*num_sentinels"):
        span_corruption_example(tokens, np.random.default_rng(5), **{**kw, "sentinel_ids": SENTINELS[:3]})
    with pytest.raises(ValueError, match="more than inputs_length=64"):
        span_corruption_example(tokens, np.random.default_rng(5), **{**kw, "inputs_length": 64})


# ----------------------------------------------------------------------------- pipeline
TEXTS = [text for _, text in pydoc_documents()][:60]
DOCS = [text[:300] for text in TEXTS[:8]]
SEQ_LEN, BATCH = 32, 4


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(iter(TEXTS), tmp_path_factory.mktemp("tok") / "sp", vocab_size=300, num_sentinels=20)


def test_pipeline_batches_cover_the_whole_stream_and_follow_the_spec(tok):
    chunk_length, targets_length = compute_input_and_target_lengths(SEQ_LEN)
    objective = SpanCorruption(seq_len=SEQ_LEN)
    batches = list(objective.eval_iterator(DOCS, tok, batch_size=BATCH))
    spec = objective.batch_spec(BATCH)
    assert spec["targets"][0] == (BATCH, targets_length) and spec["inputs"][0] == (BATCH, SEQ_LEN)
    for batch in batches:
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
    rows = [{k: b[k][i] for k in b} for b in batches for i in range(BATCH) if b["segment_ids"][i].any()]
    # every row but the stream's last is a full chunk: exactly SEQ_LEN inputs and targets_length targets
    assert all(r["segment_ids"].sum() == SEQ_LEN and r["weights"].sum() == targets_length for r in rows[:-1])
    # concat-then-split with no separator, as T5: the rows, uncorrupted, are the documents' tokens in order
    stream = np.concatenate([uncorrupt(r["inputs"], r["targets"], tok.sentinel_ids, tok.eos_id) for r in rows])
    expected = np.concatenate([tok.encode(d) for d in DOCS])
    np.testing.assert_array_equal(stream, expected)
    assert len(rows) == -(-len(expected) // chunk_length)
    again = list(objective.eval_iterator(DOCS, tok, batch_size=BATCH))
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(batches, again) for k in a)  # fixed noise in eval


def test_pipeline_resumes_exactly(tok):
    make = lambda seed=0: SpanCorruption(seq_len=SEQ_LEN).iterator(DOCS, tok, batch_size=BATCH, seed=seed)  # noqa: E731
    it = make()
    for _ in range(7):  # a few epochs of the tiny corpus in
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(3)]
    resumed = make()
    resumed.set_state(state)
    for a, b in zip([next(resumed) for _ in range(3)], expected):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    other = make(seed=1)
    other.set_state(state)
    assert not np.array_equal(next(other)["inputs"], expected[0]["inputs"])


def test_pipeline_needs_a_tokenizer_with_sentinels(tmp_path):
    plain = train_tokenizer(iter(TEXTS), tmp_path / "plain", vocab_size=300)
    with pytest.raises(ValueError, match="0 sentinel tokens.*num_sentinels=100"):
        SpanCorruption(seq_len=SEQ_LEN).iterator(DOCS, plain, batch_size=BATCH)
