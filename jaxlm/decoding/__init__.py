"""Text generation with a KV cache: greedy, temperature / top-k / top-p sampling, beam search.

    from jaxlm.decoding import GenerationConfig, adapter_for, generate, pad_prompts
    tokens, mask = pad_prompts([[464, 2068], [40]], pad_id=0, side="left")
    out = generate(adapter_for(model_config), params, tokens, mask,
                   config=GenerationConfig(max_new_tokens=32, strategy="sample", top_p=0.9, eos_id=50256),
                   rng=jax.random.key(0))
    out.tokens  # [B, 32], pad_id after each row's EOS; out.lengths, out.scores

Models plug in through `DecoderAdapter` (jaxlm.decoding.adapters); the loops are in jaxlm.decoding.search.
"""
from jaxlm.decoding.adapters import (
                                     CausalLMDecoder,
                                     DecoderAdapter,
                                     EncoderDecoderLMDecoder,
                                     adapter_for,
                                     take_cache_rows,
)
from jaxlm.decoding.sampling import filter_logits, sample
from jaxlm.decoding.search import Generated, GenerationConfig, generate, pad_prompts

__all__ = ["CausalLMDecoder", "DecoderAdapter", "EncoderDecoderLMDecoder", "Generated", "GenerationConfig",
           "adapter_for", "filter_logits", "generate", "pad_prompts", "sample", "take_cache_rows"]
