"""XLNet: the Flax model against transformers' PyTorch XLNetModel / XLNetLMHeadModel (float32, within 1e-4):
content stream with left padding and token types, two-stream permutation LM logits, memory across segments
(reuse_len), untie_r / clamp_len / bi_data; scan == unrolled, remat; exact round trips of the HF table;
parameter counts of the named sizes; named shape errors; bfloat16.

Tiny random HF models are built locally from config objects (torch.manual_seed); nothing is downloaded.
"""
import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="XLNet parity tests compare against transformers' PyTorch models")
transformers = pytest.importorskip("transformers", reason="XLNet parity tests need transformers")

from jaxlm.convert import hf_xlnet  # noqa: E402
from jaxlm.layers import stack_layers, unstack_layers  # noqa: E402
from jaxlm.layers.relative_attention import rel_gather, rel_shift, relative_positional_encoding, xlnet_masks  # noqa: E402
from jaxlm.models import get_model_config  # noqa: E402
from jaxlm.models.common import count_params  # noqa: E402
from jaxlm.models.xlnet import XLNET_SIZES, XLNetConfig, XLNetLMHeadModel  # noqa: E402

VOCAB, PAD = 120, 5
HF_TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_inner=48, dropout=0.0, mem_len=None)
TOL = 1e-4
# Tiny programs: XLA CPU's LLVM optimisation costs more than it saves (compiles in about half the time)
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def make_hf(seed=0, shared_biases=False, **overrides):
    """A random XLNetLMHeadModel; every weight perturbed (HF initialises with std 0.02, LayerNorms at 1/0).
    shared_biases: every layer gets layer 0's r_w / r_r / r_s biases (what jaxlm's untie_r=False computes)."""
    torch.manual_seed(seed)
    model = transformers.XLNetLMHeadModel(transformers.XLNetConfig(**{**HF_TINY, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if shared_biases:
            first = model.transformer.layer[0].rel_attn
            for layer in model.transformer.layer[1:]:
                for name in ("r_w_bias", "r_r_bias", "r_s_bias"):
                    getattr(layer.rel_attn, name).copy_(getattr(first, name))
    return model


def state_dict(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def jaxlm_of(hf_model, **overrides):
    config = XLNetConfig(**{**hf_xlnet.fields_from_hf(hf_model.config.to_dict()), **overrides})
    return config, hf_xlnet.to_jaxlm(state_dict(hf_model), config)


@functools.lru_cache(maxsize=None)
def _jitted_apply(config, deterministic):
    model = XLNetLMHeadModel(config)
    return jax.jit(lambda p, kw, rngs: model.apply({"params": p}, **kw, deterministic=deterministic, rngs=rngs),
                   compiler_options=FAST_COMPILE)


def forward(config, params, deterministic=True, rng=None, **arrays):
    """XLNetLMHeadModel.apply under jit (one compile per config, mode and shapes)."""
    rngs = None if rng is None else {"dropout": rng}
    out = _jitted_apply(config, deterministic)(
        params, {k: None if v is None else jnp.asarray(v) for k, v in arrays.items()}, rngs)
    return jax.tree.map(np.asarray, out)


def hf_forward(model, ids, attention_mask=None, token_types=None, perm_mask=None, target_mapping=None, mems=None,
               stack=False):
    """(output, [B,...] tensors) of HF; `mems` in jaxlm's [layers, B, M, D] is fed as HF's per-layer [M, B, D]."""
    t = lambda x: None if x is None else torch.tensor(np.asarray(x))  # noqa: E731
    hf_mems = None if mems is None else [t(m.transpose(1, 0, 2)) for m in np.asarray(mems)]
    with torch.no_grad():
        out = (model.transformer if stack else model)(
            t(ids), attention_mask=t(attention_mask), token_type_ids=t(token_types), perm_mask=t(perm_mask),
            target_mapping=t(target_mapping), mems=hf_mems)
    new_mems = None if out.mems is None else np.stack([m.numpy().transpose(1, 0, 2) for m in out.mems])
    return out, new_mems


def padded_batch(batch=4, length=8, seed=0):
    """Ids with rows 0 and 2 left-padded (as XLNet's tokenizer pads), rows 1 and 3 full; token types as the
    XLNet tokenizer writes them: A = 0, B = 1, CLS (last) = 2, padding = 3."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(PAD + 1, VOCAB, (batch, length))
    mask = np.ones((batch, length), np.int64)
    for row, pads in ((0, 3), (2, 1)):
        ids[row, :pads], mask[row, :pads] = PAD, 0
    types = np.zeros((batch, length), np.int64)
    types[:, length // 2:] = 1
    types[:, -1] = 2
    types[mask == 0] = 3
    return ids, mask, types


def permutation_inputs(mask, num_predict=3, seed=0):
    """A random factorisation order per row over its real tokens, the last `num_predict` of which are predicted:
    perm_mask[b, i, j] = 1 when j is a target not before i in the order (a target never sees itself);
    target_mapping one-hot rows [B, P, L]."""
    rng = np.random.default_rng(seed)
    batch, length = mask.shape
    perm = np.zeros((batch, length, length), np.float32)
    mapping = np.zeros((batch, num_predict, length), np.float32)
    for b in range(batch):
        real = np.flatnonzero(mask[b])
        order = rng.permutation(real)
        rank = np.full(length, -1)
        rank[order] = np.arange(len(order))
        targets = order[-num_predict:]
        for j in targets:
            perm[b, :, j] = (rank[j] >= rank).astype(np.float32)
        mapping[b, np.arange(num_predict), targets] = 1.0
    return perm, mapping


def assert_close(actual, expected, where="", tol=TOL):
    diff = float(np.abs(np.asarray(actual) - np.asarray(expected)).max())
    assert diff < tol, f"{where}: max abs diff {diff} >= {tol}"
    assert float(np.abs(np.asarray(expected)).max()) > 0.1, f"{where}: reference too small to mean anything"


# ---------------------------------------------------------------------------------------------------------
# Parity with transformers

@pytest.fixture(scope="module")
def hf_model():
    return make_hf()


@pytest.mark.parametrize("attention_impl", ["xla", "dot_product"])
def test_content_stream_with_left_padding_and_token_types(hf_model, attention_impl):
    config, params = jaxlm_of(hf_model, attention_impl=attention_impl)
    ids, mask, types = padded_batch()
    ref, _ = hf_forward(hf_model, ids, mask, types, stack=True)
    # segment_ids default: inputs != pad_token_id (5), which is `mask` here
    out = forward(config, params, inputs=ids, token_types=types)
    assert out["query_hidden"] is None and out["new_mems"] is None and out["hidden"].shape == (4, 8, 32)
    real = mask.astype(bool)
    assert_close(out["hidden"][real], ref.last_hidden_state.numpy()[real], "content stream, real positions")
    # the masks are HF's exactly, so the padding positions agree too
    assert_close(out["hidden"], ref.last_hidden_state.numpy(), "content stream, all positions")
    assert_close(out["logits"], hf_forward(hf_model, ids, mask, types)[0].logits.numpy(), "content-stream logits")


def test_two_stream_permutation_lm_logits(hf_model):
    config, params = jaxlm_of(hf_model)
    ids, mask, types = padded_batch(seed=1)
    perm, mapping = permutation_inputs(mask, num_predict=3, seed=1)
    mapping = np.concatenate([mapping, np.zeros((4, 1, 8), np.float32)], axis=1)  # a padding prediction row
    mapping[1, 3, 0] = 1.0  # ... a real one in row 1 (not a target already: positions must be distinct)
    ref, _ = hf_forward(hf_model, ids, mask, types, perm, mapping)
    out = forward(config, params, inputs=ids, segment_ids=mask, token_types=types, perm_mask=perm,
                  target_mapping=mapping)
    assert out["logits"].shape == (4, 4, VOCAB) and out["query_hidden"].shape == (4, 4, 32)
    assert_close(out["logits"], ref.logits.numpy(), "query-stream logits")
    np.testing.assert_array_equal(out["lm_hidden"], out["query_hidden"])
    # the content stream of the same call is HF's content stream (perm_mask applies to it too)
    hf_content = make_content_reference(hf_model, ids, mask, types, perm)
    assert_close(out["hidden"], hf_content, "content stream under perm_mask")


def make_content_reference(hf_model, ids, mask, types, perm):
    ref, _ = hf_forward(hf_model, ids, mask, types, perm, stack=True)
    return ref.last_hidden_state.numpy()


@pytest.mark.parametrize("mem_len,reuse_len", [(6, 3), (5, None)])
def test_memory_across_segments(mem_len, reuse_len):
    """Segment 1 alone, then segment 2 (padding, token types, two streams) reading segment 1's memory: logits and
    both memories equal HF's (time-major [M, B, D] per layer there)."""
    hf = make_hf(seed=2, mem_len=mem_len, reuse_len=reuse_len)
    config, params = jaxlm_of(hf)
    assert (config.mem_len, config.reuse_len) == (mem_len, reuse_len)
    ids1, _, types1 = padded_batch(length=5, seed=3)
    ids1[ids1 == PAD] = PAD + 1  # segment 1 unpadded
    types1[types1 == 3] = 0
    ref1, ref_mems1 = hf_forward(hf, ids1, token_types=types1)
    out1 = forward(config, params, inputs=ids1, token_types=types1)
    assert out1["new_mems"].shape == (2, 4, reuse_len or 5, 32)
    assert_close(out1["new_mems"], ref_mems1, "memory after segment 1")
    assert_close(out1["logits"], ref1.logits.numpy(), "segment 1 logits")

    ids2, mask2, types2 = padded_batch(length=6, seed=4)
    perm, mapping = permutation_inputs(mask2, num_predict=2, seed=4)
    ref2, ref_mems2 = hf_forward(hf, ids2, mask2, types2, perm, mapping, mems=ref_mems1)
    out2 = forward(config, params, inputs=ids2, token_types=types2, perm_mask=perm, target_mapping=mapping,
                   mems=out1["new_mems"])
    assert out2["new_mems"].shape == (2, 4, min(mem_len, (reuse_len or 5) + (reuse_len or 6)), 32)
    assert_close(out2["new_mems"], ref_mems2, "memory after segment 2")
    assert_close(out2["logits"], ref2.logits.numpy(), "segment 2 logits (with memory)")


@pytest.mark.parametrize("variant", [
    dict(untie_r=False, clamp_len=2),
    dict(bi_data=True),
    dict(bi_data=True, clamp_len=3, mem_len=4),
], ids=["shared_biases+clamp_len", "bi_data", "bi_data+clamp_len+mems"])
def test_variants_match_transformers(variant):
    """untie_r=False (transformers always unties: its layers get equal biases), clamp_len, bi_data (HF's forward
    supports it: first half of the batch forward positions, second half backward), with memory."""
    untie_r = variant.get("untie_r", True)
    hf_fields = {k: v for k, v in variant.items() if k != "untie_r"}
    hf = make_hf(seed=5, shared_biases=not untie_r, **hf_fields)
    config, params = jaxlm_of(hf, untie_r=untie_r)
    if not untie_r:
        assert "r_w_bias" in params["xlnet"] and "r_w_bias" not in params["xlnet"]["encoder"]["layers_1"]["attention"]
    ids, mask, types = padded_batch(seed=6)
    perm, mapping = permutation_inputs(mask, seed=6)
    mems = None
    if config.mem_len:
        mems = np.random.default_rng(7).normal(size=(2, 4, 3, 32)).astype(np.float32)
    ref, ref_mems = hf_forward(hf, ids, mask, types, perm, mapping, mems=mems)
    out = forward(config, params, inputs=ids, token_types=types, perm_mask=perm, target_mapping=mapping, mems=mems)
    assert_close(out["logits"], ref.logits.numpy(), f"{variant} logits")
    if mems is not None:
        assert_close(out["new_mems"], ref_mems, f"{variant} memory")


# ---------------------------------------------------------------------------------------------------------
# Layouts, remat, dropout

def _loss_and_grads(config, params, arrays):
    model = XLNetLMHeadModel(config)

    def loss(p):
        out = model.apply({"params": p}, **arrays)
        return jnp.mean(jax.nn.log_softmax(out["logits"])[..., 7]) + 0.1 * jnp.mean(out["hidden"] ** 2), out
    (value, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True), compiler_options=FAST_COMPILE)(params)
    return value, out, grads


def test_scanned_rematerialised_stack_equals_unrolled():
    """scan_layers + remat 'full' on the stacked weights (memory scanned along): same outputs and gradients."""
    hf = make_hf(seed=8, mem_len=4)
    config, params = jaxlm_of(hf)
    ids, mask, types = padded_batch(seed=9)
    perm, mapping = permutation_inputs(mask, seed=9)
    mems = np.random.default_rng(9).normal(size=(2, 4, 3, 32)).astype(np.float32)
    arrays = dict(inputs=jnp.asarray(ids), token_types=jnp.asarray(types), perm_mask=jnp.asarray(perm),
                  target_mapping=jnp.asarray(mapping), mems=jnp.asarray(mems))
    loss, out, grads = _loss_and_grads(config, params, arrays)
    scanned = dataclasses.replace(config, scan_layers=True, remat_policy="full")
    stacked = stack_layers(params, config.num_layers)
    assert stacked["xlnet"]["encoder"]["layers"]["attention"]["query"]["kernel"].shape == (2, 32, 4, 8)
    other_loss, other_out, other_grads = _loss_and_grads(scanned, stacked, arrays)
    np.testing.assert_allclose(other_loss, loss, rtol=1e-6)
    for key in ("hidden", "query_hidden", "new_mems", "logits"):
        np.testing.assert_allclose(other_out[key], out[key], atol=1e-5, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), unstack_layers(other_grads, None), grads)
    # and the scanned model's own init has the stacked layout
    abstract = jax.eval_shape(lambda: XLNetLMHeadModel(scanned).init(jax.random.key(0), jnp.ones((2, 4), jnp.int32)))
    spec = nn.get_partition_spec(abstract["params"])
    assert tuple(spec["xlnet"]["encoder"]["layers"]["attention"]["query"]["kernel"]) == ("layers", "embed", "heads",
                                                                                        "kv")


def test_dropout_is_random_and_off_when_deterministic():
    hf = make_hf(seed=10, mem_len=4)
    config, params = jaxlm_of(hf, dropout=0.1, scan_layers=True)
    params = stack_layers(params, 2)
    ids, mask, types = padded_batch(seed=11)
    perm, mapping = permutation_inputs(mask, seed=11)
    arrays = dict(inputs=ids, token_types=types, perm_mask=perm, target_mapping=mapping)
    # rbg keys: XLA CPU compiles their random bits in half the time of threefry's
    a = forward(config, params, deterministic=False, rng=jax.random.key(1, impl="rbg"), **arrays)["logits"]
    b = forward(config, params, deterministic=False, rng=jax.random.key(2, impl="rbg"), **arrays)["logits"]
    assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-3
    ref, _ = hf_forward(hf, ids, mask, types, perm, mapping)
    assert_close(forward(config, params, **arrays)["logits"], ref.logits.numpy(), "deterministic, dropout=0.1")


def test_bfloat16_runs_and_is_close_to_float32(hf_model):
    config, params = jaxlm_of(hf_model, dtype="bfloat16")
    ids, mask, types = padded_batch(seed=12)
    perm, mapping = permutation_inputs(mask, seed=12)
    out = forward(config, params, inputs=ids, token_types=types, perm_mask=perm, target_mapping=mapping)
    assert out["logits"].dtype == jnp.bfloat16 and out["hidden"].dtype == jnp.bfloat16
    ref, _ = hf_forward(hf_model, ids, mask, types, perm, mapping)
    diff = np.abs(out["logits"].astype(np.float32) - ref.logits.numpy()).max()
    assert diff < 5e-2 * max(1.0, np.abs(ref.logits.numpy()).max()), diff


# ---------------------------------------------------------------------------------------------------------
# The Hugging Face table

@pytest.mark.parametrize("untie_r,scan_layers", [(True, False), (False, False), (True, True)])
def test_table_round_trip_is_exact(untie_r, scan_layers):
    hf = make_hf(seed=13, shared_biases=not untie_r)
    tensors = state_dict(hf)
    config, params = jaxlm_of(hf, untie_r=untie_r, scan_layers=scan_layers)
    assert ("layers" in params["xlnet"]["encoder"]) is scan_layers
    back = hf_xlnet.to_hf(params, config)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
        assert back[name].tobytes() == value.tobytes(), name
    rows = hf_xlnet.table(config)
    assert len(rows) == len(tensors) - len(hf_xlnet.TIED)
    assert {r.hf: r.jax[0] for r in rows}["transformer.layer.1.rel_attn.r_w_bias"] == (
        "xlnet/encoder/layers_1/attention/r_w_bias" if untie_r else "xlnet/r_w_bias")


def test_table_errors_name_the_tensors():
    hf = make_hf(seed=14)
    tensors = state_dict(hf)
    config = XLNetConfig(**hf_xlnet.fields_from_hf(hf.config.to_dict()))
    with pytest.raises(ValueError, match="transformer.layer.1.rel_attn.r_w_bias.*differs.*untie_r=True"):
        hf_xlnet.to_jaxlm(tensors, dataclasses.replace(config, untie_r=False))
    with pytest.raises(ValueError, match=r"missing tensors: \['transformer.mask_emb'\]"):
        hf_xlnet.to_jaxlm({k: v for k, v in tensors.items() if k != "transformer.mask_emb"}, config)
    with pytest.raises(ValueError, match="unexpected tensors.*transformer.extra"):
        hf_xlnet.to_jaxlm({**tensors, "transformer.extra": np.zeros(3)}, config)
    with pytest.raises(ValueError, match="lm_loss.weight.*differs"):
        hf_xlnet.to_jaxlm({**tensors, "lm_loss.weight": tensors["lm_loss.weight"] + 1}, config)
    # transformers >= 5 writes files without lm_loss.weight
    without = hf_xlnet.to_jaxlm({k: v for k, v in tensors.items() if k != "lm_loss.weight"}, config)
    np.testing.assert_array_equal(without["xlnet"]["word_embeddings"]["embedding"],
                                  tensors["transformer.word_embedding.weight"])


def test_config_json_round_trip():
    hf_dict = transformers.XLNetConfig(**{**HF_TINY, "mem_len": 7, "reuse_len": 3, "clamp_len": 4,
                                          "ff_activation": "relu", "bi_data": True}).to_dict()
    fields = hf_xlnet.fields_from_hf(hf_dict)
    assert fields["hidden_size"] == 32 and fields["head_dim"] == 8 and fields["ff_activation"] == "relu"
    config = XLNetConfig(**fields)
    written = hf_xlnet.hf_config_from_fields(config, base=hf_dict)
    assert hf_xlnet.fields_from_hf(written) == fields
    assert written["architectures"] == ["XLNetLMHeadModel"] and written["summary_type"] == hf_dict["summary_type"]
    reloaded = transformers.XLNetConfig(**{k: v for k, v in written.items() if k != "model_type"})
    assert (reloaded.d_model, reloaded.n_layer, reloaded.mem_len, reloaded.bi_data) == (32, 2, 7, True)
    base = hf_xlnet.hf_config_from_fields(get_model_config("xlnet", "base"))
    assert hf_xlnet.fields_from_hf(base)["num_layers"] == 12
    with pytest.raises(ValueError, match="attn_type='uni'"):
        hf_xlnet.fields_from_hf({**hf_dict, "attn_type": "uni"})
    with pytest.raises(ValueError, match="ff_activation='swiglu'"):
        hf_xlnet.fields_from_hf({**hf_dict, "ff_activation": "swiglu"})
    with pytest.raises(ValueError, match="attn_type='uni' is not supported"):
        XLNetConfig(attn_type="uni")


# ---------------------------------------------------------------------------------------------------------
# Sizes, errors, building blocks

@pytest.mark.parametrize("size", list(XLNET_SIZES))
def test_parameter_counts_equal_transformers(size):
    config = get_model_config("xlnet", size)
    abstract = jax.eval_shape(lambda: XLNetLMHeadModel(config).init(jax.random.key(0), jnp.ones((2, 4), jnp.int32)))
    ours = count_params(nn.unbox(abstract["params"]))
    s = XLNET_SIZES[size]
    with torch.device("meta"):  # no allocation
        hf = transformers.XLNetLMHeadModel(transformers.XLNetConfig(
            vocab_size=32000, d_model=s["hidden_size"], n_layer=s["num_layers"], n_head=s["num_heads"],
            d_inner=s["intermediate_size"]))
    assert ours == hf.num_parameters() == {"base": 116_750_336, "large": 360_300_800}[size]


def test_bad_inputs_are_named_errors():
    config = XLNetConfig(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48)
    model = XLNetLMHeadModel(config)
    ids = jnp.full((2, 6), 7, jnp.int32)

    def init(inputs=ids, model=model, **kw):
        return jax.eval_shape(lambda: model.init(jax.random.key(0), inputs, **kw))

    with pytest.raises(ValueError, match=r"perm_mask has shape \(2, 6, 5\).*\(2, 6, 6\)"):
        init(perm_mask=jnp.zeros((2, 6, 5)))
    with pytest.raises(ValueError, match=r"target_mapping has shape \(2, 3, 5\).*\(2, P, 6\)"):
        init(target_mapping=jnp.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"mems has shape \(2, 3, 4, 32\).*\(2, 2, 4, 32\)"):
        init(mems=jnp.zeros((2, 3, 4, 32)))
    with pytest.raises(ValueError, match=r"mems has shape \(2, 2, 4, 16\).*\(2, 2, 4, 32\)"):
        init(mems=jnp.zeros((2, 2, 4, 16)))
    with pytest.raises(ValueError, match=r"mems has shape \(3, 2, 4, 32\).*\(2, 2, 4, 32\)"):
        init(mems=jnp.zeros((3, 2, 4, 32)))
    with pytest.raises(ValueError, match=r"token_types has shape \(2, 5\).*\(2, 6\)"):
        init(token_types=jnp.zeros((2, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"bi_data.*inputs of shape \(3, 6\): batch size 3"):
        init(jnp.ones((3, 6), jnp.int32), XLNetLMHeadModel(dataclasses.replace(config, bi_data=True)))
    with pytest.raises(ValueError, match=r"inputs contains token id 120"):
        model.init(jax.random.key(0), ids.at[0, 0].set(VOCAB))


def test_rel_shift_equals_the_exact_gather():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 5, 12)), jnp.float32)  # L = 5, M = 2, K = 7
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    np.testing.assert_array_equal(rel_shift(x, 7), rel_gather(x, positions, 5, 7))
    # column j of row i holds distance (M + i) - j of the encoding's distances K, K-1, ..., -L+1
    distances = jnp.arange(7, -5, -1)[None, None, None, :].astype(jnp.float32) + jnp.zeros((1, 1, 5, 1))
    shifted = rel_shift(distances, 7)[0, 0]
    np.testing.assert_array_equal(shifted, 2 + np.arange(5)[:, None] - np.arange(7)[None, :])
    bi = relative_positional_encoding(3, 5, 8, bi_data=True, batch_size=4, clamp_len=2)
    assert bi.shape == (4, 8, 8)
    np.testing.assert_array_equal(bi[0], bi[1])
    np.testing.assert_allclose(bi[2, :, :4], -bi[0, :, :4], atol=1e-7)  # backward: negated distances (sin odd,
    np.testing.assert_allclose(bi[2, :, 4:], bi[0, :, 4:], atol=1e-7)  # cos even)


def test_masks_padding_packing_memory_and_own_token():
    segments = jnp.array([[0, 1, 1, 2, 2]])  # left padding, then two packed documents
    perm = jnp.zeros((1, 5, 5)).at[0, :, 4].set(1)  # nobody sees the last token
    mask_h, mask_g = xlnet_masks(segments, perm, memory_length=2)
    h, g = np.asarray(mask_h[0, 0]), np.asarray(mask_g[0, 0])
    assert h.shape == (5, 7) and h[:, :2].all()  # memory always visible
    assert not h[1:, 2].any() and h[0, 2]  # the padding key is hidden (a padding query sees itself)
    np.testing.assert_array_equal(h[1, 2:], [0, 1, 1, 0, 0])  # document 1 only
    np.testing.assert_array_equal(h[4, 2:], [0, 0, 0, 1, 1])  # its own token despite perm_mask
    np.testing.assert_array_equal(g[4, 2:], [0, 0, 0, 1, 0])  # the query stream does not see it


# ---------------------------------------------------------------------------------------------------------
# The converter: a Hugging Face XLNet directory in, a jaxlm workdir, and back out

def test_cli_round_trip_of_an_hf_directory_is_exact_and_imports_with_parity(hf_model, tmp_path):
    from safetensors.numpy import load_file

    from jaxlm.convert import load_hf
    from jaxlm.convert.__main__ import main as convert_main

    model_dir, workdir, out = tmp_path / "hf", tmp_path / "run", tmp_path / "hf_out"
    hf_model.save_pretrained(model_dir)
    config, params, _ = load_hf(str(model_dir))
    assert config.family == "xlnet" and config.hidden_size == 32 and config.num_layers == 2
    ids, mask, types = padded_batch()
    ref, _ = hf_forward(hf_model, ids, mask, types)
    got = forward(config, params, inputs=ids, token_types=types)
    assert_close(got["logits"], ref.logits.numpy(), "load_hf logits")

    assert convert_main(["from-hf", "--model_dir", str(model_dir), "--workdir", str(workdir)]) == 0
    assert convert_main(["to-hf", "--workdir", str(workdir), "--out", str(out)]) == 0
    original, exported = load_file(str(model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(exported[name], tensor, err_msg=name)
    reloaded = transformers.XLNetLMHeadModel.from_pretrained(str(out)).eval()
    again, _ = hf_forward(reloaded, ids, mask, types)
    np.testing.assert_array_equal(again.logits.numpy(), ref.logits.numpy())
