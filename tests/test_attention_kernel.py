"""The attention kernel choice (jaxlm.layers.attention_kernel) and the accelerator defaults (dtype 'auto').

cuDNN itself needs an NVIDIA GPU (benchmarks/accelerator.py compares it with the einsum path there); here the
choice is tested with the backend faked, and the fused XLA path against the einsum path on CPU.
"""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.layers import attention_kernel as ak
from jaxlm.layers.attention import MultiHeadAttention
from jaxlm.models import get_model_config
from jaxlm.models.common import to_dtype

CALL = dict(name="attention", head_dim=64, q_len=128, k_len=128, dropout=False, decode=False, has_bias=False,
            training=True)


@pytest.fixture
def fake_nvidia_gpu(monkeypatch):
    monkeypatch.setattr(ak, "on_nvidia_gpu", lambda: True)
    ak._logged.clear()
    yield
    ak._logged.clear()


def test_cpu_runs_the_einsum_path_and_says_so_when_cudnn_was_asked_for(caplog):
    ak._logged.clear()
    assert ak.choose_kernel("auto", dtype=jnp.bfloat16, **CALL) == ak.EINSUM
    with caplog.at_level(logging.WARNING, logger=ak.__name__):
        assert ak.choose_kernel("cudnn", dtype=jnp.bfloat16, **CALL) == ak.EINSUM
    assert "cuDNN needs an NVIDIA GPU" in caplog.text
    assert ak.choose_kernel("dot_product", dtype=jnp.float32, **CALL) == ak.XLA_FUSED
    assert ak.choose_kernel("dot_product", dtype=jnp.float32, **{**CALL, "dropout": True}) == ak.EINSUM
    assert ak.choose_kernel("xla", dtype=jnp.bfloat16, **CALL) == ak.EINSUM
    with pytest.raises(ValueError, match="attention_impl='flash' is not one of auto, xla, dot_product, cudnn"):
        ak.choose_kernel("flash", dtype=jnp.bfloat16, **CALL)


@pytest.mark.parametrize("change, reason", [
    (dict(dtype=jnp.float32), "compute dtype float32"),
    (dict(head_dim=12), "head_dim 12"),
    (dict(head_dim=256), "head_dim 256"),
    (dict(dropout=True), "attention dropout while training"),
    (dict(decode=True), "decoding with a KV cache"),
    (dict(has_bias=True, q_len=127, k_len=127), "query / key lengths 127 / 127 with a bias"),
])
def test_on_an_nvidia_gpu_each_obstacle_falls_back_to_einsum_with_its_reason_logged_once(
        fake_nvidia_gpu, caplog, change, reason):
    call = {**CALL, "dtype": jnp.bfloat16, **change}
    with caplog.at_level(logging.INFO, logger=ak.__name__):
        assert ak.choose_kernel("auto", **call) == ak.EINSUM
        assert ak.choose_kernel("auto", **call) == ak.EINSUM
    assert caplog.text.count(reason) == 1, caplog.text


def test_on_an_nvidia_gpu_bf16_attention_uses_cudnn(fake_nvidia_gpu):
    assert ak.choose_kernel("auto", dtype=jnp.bfloat16, **CALL) == ak.CUDNN
    assert ak.choose_kernel("cudnn", dtype=jnp.float16, **{**CALL, "has_bias": True}) == ak.CUDNN
    assert ak.choose_kernel("auto", dtype=jnp.bfloat16, **{**CALL, "has_bias": True, "q_len": 127,
                                                          "training": False}) == ak.CUDNN


def test_dtype_auto_is_float32_on_cpu_and_bfloat16_on_accelerators(monkeypatch):
    assert to_dtype("auto") == jnp.float32
    assert get_model_config("bert", "tiny").dtype == "auto"
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert to_dtype("auto") == jnp.bfloat16
    with pytest.raises(ValueError, match="'bf16' is not one of"):
        to_dtype("bf16")


def test_an_unknown_attention_impl_in_a_model_config_is_an_error_naming_the_choices():
    for family, size, name in (("bert", "tiny", "BertConfig"), ("gpt2", "small", "GPT2Config"),
                               ("t5", "small", "T5Config")):
        with pytest.raises(ValueError, match=f"{name}.attention_impl='fused' is not one of auto"):
            get_model_config(family, size, attention_impl="fused")
    with pytest.raises(ValueError, match="XLNetConfig.attention_impl='fused'"):
        get_model_config("xlnet", "base", attention_impl="fused")


def test_fused_path_equals_the_einsum_path_with_padding_mask_and_learned_bias():
    """Loss and gradients (the bias's included) of jax.nn.dot_product_attention match jaxlm's einsums."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 8, 32)), jnp.float32)
    lengths = np.array([8, 5, 2])
    mask = jnp.asarray(np.arange(8)[None, :] < lengths[:, None])[:, None, None, :]  # [B, 1, 1, K] padding
    bias = jnp.asarray(rng.normal(size=(1, 4, 8, 8)), jnp.float32)  # T5-style [1, H, Q, K]

    def loss(params, bias, impl):
        layer = MultiHeadAttention(num_heads=4, head_dim=8, attention_impl=impl)
        return jnp.sum(jnp.square(layer.apply(params, x, mask=mask, bias=bias)))

    params = MultiHeadAttention(num_heads=4, head_dim=8).init(jax.random.key(0), x, mask=mask)
    grad = jax.grad(loss, argnums=(0, 1))
    (p_ref, b_ref), (p_fused, b_fused) = grad(params, bias, "xla"), grad(params, bias, "dot_product")
    np.testing.assert_allclose(loss(params, bias, "dot_product"), loss(params, bias, "xla"), rtol=1e-5)
    np.testing.assert_allclose(b_fused, b_ref, rtol=1e-4, atol=1e-8)
    assert float(jnp.abs(b_ref).max()) > 1e-4  # the bias gets a real gradient
    for ref, fused in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_fused)):
        np.testing.assert_allclose(fused, ref, rtol=1e-4, atol=1e-7)
