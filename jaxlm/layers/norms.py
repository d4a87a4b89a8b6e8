"""LayerNorm (BERT, GPT-2) and RMSNorm (T5), always normalised in float32 whatever the compute dtype."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class LayerNorm(nn.Module):
    epsilon: float = 1e-12
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    use_bias: bool = True

    @nn.compact
    def __call__(self, x_BxLxD):
        features = x_BxLxD.shape[-1]
        x = x_BxLxD.astype(jnp.float32)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        y = (x - mean) * jnp.reciprocal(jnp.sqrt(var + self.epsilon))
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (features,), self.param_dtype)
        y = y * scale.astype(jnp.float32)
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                              (features,), self.param_dtype)
            y = y + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nn.Module):
    """T5's layer norm: scale only, no mean subtraction, no bias."""
    epsilon: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD):
        features = x_BxLxD.shape[-1]
        x = x_BxLxD.astype(jnp.float32)
        y = x * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon))
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (features,), self.param_dtype)
        return (y * scale.astype(jnp.float32)).astype(self.dtype)
