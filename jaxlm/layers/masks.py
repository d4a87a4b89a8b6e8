"""Attention masks. True means "may attend". Shapes are [batch, 1, q_len, kv_len] (broadcast over heads).

Segment ids are the one padding/packing concept in jaxlm: 0 is padding, 1..k name the document a token belongs
to in a packed row, and a token attends only to tokens of its own document.
"""
import jax.numpy as jnp


def make_attention_mask(q_segment_ids_BxQ, kv_segment_ids_BxK):
    same = q_segment_ids_BxQ[:, :, None] == kv_segment_ids_BxK[:, None, :]
    real_kv = (kv_segment_ids_BxK != 0)[:, None, :]
    return (same & real_kv)[:, None, :, :]


def make_causal_mask(length, kv_length=None):
    kv_length = length if kv_length is None else kv_length
    q_pos = jnp.arange(length)[:, None]
    k_pos = jnp.arange(kv_length)[None, :]
    return (k_pos <= q_pos)[None, None, :, :]


def combine_masks(*masks):
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out
