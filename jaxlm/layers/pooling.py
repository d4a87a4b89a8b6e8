"""Sentence embeddings from token states: the pooling modes of sentence-transformers' `Pooling` module, over the
real tokens of each row (mask = segment_ids != 0), so that padding never changes an embedding."""
from __future__ import annotations

import jax.numpy as jnp

# sentence-transformers' names; several modes concatenate in the order given ("cls+mean": [cls, mean]).
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "last")


def parse_pooling(pooling: str) -> tuple[str, ...]:
    """'cls+mean' -> ('cls', 'mean'); an unknown mode is an error naming the known ones."""
    modes = tuple(m.strip() for m in pooling.split("+") if m.strip())
    bad = [m for m in modes if m not in POOLING_MODES]
    if not modes or bad:
        raise ValueError(f"pooling={pooling!r}: unknown mode(s) {bad or [pooling]}; choose from {POOLING_MODES} "
                         "(several joined by '+')")
    return modes


def pool(hidden_BxLxD, mask_BxL, modes: tuple[str, ...]):
    """[B, D * len(modes)] float32: 'cls' the first real token, 'last' the last real token (decoders, XLNet),
    'mean' / 'mean_sqrt_len' the sum over real tokens divided by their count / its square root, 'max' the maximum
    over real tokens. A row without real tokens pools to zeros."""
    h = hidden_BxLxD.astype(jnp.float32)
    mask = mask_BxL.astype(bool)
    count_B = jnp.sum(mask, axis=1).astype(jnp.float32)
    total_BxD = jnp.sum(jnp.where(mask[..., None], h, 0.0), axis=1)
    out = []
    for mode in modes:
        if mode == "cls":
            first_B = jnp.argmax(mask, axis=1)
            out.append(jnp.take_along_axis(h, first_B[:, None, None], axis=1)[:, 0])
        elif mode == "last":
            last_B = h.shape[1] - 1 - jnp.argmax(mask[:, ::-1], axis=1)
            out.append(jnp.take_along_axis(h, last_B[:, None, None], axis=1)[:, 0])
        elif mode == "mean":
            out.append(total_BxD / jnp.maximum(count_B, 1.0)[:, None])
        elif mode == "mean_sqrt_len":
            out.append(total_BxD / jnp.sqrt(jnp.maximum(count_B, 1.0))[:, None])
        elif mode == "max":
            out.append(jnp.max(jnp.where(mask[..., None], h, -1e9), axis=1))
        else:
            raise ValueError(f"pooling mode {mode!r}; choose from {POOLING_MODES}")
    pooled = jnp.concatenate(out, axis=-1)
    return jnp.where((count_B > 0)[:, None], pooled, 0.0)
