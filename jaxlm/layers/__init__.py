"""Shared transformer building blocks (Flax Linen). Nothing here knows about objectives or files."""
from jaxlm.layers.attention import MultiHeadAttention
from jaxlm.layers.blocks import BlockConfig, TransformerBlock, TransformerStack, stack_layers, unstack_layers
from jaxlm.layers.embeddings import Embed
from jaxlm.layers.masks import combine_masks, make_attention_mask, make_causal_mask
from jaxlm.layers.mlp import FeedForward
from jaxlm.layers.norms import LayerNorm, RMSNorm
from jaxlm.layers.positions import RelativePositionBias, relative_position_bucket

__all__ = [
    "BlockConfig", "Embed", "FeedForward", "LayerNorm", "MultiHeadAttention", "RMSNorm", "RelativePositionBias",
    "TransformerBlock", "TransformerStack", "combine_masks", "make_attention_mask", "make_causal_mask",
    "relative_position_bucket", "stack_layers", "unstack_layers",
]
