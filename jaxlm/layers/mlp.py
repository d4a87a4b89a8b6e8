"""Position-wise feed-forward: dense -> activation -> dense, optionally gated (T5 v1.1's gated-GELU)."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # BERT's erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # GPT-2's tanh approximation
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


def get_activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class FeedForward(nn.Module):
    """`activations` of length 1: plain MLP (params wi, wo). Length 2: gated, product of the two (wi_0, wi_1)."""
    hidden_dim: int
    activations: Sequence[str] = ("gelu",)
    use_bias: bool = True
    dropout_rate: float = 0.0
    init_stddev: float = 0.02
    out_init_stddev: float | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD, deterministic: bool = True):
        features = x_BxLxD.shape[-1]

        def dense(name, n_out, axes, stddev):
            return nn.Dense(n_out, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(stddev), axes),
                            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[-1:]),
                            name=name)

        if len(self.activations) == 1:
            h = get_activation(self.activations[0])(dense("wi", self.hidden_dim, ("embed", "mlp"),
                                                          self.init_stddev)(x_BxLxD))
        else:
            h = 1.0
            for i, act in enumerate(self.activations):
                h = h * get_activation(act)(dense(f"wi_{i}", self.hidden_dim, ("embed", "mlp"),
                                                  self.init_stddev)(x_BxLxD))
        h_BxLxF = nn.with_logical_constraint(h, ("activation_batch", "activation_length", "activation_mlp"))
        h_BxLxF = nn.Dropout(self.dropout_rate)(h_BxLxF, deterministic=deterministic)
        out_std = self.out_init_stddev if self.out_init_stddev is not None else self.init_stddev
        return dense("wo", features, ("mlp", "embed"), out_std)(h_BxLxF)
