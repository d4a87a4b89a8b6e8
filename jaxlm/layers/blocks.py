"""One transformer layer (pre-LN or post-LN wiring) and the layer stack (unrolled or `nn.scan`, with remat).

Scanning stacks identical layers along a leading `layers` axis so compile time does not grow with depth;
`stack_layers` / `unstack_layers` convert parameters between the two layouts (they compute the same function).
"""
import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.layers.attention import MultiHeadAttention
from jaxlm.layers.attention_kernel import check_attention_impl
from jaxlm.layers.mlp import FeedForward
from jaxlm.layers.norms import LayerNorm, RMSNorm

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}

# Logits over the vocabulary, as every LM head constrains them.
LOGITS_AXES = ("activation_batch", "activation_length", "activation_vocab")
ACTIVATION_AXES = ("activation_batch", "activation_length", "activation_embed")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    hidden_size: int
    num_heads: int
    head_dim: int
    mlp_dim: int
    num_layers: int
    activations: Sequence[str] = ("gelu",)
    pre_norm: bool = False  # False: BERT's post-LN; True: GPT-2 / T5 pre-LN
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-12
    use_bias: bool = True
    scale_logits: bool = True
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    init_stddev: float = 0.02
    out_init_stddev: float | None = None  # GPT-2 scales residual projections by 1/sqrt(2 * layers)
    query_init_stddev: float | None = None  # None: init_stddev (T5: (d_model * head_dim) ** -0.5)
    mlp_out_init_stddev: float | None = None  # None: out_init_stddev (T5: d_ff ** -0.5)
    mlp_dropout_rate: float = 0.0  # dropout between the feed-forward's two matmuls (T5)
    attention_impl: str = "auto"
    cross_attention: bool = False
    scan_layers: bool = False
    remat_policy: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy={self.remat_policy!r} is not one of {sorted(REMAT_POLICIES)}")
        check_attention_impl(self.attention_impl)
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"norm={self.norm!r} must be 'layernorm' or 'rmsnorm'")


class TransformerBlock(nn.Module):
    config: BlockConfig
    deterministic: bool = True
    decode: bool = False

    def _norm(self, name):
        c = self.config
        if c.norm == "rmsnorm":
            return RMSNorm(epsilon=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, name=name)
        return LayerNorm(epsilon=c.norm_eps, dtype=c.dtype, param_dtype=c.param_dtype, use_bias=c.use_bias,
                         name=name)

    def _attention(self, name, cross=False):
        c = self.config
        return MultiHeadAttention(
            num_heads=c.num_heads, head_dim=c.head_dim, use_bias=c.use_bias, scale_logits=c.scale_logits,
            dropout_rate=c.attention_dropout_rate, init_stddev=c.init_stddev, out_init_stddev=c.out_init_stddev,
            query_init_stddev=c.query_init_stddev, cross_attention=cross, attention_impl=c.attention_impl,
            dtype=c.dtype, param_dtype=c.param_dtype, name=name)

    @nn.compact
    def __call__(self, x_BxLxD, mask=None, bias=None, encoded_BxSxD=None, encoder_mask=None):
        c = self.config
        drop = lambda h: nn.Dropout(c.dropout_rate)(h, deterministic=self.deterministic)  # noqa: E731
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ACTIVATION_AXES)
        attend = lambda h: self._attention("attention")(  # noqa: E731
            h, mask=mask, bias=bias, deterministic=self.deterministic, decode=self.decode)
        cross = lambda h: self._attention("cross_attention", cross=True)(  # noqa: E731
            h, encoded_BxSxD, mask=encoder_mask, deterministic=self.deterministic, decode=self.decode)
        mlp_out_std = c.mlp_out_init_stddev if c.mlp_out_init_stddev is not None else c.out_init_stddev
        mlp = lambda h: FeedForward(  # noqa: E731
            c.mlp_dim, activations=c.activations, use_bias=c.use_bias, dropout_rate=c.mlp_dropout_rate,
            init_stddev=c.init_stddev, out_init_stddev=mlp_out_std, dtype=c.dtype,
            param_dtype=c.param_dtype, name="mlp")(h, deterministic=self.deterministic)

        sublayers = [("attention_norm", attend)]
        if c.cross_attention:
            sublayers.append(("cross_attention_norm", cross))
        sublayers.append(("mlp_norm", mlp))
        for norm_name, sublayer in sublayers:
            if c.pre_norm:
                x_BxLxD = x_BxLxD + drop(sublayer(self._norm(norm_name)(x_BxLxD)))
            else:
                x_BxLxD = self._norm(norm_name)(x_BxLxD + drop(sublayer(x_BxLxD)))
        return nn.with_logical_constraint(x_BxLxD, ACTIVATION_AXES)


