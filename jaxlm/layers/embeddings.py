"""Token / position / type embedding tables; `attend` reuses a table as a tied output projection."""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp


class Embed(nn.Module):
    num_embeddings: int
    features: int
    axes: tuple[str, str] = ("vocab", "embed")
    init_stddev: float = 0.02
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(self.init_stddev), self.axes),
            (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids):
        # Out-of-range ids are checked on the host (jaxlm.models.validate_inputs); take clips silently.
        return jnp.take(jnp.asarray(self.embedding, self.dtype), ids, axis=0)

    def attend(self, x_BxLxD):
        """Tied output projection: logits = x @ embedding^T."""
        return jnp.einsum("...d,vd->...v", x_BxLxD.astype(self.dtype), jnp.asarray(self.embedding, self.dtype))
