"""T5: parameter counts, shapes, masks, packing, relative buckets, scan/remat equivalence, cached decoding,
and the pretraining CLI end to end on span corruption."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers import relative_position_bucket, stack_layers, unstack_layers
from jaxlm.models import build_model, count_params, get_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=20, dropout_rate=0.0)
VARIANTS = ["t5", "t5_v1_1"]


def tiny(family, **kw):
    return get_model_config(family, **{**TINY, **kw})


def random_variables(model, *args, seed=0, **kwargs):
    """Random params (and a zero cache in decode mode) from the abstract init: no per-shape compilation of
    jax's initialisers, which dominates a tiny model's test time on CPU."""
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype), nn.unbox(abstract["params"]))
    if "cache" not in abstract:
        return params
    return params, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract["cache"])


def init(config, enc_len=12, dec_len=7):
    model = build_model(config)
    return model, random_variables(model, jnp.ones((2, enc_len), jnp.int32), jnp.ones((2, dec_len), jnp.int32))


def jitted(model):
    """model.apply under jit (array arguments only): one compile per shape instead of one per op and shape."""
    return jax.jit(lambda params, *args, **kwargs: model.apply({"params": params}, *args, **kwargs))


def random_ids(vocab, shape, seed=0, low=2):
    return jnp.asarray(np.random.default_rng(seed).integers(low, vocab, shape), jnp.int32)


# Hugging Face's T5ForConditionalGeneration.num_parameters() on the released configs (google-t5/t5-*; v1.1 with
# its separate lm_head counted, as the released google/t5-v1_1-* checkpoints hold one).
@pytest.mark.parametrize("family,size,expected", [
    ("t5", "small", 60_506_624), ("t5", "base", 222_903_552), ("t5", "large", 737_668_096),
    ("t5_v1_1", "small", 76_961_152), ("t5_v1_1", "base", 247_577_856), ("t5_v1_1", "large", 783_150_080),
])
def test_parameter_counts_match_published_models(family, size, expected):
    model = build_model(get_model_config(family, size))
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                                 jnp.ones((1, 4), jnp.int32)))
    assert count_params(nn.unbox(abstract["params"])) == expected


@pytest.mark.parametrize("family", VARIANTS)
def test_shapes_names_and_logical_axes(family):
    config = tiny(family)
    model = build_model(config)
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((2, 12), jnp.int32),
                                              jnp.ones((2, 7), jnp.int32)))["params"]
    spec = nn.get_partition_spec(boxed)
    assert tuple(spec["encoder"]["layers_0"]["attention"]["query"]["kernel"]) == ("embed", "heads", "kv")
    assert tuple(spec["token_embeddings"]["embedding"]) == ("vocab", "embed")
    params = random_variables(model, jnp.ones((2, 12), jnp.int32), jnp.ones((2, 7), jnp.int32))
    assert sorted(params) == sorted(["token_embeddings", "encoder", "encoder_relative_bias", "encoder_norm",
                                     "decoder", "decoder_relative_bias", "decoder_norm"]
                                    + (["lm_head"] if family == "t5_v1_1" else []))
    assert sorted(params["decoder"]) == ["layers_0", "layers_1", "layers_2"]
    assert sorted(params["decoder"]["layers_0"]) == ["attention", "attention_norm", "cross_attention",
                                                     "cross_attention_norm", "mlp", "mlp_norm"]
    assert sorted(params["encoder"]["layers_0"]["mlp"]) == (["wi_0", "wi_1", "wo"] if family == "t5_v1_1"
                                                            else ["wi", "wo"])
    assert params["encoder_relative_bias"]["embedding"].shape == (8, 4)
    # no biases anywhere; RMSNorm has a scale only
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    assert not any(getattr(p[-1], "key", "") == "bias" for p, _ in leaves)


@pytest.mark.parametrize("family", VARIANTS)
def test_decoder_is_causal_and_reads_the_encoder(family):
    model, params = init(tiny(family))
    forward = jitted(model)
    enc, dec = random_ids(101, (1, 12)), random_ids(101, (1, 7), 1)
    logits = forward(params, enc, dec)
    assert logits.shape == (1, 7, 101) and logits.dtype == jnp.float32 and float(jnp.std(logits)) > 0.1
    t = 4
    changed = forward(params, enc, dec.at[0, t].set((dec[0, t] + 1) % 101))
    np.testing.assert_array_equal(np.asarray(logits[0, :t]), np.asarray(changed[0, :t]))
    assert np.abs(np.asarray(logits[0, t:] - changed[0, t:])).max() > 1e-4
    other_encoder = forward(params, enc.at[0, 11].set((enc[0, 11] + 1) % 101), dec)
    assert np.abs(np.asarray(other_encoder - logits))[0].max(axis=-1).min() > 1e-6  # every decoder position


def test_encoder_padding_and_packing_change_nothing_real():
    """One batch (one compile): example a alone, b alone (both padded), and a + b packed in one row."""
    model, params = init(tiny("t5"))
    enc_a, enc_b = random_ids(101, (5,), 1), random_ids(101, (6,), 2)
    dec_a, dec_b = random_ids(101, (3,), 3), random_ids(101, (4,), 4)
    pad = lambda x, n: jnp.pad(x, (0, n - x.shape[0]))  # noqa: E731
    arange = lambda *ns: jnp.concatenate([jnp.arange(n) for n in ns])  # noqa: E731
    enc = jnp.stack([pad(enc_a, 13), pad(enc_b, 13), pad(jnp.concatenate([enc_a, enc_b]), 13)])
    dec = jnp.stack([pad(dec_a, 8), pad(dec_b, 8), pad(jnp.concatenate([dec_a, dec_b]), 8)])
    enc_segments = jnp.array([[1] * 5 + [0] * 8, [1] * 6 + [0] * 7, [1] * 5 + [2] * 6 + [0] * 2])
    dec_segments = jnp.array([[1] * 3 + [0] * 5, [1] * 4 + [0] * 4, [1] * 3 + [2] * 4 + [0]])
    enc_positions = jnp.stack([pad(arange(5), 13), pad(arange(6), 13), pad(arange(5, 6), 13)])
    dec_positions = jnp.stack([pad(arange(3), 8), pad(arange(4), 8), pad(arange(3, 4), 8)])
    logits = jitted(model)(params, enc, dec, enc_segments, dec_segments, enc_positions, dec_positions)
    np.testing.assert_allclose(logits[2, :3], logits[0, :3], atol=1e-5)
    np.testing.assert_allclose(logits[2, 3:7], logits[1, :4], atol=1e-5)
    # and the unpadded example alone (another shape) gives the same logits as its padded row
    alone = jitted(model)(params, enc_a[None], dec_a[None])
    np.testing.assert_allclose(alone[0], logits[0, :3], atol=1e-5)


def test_relative_position_buckets():
    rel = jnp.array([-1000, -20, -9, -8, -1, 0, 1, 7, 8, 1000])
    # bidirectional, 32 buckets up to 128: |d| < 8 exact, positive distances in the upper half
    assert relative_position_bucket(rel, bidirectional=True).tolist() == [15, 10, 8, 8, 1, 0, 17, 23, 24, 31]
    # causal: keys after the query share bucket 0; 16 exact distances
    assert relative_position_bucket(rel, bidirectional=False).tolist() == [31, 17, 9, 8, 1, 0, 0, 0, 0, 0]


def _loss_and_grads(model, params, enc, dec):
    def loss(p):
        logits = model.apply({"params": p}, enc, dec)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, dec[..., None], -1)[..., 0])
    return jax.jit(jax.value_and_grad(loss))(params)


def test_scanned_and_rematerialised_stacks_match_the_plain_model():
    config = tiny("t5_v1_1", num_decoder_layers=2)
    plain, params = init(config)
    other = build_model(tiny("t5_v1_1", num_decoder_layers=2, scan_layers=True, remat_policy="dots_saveable"))
    enc, dec = random_ids(101, (2, 12)), random_ids(101, (2, 7), 1)
    loss, grads = _loss_and_grads(plain, params, enc, dec)
    other_loss, other_grads = _loss_and_grads(other, stack_layers(params, 2), enc, dec)
    np.testing.assert_allclose(loss, other_loss, rtol=1e-6)
    other_grads = unstack_layers(other_grads, 2)
    assert sorted(other_grads["decoder"]) == ["layers_0", "layers_1"]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), grads, other_grads)


def test_cached_decoding_equals_full_recomputation():
    """Encode once, fill the cross-attention K/V cache on the first decoder call (a 3-token prefix), then feed one
    token per step with encoded=None: the logits equal the teacher-forced forward pass (encoder padding included).
    Scanned layers, untied head; the cache starts as zeros from jax.eval_shape."""
    config = tiny("t5_v1_1", scan_layers=True)
    model = build_model(config)
    enc = random_ids(101, (2, 12)).at[1, 9:].set(0)  # row 1: 3 padding tokens
    enc_segments = (enc != 0).astype(jnp.int32)
    dec = random_ids(101, (2, 8), 1).at[:, 0].set(0)  # decoder start token
    params, cache = random_variables(model, enc, dec, decode=True)
    full, encoded = jax.jit(lambda p: (model.apply({"params": p}, enc, dec),
                                       model.apply({"params": p}, enc, enc_segments, method=model.encode)))(params)
    step = jax.jit(lambda cache, tokens, encoded: model.apply(
        {"params": params, "cache": cache}, tokens, encoded, encoder_segment_ids=enc_segments, decode=True,
        mutable=["cache"], method=model.decode))
    out, mutated = step(cache, dec[:, :3], encoded)
    outputs = [out]
    for t in range(3, 8):
        out, mutated = step(mutated["cache"], dec[:, t:t + 1], None)
        outputs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5)
    assert int(mutated["cache"]["decode_positions"]["index"]) == 8
    cross = mutated["cache"]["decoder"]["layers"]["cross_attention"]
    assert cross["cross_key"].shape == (3, 2, 4, 12, 8)  # [decoder layers, B, H, S, K]: heads-major


def test_missing_encoder_outputs_are_named_errors():
    model, params = init(tiny("t5"))
    dec = random_ids(101, (1, 4))
    with pytest.raises(ValueError, match="`encoded`.*required outside decode mode"):
        model.apply({"params": params}, dec, None, method=model.decode)
    _, cache = random_variables(model, jnp.ones((1, 5), jnp.int32), dec, decode=True)
    del cache["decoder"]["layers_0"]["cross_attention"]
    with pytest.raises(ValueError, match="cross_attention.*pass the encoder outputs on the first decoder call"):
        model.apply({"params": params, "cache": cache}, dec[:, :1], None, decode=True, mutable=["cache"],
                    method=model.decode)


def _train_losses(workdir):
    """step -> train loss, read by the project's own metrics reader."""
    from jaxlm.train.metrics import loss_history, read_metrics

    return dict(zip(*loss_history(read_metrics(str(workdir)), "train")))


