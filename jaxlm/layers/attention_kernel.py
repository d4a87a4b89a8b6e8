"""Which kernel computes softmax(q k^T + bias) v: jaxlm's einsums, XLA's fused op, or cuDNN's flash attention.

`config.model.attention_impl`:
- "auto" (default): cuDNN's fused flash attention (`jax.nn.dot_product_attention(implementation='cudnn')`) on an
  NVIDIA GPU wherever the kernel applies, else jaxlm's einsum path (the fastest on CPU: benchmarks/RESULTS.md);
- "cudnn": the same, but each fallback is logged as a warning (you asked for the kernel);
- "dot_product": `jax.nn.dot_product_attention` with XLA's own implementation (any backend);
- "xla": the einsum path, always (the reference the others are tested against).

Where cuDNN's kernel does not apply, the einsum path runs and the reason is logged once per reason:
- compute dtype float32 (the kernel takes bf16 / fp16: `config.model.dtype=auto` is bf16 on GPU and TPU);
- head_dim not a multiple of 8 or above 128;
- attention dropout while training (jax.nn.dot_product_attention has no dropout argument: set
  `config.model.attention_dropout=0` to use the kernel, as GPT-2-style runs on GPUs usually do);
- decoding with a KV cache (one query per step: the einsum path is what reads the heads-major cache);
- an odd query or key length together with a bias in training (cuDNN's bias gradient needs even lengths).
Masks are broadcast to [B, 1, Q, K] first (jax-ml/jax#28974: a [B, 1, 1, K] padding mask fails cuDNN's shape
check); cuDNN turns the mask into an additive bias, and a learned bias (T5's relative buckets) gets its gradient
through it (benchmarks/accelerator.py checks loss and gradients against the einsum path on the GPU).
"""
from __future__ import annotations

import logging

import jax
import jax.extend.backend
import jax.numpy as jnp

log = logging.getLogger(__name__)

ATTENTION_IMPLS = ("auto", "xla", "dot_product", "cudnn")
EINSUM, XLA_FUSED, CUDNN = "einsum", "xla_fused", "cudnn"
CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
CUDNN_MAX_HEAD_DIM = 128
_logged: set[str] = set()


def check_attention_impl(value: str, where: str = "attention_impl") -> None:
    if value not in ATTENTION_IMPLS:
        raise ValueError(f"{where}={value!r} is not one of {', '.join(ATTENTION_IMPLS)}")


def on_nvidia_gpu() -> bool:
    """True when jax's default backend is CUDA (cuDNN's kernel needs it; ROCm has no cuDNN)."""
    if jax.default_backend() != "gpu":
        return False
    return "cuda" in jax.extend.backend.get_backend().platform_version.lower()


def cudnn_obstacle(*, dtype, head_dim: int, q_len: int, k_len: int, dropout: bool, decode: bool,
                   has_bias: bool, training: bool) -> str:
    """Why cuDNN's fused attention cannot run this call ('' = it can)."""
    if jnp.dtype(dtype) not in [jnp.dtype(d) for d in CUDNN_DTYPES]:
        return (f"compute dtype {jnp.dtype(dtype).name}: cuDNN's fused attention takes bfloat16 / float16 "
                "(config.model.dtype=auto or bfloat16)")
    if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
        return f"head_dim {head_dim}: cuDNN's fused attention needs a multiple of 8 up to {CUDNN_MAX_HEAD_DIM}"
    if dropout:
        return ("attention dropout while training: jax.nn.dot_product_attention has no dropout "
                "(config.model.attention_dropout=0 uses the fused kernel)")
    if decode:
        return "decoding with a KV cache: the einsum path reads the heads-major cache"
    if has_bias and training and (q_len % 2 or k_len % 2):
        return f"query / key lengths {q_len} / {k_len} with a bias: cuDNN's bias gradient needs even lengths"
    return ""


def choose_kernel(impl: str, *, name: str, dtype, head_dim: int, q_len: int, k_len: int, dropout: bool,
                  decode: bool, has_bias: bool, training: bool) -> str:
    """EINSUM, XLA_FUSED or CUDNN for one attention call (at trace time); fallbacks are logged once per reason."""
    check_attention_impl(impl)
    if impl == "xla":
        return EINSUM
    if impl == "dot_product":
        return EINSUM if dropout else XLA_FUSED
    if not on_nvidia_gpu():
        if impl == "cudnn":
            _log_once(logging.WARNING, f"attention_impl='cudnn' on backend {jax.default_backend()!r}: cuDNN needs an "
                                       "NVIDIA GPU; using the einsum path")
        return EINSUM
    obstacle = cudnn_obstacle(dtype=dtype, head_dim=head_dim, q_len=q_len, k_len=k_len, dropout=dropout,
                              decode=decode, has_bias=has_bias, training=training)
    if obstacle:
        level = logging.WARNING if impl == "cudnn" else logging.INFO
        _log_once(level, f"attention ({name}): {obstacle}; using the einsum path")
        return EINSUM
    return CUDNN


def fused_attention(kernel: str, q_BxQxHxK, k_BxKxHxK, v_BxKxHxK, *, mask=None, bias=None, scale: float = 1.0):
    """jax.nn.dot_product_attention on [B, T, H, K] inputs with jaxlm's boolean mask and additive bias."""
    if kernel == CUDNN and mask is not None:
        batch, q_len, k_len = q_BxQxHxK.shape[0], q_BxQxHxK.shape[1], k_BxKxHxK.shape[1]
        mask = jnp.broadcast_to(mask, (batch, mask.shape[1], q_len, k_len))
    if bias is not None:
        bias = bias.astype(q_BxQxHxK.dtype)
    return jax.nn.dot_product_attention(q_BxQxHxK, k_BxKxHxK, v_BxKxHxK, bias=bias, mask=mask, scale=scale,
                                        implementation="cudnn" if kernel == CUDNN else None)


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        log.log(level, message)