class _ScanBlock(TransformerBlock):
    """The (carry, per-layer output) signature that nn.scan needs."""

    def __call__(self, x_BxLxD, mask=None, bias=None, encoded_BxSxD=None, encoder_mask=None):
        return super().__call__(x_BxLxD, mask, bias, encoded_BxSxD, encoder_mask), None


class TransformerStack(nn.Module):
    """`num_layers` blocks. Unrolled params are `layers_0..N-1`; scanned params are `layers` with a leading axis."""
    config: BlockConfig

    @nn.compact
    def __call__(self, x_BxLxD, mask=None, bias=None, encoded_BxSxD=None, encoder_mask=None, *,
                 deterministic: bool = True, decode: bool = False):
        c = self.config
        block_cls = _ScanBlock if c.scan_layers else TransformerBlock
        if c.remat_policy != "none":
            block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[c.remat_policy], prevent_cse=not c.scan_layers)
        if c.scan_layers:
            scanned = nn.scan(
                block_cls, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * 4,
                length=c.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
            x_BxLxD, _ = scanned(c, deterministic, decode, name="layers")(
                x_BxLxD, mask, bias, encoded_BxSxD, encoder_mask)
            return x_BxLxD
        for i in range(c.num_layers):
            x_BxLxD = block_cls(c, deterministic, decode, name=f"layers_{i}")(
                x_BxLxD, mask, bias, encoded_BxSxD, encoder_mask)
        return x_BxLxD


def stack_layers(tree, num_layers: int | None, prefix: str = "layers"):
    """Unrolled -> scanned layout, anywhere in a nested dict: `layers_0..N-1` become one `layers` entry.

    num_layers None: each stack's own count (an encoder-decoder's stacks may differ in depth)."""
    if not isinstance(tree, dict):
        return tree
    if f"{prefix}_0" in tree:
        count = num_layers if num_layers is not None else sum(
            1 for k in tree if k.startswith(prefix + "_") and k[len(prefix) + 1:].isdigit())
        layers = [tree[f"{prefix}_{i}"] for i in range(count)]
        rest = {k: stack_layers(v, num_layers, prefix) for k, v in tree.items()
                if not (k.startswith(prefix + "_") and k[len(prefix) + 1:].isdigit())}
        rest[prefix] = jax.tree.map(lambda *xs: np.stack(xs) if isinstance(xs[0], np.ndarray) else jnp.stack(xs),
                                    *layers)
        return rest
    return {k: stack_layers(v, num_layers, prefix) for k, v in tree.items()}


def unstack_layers(tree, num_layers: int | None, prefix: str = "layers"):
    """Scanned -> unrolled layout (the inverse of `stack_layers`); num_layers None: the stacked axis's size."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        if k == prefix and isinstance(v, dict):
            count = num_layers if num_layers is not None else jax.tree.leaves(v)[0].shape[0]
            for i in range(count):
                out[f"{prefix}_{i}"] = jax.tree.map(lambda x, i=i: x[i], v)
        else:
            out[k] = unstack_layers(v, num_layers, prefix)
    return out