@pytest.mark.slow
def test_span_corruption_pretraining_through_the_cli_loss_falls_and_exports_to_hf(tmp_path):
    """configs/pretrain/t5_quickstart.py, shrunk: the tokenizer is trained with sentinels, the loss falls from
    ~ln(vocab), and the run's checkpoint exports to a transformers T5 that computes the same logits."""
    workdir = tmp_path / "t5"
    cmd = [sys.executable, "-m", "jaxlm.pretrain", f"--config={ROOT}/configs/pretrain/t5_quickstart.py",
           f"--workdir={workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}",
           "--config.data.tokenizer_vocab_size=500", "--config.data.seq_len=64", "--config.model.d_model=64",
           "--config.model.d_kv=16", "--config.model.d_ff=128", "--config.model.num_layers=2",
           "--config.train.num_steps=40", "--config.train.batch_size=16", "--config.train.log_every=1",
           "--config.train.eval_every=40", "--config.train.eval_batches=2", "--config.train.checkpoint_every=40",
           "--config.train.progress_bar=False", "--config.train.cpu_peak_flops=1e11",
           "--config.optimizer.warmup_steps=5", "--config.optimizer.learning_rate=3e-3"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    losses = _train_losses(workdir)
    first, last = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(36, 41)])
    assert first > 5.5 and last < first - 1.5, (first, last)  # ln(500) = 6.2 at the start
    summary = json.load(open(workdir / "summary.json"))
    assert summary["status"] == "completed" and summary["final_eval"]["accuracy"] > 0.1
    from jaxlm.data import Tokenizer

    assert len(Tokenizer(str(workdir / "tokenizer.model")).sentinel_ids) == 100

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from jaxlm.convert import export_workdir
    from jaxlm.workdir import read_lm

    export_workdir(str(workdir), str(tmp_path / "hf"))
    hf = transformers.T5ForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    config, params, _, _ = read_lm(str(workdir))
    enc, dec = random_ids(config.vocab_size, (2, 10)), random_ids(config.vocab_size, (2, 5), 1)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(np.asarray(enc)), decoder_input_ids=torch.tensor(np.asarray(dec))).logits
    got = build_model(config).apply({"params": params}, enc, dec)
    assert np.abs(np.asarray(got) - ref.numpy()).max() < 1e-4
