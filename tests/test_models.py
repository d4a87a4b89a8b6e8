"""Models: parameter counts, shapes, masks, packing, scan/remat equivalence, dtypes, bad input."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers import stack_layers, unstack_layers
from jaxlm.models import build_model, count_params, get_model_config

TINY_BERT = dict(vocab_size=211, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                 max_position_embeddings=64, hidden_dropout=0.0, attention_dropout=0.0)
TINY_GPT = dict(vocab_size=199, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                max_position_embeddings=64, dropout=0.0, attention_dropout=0.0)


def init(config, batch=2, length=16):
    model = build_model(config)
    ids = jnp.ones((batch, length), jnp.int32)
    params = nn.unbox(model.init(jax.random.key(0), ids)["params"])
    return model, params


def random_ids(vocab, shape, seed=0, low=5):
    return jnp.asarray(np.random.default_rng(seed).integers(low, vocab, shape), jnp.int32)


# Published parameter counts, as Hugging Face's implementations of the released checkpoints count them.
@pytest.mark.parametrize("family,size,expected", [
    ("bert", "base", 110_106_428),   # BertForPreTraining; the encoder alone (BertModel) is 109,482,240
    ("bert", "large", 336_226_108),  # BertModel alone: 335,141,888
    ("roberta", "base", 124_697_433),
    ("roberta", "large", 355_412_057),
    ("gpt2", "small", 124_439_808),
    ("gpt2", "medium", 354_823_168),
    ("gpt2", "large", 774_030_080),
    ("gpt2", "xl", 1_557_611_200),
])
def test_parameter_counts_match_published_models(family, size, expected):
    model = build_model(get_model_config(family, size))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
    assert count_params(nn.unbox(abstract["params"])) == expected


def test_bert_encoder_alone_is_110m():
    abstract = jax.eval_shape(lambda: build_model(get_model_config("bert", "base")).init(
        jax.random.key(0), jnp.ones((1, 8), jnp.int32)))
    assert count_params(nn.unbox(abstract["params"]["bert"])) == 109_482_240


def test_shapes_and_logical_axes():
    config = get_model_config("bert", **TINY_BERT)
    model = build_model(config)
    boxed = model.init(jax.random.key(0), jnp.ones((2, 16), jnp.int32))["params"]
    spec = nn.get_partition_spec(boxed)
    assert tuple(spec["bert"]["word_embeddings"]["embedding"]) == ("vocab", "embed")
    assert tuple(spec["bert"]["encoder"]["layers_0"]["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(spec["bert"]["encoder"]["layers_0"]["mlp"]["wi"]["kernel"]) == ("embed", "mlp")
    params = nn.unbox(boxed)
    ids = random_ids(config.vocab_size, (2, 16))
    out = model.apply({"params": params}, ids)
    assert out["mlm_logits"].shape == (2, 16, 211) and out["nsp_logits"].shape == (2, 2)
    positions = jnp.array([[1, 3, 5], [0, 2, 4]])
    out = model.apply({"params": params}, ids, masked_positions=positions)
    assert out["mlm_logits"].shape == (2, 3, 211)
    full = model.apply({"params": params}, ids)["mlm_logits"]
    np.testing.assert_allclose(out["mlm_logits"][0, 1], full[0, 3], atol=1e-5)


def test_scanned_model_has_stacked_layers_axis():
    config = get_model_config("gpt2", **TINY_GPT, scan_layers=True)
    boxed = build_model(config).init(jax.random.key(0), jnp.ones((1, 8), jnp.int32))["params"]
    kernel = boxed["decoder"]["layers"]["attention"]["query"]["kernel"]
    assert kernel.value.shape == (2, 32, 4, 8)
    assert tuple(nn.get_partition_spec(boxed)["decoder"]["layers"]["attention"]["query"]["kernel"]) == (
        "layers", "embed", "heads", "kv")


def test_causal_mask_changing_token_t_changes_no_earlier_logit():
    config = get_model_config("gpt2", **TINY_GPT)
    model, params = init(config)
    ids = random_ids(config.vocab_size, (1, 12))
    logits = model.apply({"params": params}, ids)
    t = 7
    changed = model.apply({"params": params}, ids.at[0, t].set((ids[0, t] + 1) % config.vocab_size))
    np.testing.assert_array_equal(np.asarray(logits[0, :t]), np.asarray(changed[0, :t]))
    assert np.abs(np.asarray(logits[0, t:] - changed[0, t:])).max() > 1e-4


def test_bert_padding_does_not_change_real_tokens():
    config = get_model_config("bert", **TINY_BERT)
    model, params = init(config)
    ids = random_ids(config.vocab_size, (1, 10))
    short = model.apply({"params": params}, ids)["mlm_logits"]
    padded_ids = jnp.concatenate([ids, jnp.zeros((1, 6), jnp.int32)], axis=1)
    padded = model.apply({"params": params}, padded_ids)["mlm_logits"]
    np.testing.assert_allclose(short, padded[:, :10], atol=1e-5)


@pytest.mark.parametrize("family,tiny", [("gpt2", TINY_GPT), ("bert", TINY_BERT)])
def test_packed_row_equals_each_document_alone(family, tiny):
    config = get_model_config(family, **tiny)
    model, params = init(config)
    doc_a, doc_b = random_ids(config.vocab_size, (1, 5), 1), random_ids(config.vocab_size, (1, 7), 2)
    packed = jnp.concatenate([doc_a, doc_b, jnp.zeros((1, 4), jnp.int32)], axis=1)
    segment_ids = jnp.array([[1] * 5 + [2] * 7 + [0] * 4])
    positions = jnp.array([list(range(5)) + list(range(7)) + [0] * 4])

    def logits(ids, **kw):
        out = model.apply({"params": params}, ids, **kw)
        return out if family == "gpt2" else out["mlm_logits"]

    packed_logits = logits(packed, segment_ids=segment_ids, positions=positions)
    np.testing.assert_allclose(packed_logits[:, :5], logits(doc_a), atol=1e-5)
    np.testing.assert_allclose(packed_logits[:, 5:12], logits(doc_b), atol=1e-5)


def _loss_and_grads(model, params, ids):
    def loss(p):
        out = model.apply({"params": p}, ids)
        logits = out if isinstance(out, jax.Array) else out["mlm_logits"]
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, ids[..., None], -1)[..., 0])
    return jax.value_and_grad(loss)(params)


@pytest.mark.parametrize("family,tiny", [("gpt2", TINY_GPT), ("bert", TINY_BERT)])
@pytest.mark.parametrize("scan,remat", [(True, "none"), (False, "full"), (True, "dots_saveable"), (True, "full")])
def test_scan_and_remat_match_plain_model(family, tiny, scan, remat):
    plain_config = get_model_config(family, **tiny)
    plain, params = init(plain_config)
    other = build_model(get_model_config(family, **tiny, scan_layers=scan, remat_policy=remat))
    other_params = stack_layers(params, 2) if scan else params
    ids = random_ids(plain_config.vocab_size, (2, 16))
    loss, grads = _loss_and_grads(plain, params, ids)
    other_loss, other_grads = _loss_and_grads(other, other_params, ids)
    np.testing.assert_allclose(loss, other_loss, rtol=1e-6, atol=1e-6)
    if scan:
        other_grads = unstack_layers(other_grads, 2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, other_grads)


def test_stack_unstack_round_trip_matches_scanned_init_structure():
    config = get_model_config("bert", **TINY_BERT)
    _, params = init(config)
    _, scanned = init(get_model_config("bert", **TINY_BERT, scan_layers=True))
    stacked = stack_layers(params, 2)
    assert jax.tree.structure(stacked) == jax.tree.structure(scanned)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), unstack_layers(stacked, 2), params)


@pytest.mark.parametrize("family,tiny", [("gpt2", TINY_GPT), ("bert", TINY_BERT)])
def test_bfloat16_compute_stays_close_to_float32(family, tiny):
    config = get_model_config(family, **tiny)
    model, params = init(config)
    bf16 = build_model(get_model_config(family, **tiny, dtype="bfloat16"))
    ids = random_ids(config.vocab_size, (2, 16))
    out32, out16 = model.apply({"params": params}, ids), bf16.apply({"params": params}, ids)
    if family == "bert":
        out32, out16 = out32["mlm_logits"], out16["mlm_logits"]
    assert out16.dtype == jnp.bfloat16
    # Stated tolerance: bf16 keeps ~8 bits of mantissa; logits of a random tiny model are O(1).
    np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=5e-2)
    assert np.argmax(out16, -1).tolist() != [] and np.mean(np.argmax(out16, -1) == np.argmax(out32, -1)) > 0.9


def test_dropout_uses_explicit_rngs():
    config = get_model_config("bert", **{**TINY_BERT, "hidden_dropout": 0.5})
    model, params = init(config)
    ids = random_ids(config.vocab_size, (1, 8))
    run = lambda seed: model.apply({"params": params}, ids, deterministic=False,  # noqa: E731
                                   rngs={"dropout": jax.random.key(seed)})["mlm_logits"]
    np.testing.assert_array_equal(run(1), run(1))
    assert np.abs(np.asarray(run(1) - run(2))).max() > 1e-3


def test_unknown_size_is_an_error_listing_the_sizes():
    with pytest.raises(ValueError, match="unknown bert size 'huge'.*tiny"):
        get_model_config("bert", "huge")
    with pytest.raises(ValueError, match="unknown model family"):
        get_model_config("bart", "base")
    with pytest.raises(ValueError, match="hidden_sise"):
        get_model_config("bert", "tiny", hidden_sise=3)


def test_sequence_longer_than_positions_is_an_error():
    config = get_model_config("gpt2", **TINY_GPT)
    model, params = init(config)
    with pytest.raises(ValueError, match="sequence length 65.*max_position_embeddings is 64"):
        model.apply({"params": params}, jnp.ones((1, 65), jnp.int32))
    with pytest.raises(ValueError, match="max_position_embeddings"):  # also caught under jit (static shapes)
        jax.jit(lambda p, x: model.apply({"params": p}, x))(params, jnp.ones((1, 65), jnp.int32))


def test_token_id_out_of_range_is_an_error():
    config = get_model_config("bert", **TINY_BERT)
    model, params = init(config)
    ids = np.ones((2, 8), np.int32)
    ids[1, 3] = 211
    with pytest.raises(ValueError, match=r"token id 211 at index \(1, 3\).*\[0, 211\)"):
        model.apply({"params": params}, jnp.asarray(ids))


def test_kv_cache_decoding_equals_full_recomputation():
    config = get_model_config("gpt2", **TINY_GPT)
    model, params = init(config)
    ids = random_ids(config.vocab_size, (2, 10))
    full = model.apply({"params": params}, ids)
    cache = model.init(jax.random.key(0), jnp.ones((2, 10), jnp.int32), decode=True)["cache"]
    # prefill 4 tokens at once, then one token per step
    out, mutated = model.apply({"params": params, "cache": cache}, ids[:, :4],
                               positions=jnp.broadcast_to(jnp.arange(4), (2, 4)), decode=True, mutable=["cache"])
    steps = [out]
    cache = mutated["cache"]
    for t in range(4, 10):
        out, mutated = model.apply({"params": params, "cache": cache}, ids[:, t:t + 1],
                                   positions=jnp.full((2, 1), t), decode=True, mutable=["cache"])
        cache = mutated["cache"]
        steps.append(out)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)
