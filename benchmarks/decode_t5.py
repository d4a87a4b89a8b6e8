"""T5 decoding throughput: jaxlm's compiled greedy generate for an encoder-decoder (the encoder runs once, the
cross-attention keys / values are cached), random T5-small weights, fp32, CPU.

    .venv/bin/python benchmarks/decode_t5.py                          # batch 1 and 16, source 512, 64 new tokens
    .venv/bin/python benchmarks/decode_t5.py --batches 16 --size base --new_tokens 32

tokens/s = batch x new tokens / the best of two timed calls after a first (compiling) call, encoder included.
Every row generates exactly --new_tokens per sequence (no EOS).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--size", default="small")
    parser.add_argument("--source_len", type=int, default=512)
    parser.add_argument("--new_tokens", type=int, default=64)
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxlm.decoding import GenerationConfig, adapter_for, generate
    from jaxlm.models import get_model_config

    config = get_model_config("t5", args.size, dropout_rate=0.0)
    adapter = adapter_for(config)
    params = jax.jit(lambda: adapter.model.init(jax.random.key(0), jnp.ones((1, 8), jnp.int32),
                                                jnp.zeros((1, 4), jnp.int32))["params"])()
    generation = GenerationConfig(max_new_tokens=args.new_tokens, strategy="greedy", pad_id=0)
    print(f"T5-{args.size} greedy, source {args.source_len}, {args.new_tokens} new tokens, "
          f"{jax.devices()[0].device_kind}")
    print("| batch | first call (s) | timed call (s) | new tokens/s |\n|---|---|---|---|")
    for batch in map(int, args.batches.split(",")):
        sources = np.random.default_rng(batch).integers(2, 32000, (batch, args.source_len), dtype=np.int32)

        def call():
            return jax.block_until_ready(generate(adapter, params, sources, config=generation))

        start = time.perf_counter()
        call()
        first = time.perf_counter() - start
        timed = []
        for _ in range(2):
            start = time.perf_counter()
            call()
            timed.append(time.perf_counter() - start)
        print(f"| {batch} | {first:.1f} | {min(timed):.2f} | {batch * args.new_tokens / min(timed):.1f} |", flush=True)


if __name__ == "__main__":
    main()
