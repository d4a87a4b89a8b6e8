"""Decoding throughput: jaxlm's compiled generate (with and without the KV cache) against transformers' PyTorch
generate, on the same random GPT-2 small weights, fp32, CPU, greedy, in one process.

    .venv/bin/python benchmarks/decode.py            # batch 1 and 16, prompt 128, 128 new tokens (~6 min on 2 cores)
    .venv/bin/python benchmarks/decode.py --quick    # no measured no-cache loop, torch at 1 thread only (~3 min)
    .venv/bin/python benchmarks/decode.py --full     # the no-cache loop measured at every batch (~16 min)
    .venv/bin/python benchmarks/decode.py --batches 1 --new_tokens 32 --no_torch

Rows:
  jaxlm, KV cache: prefill the prompt in one call, then a lax.while_loop of one-token steps (one jitted call).
  jaxlm, no cache: the same compiled loop, but every step recomputes the whole fixed [B, P + N - 1] buffer
                   (a fixed shape; the causal mask hides the unfilled slots), so each step costs P + N - 1 tokens.
                   Estimated as N x one such step (jitted alone); the loop itself is also measured at batch 1
                   (to check the estimate; not with --quick) and at every batch with --full.
  transformers:    GPT2LMHeadModel.generate(do_sample=False, use_cache=True), min_new_tokens = max_new_tokens,
                   with torch's default thread count and with 1 thread (on a 2-core machine shared with other
                   work, OpenMP threads that spin on a busy core can make 2 threads several times slower).
Every row generates exactly N tokens per sequence (no EOS); tokens/s = batch x N / wall time of a call after a
first (compiling / warm-up) call, prefill included. The weights are transformers' random initialisation,
saved and imported with jaxlm.convert.load_hf, so both sides compute the same function; the report counts how
many greedy tokens agree (random weights give near-uniform logits, so late tokens may diverge on float ties).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="no measured no-cache loop; torch at 1 thread only")
    parser.add_argument("--full", action="store_true", help="measure the no-cache loop at every batch")
    parser.add_argument("--no_torch", action="store_true", help="skip transformers' PyTorch generate")
    return parser.parse_args(argv)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_recompute_step(adapter, params, prompts, n) -> float:
    """Seconds of one no-cache step: a fresh cache and a forward pass over the whole [B, P + N - 1] buffer."""
    import jax
    import jax.numpy as jnp

    batch, p = prompts.shape
    slots = p + n - 1
    buffer = jnp.zeros((batch, slots), jnp.int32).at[:, :p].set(prompts)
    positions = jnp.broadcast_to(jnp.arange(slots), (batch, slots))
    valid = jnp.ones((batch, slots), bool)

    @jax.jit
    def step(params, buffer):
        cache = adapter.init_cache(batch, slots)
        return adapter.step(params, cache, buffer, positions, valid, jnp.full((batch,), p, jnp.int32),
                            prefill=True)[0]

    jax.block_until_ready(step(params, buffer))
    return min(timed(lambda: jax.block_until_ready(step(params, buffer)))[1] for _ in range(2))


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np
    import torch
    import transformers

    from jaxlm.convert import load_hf
    from jaxlm.decoding import GenerationConfig, adapter_for, generate

    default_threads = torch.get_num_threads()
    load_start = os.getloadavg()[0]

    batches = [int(b) for b in args.batches.split(",")]
    p, n = args.prompt_len, args.new_tokens
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()  # GPT-2 small, 124M
    hf_model.generation_config.eos_token_id = None
    with tempfile.TemporaryDirectory() as model_dir:
        hf_model.save_pretrained(model_dir)
        config, params, _ = load_hf(model_dir)
    params = jax.device_put(params)
    adapter = adapter_for(config)
    print(f"# GPT-2 small fp32 greedy, prompt {p}, {n} new tokens; jax {jax.__version__} on "
          f"{jax.devices()[0].device_kind}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)

    rows = []
    for batch in batches:
        prompts = np.random.default_rng(batch).integers(0, config.vocab_size - 1, (batch, p), dtype=np.int32)
        reference = None
        for use_cache in (True, False):
            name = "jaxlm, KV cache" if use_cache else "jaxlm, no cache (recompute)"
            if not use_cache:
                seconds = n * one_recompute_step(adapter, params, prompts, n)
                rows.append((name + ", estimated", batch, None, seconds, batch * n / seconds,
                             f"{n} x one jitted [{batch}, {p + n - 1}] step"))
                print(rows[-1], flush=True)
                if args.quick or (batch > 1 and not args.full):
                    continue
            gen = GenerationConfig(max_new_tokens=n, strategy="greedy", use_cache=use_cache, pad_id=0)
            call = lambda: jax.block_until_ready(generate(adapter, params, prompts, config=gen))  # noqa: E731
            _, first = timed(call)
            out, seconds = timed(call)
            tokens = np.asarray(out.tokens)
            if reference is None:
                reference, note = tokens, ""
            else:
                note = f"tokens == cached: {int((tokens == reference).all(-1).sum())}/{batch} rows"
            rows.append((name, batch, first, seconds, batch * n / seconds, note))
            print(rows[-1], flush=True)
        thread_counts = {1} if args.quick else {default_threads, 1}
        for threads in () if args.no_torch else sorted(thread_counts, reverse=True):
            torch.set_num_threads(threads)
            ids = torch.tensor(prompts, dtype=torch.long)
            kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, use_cache=True)
            with torch.no_grad():
                _, first = timed(lambda: hf_model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw))
                out, seconds = timed(lambda: hf_model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw))
            theirs = out[:, p:].numpy()
            agree = (theirs == reference).cumprod(-1).sum(-1)  # leading tokens equal to jaxlm's, per row
            rows.append((f"transformers (PyTorch), KV cache, {threads} thread(s)", batch, first, seconds,
                         batch * n / seconds, f"first {int(agree.min())}-{int(agree.max())} of {n} tokens == jaxlm's"))
            print(rows[-1], flush=True)
        torch.set_num_threads(default_threads)

    print(f"# load average (1 min) at the start {load_start:.1f}, at the end {os.getloadavg()[0]:.1f} "
          f"(this process counts for about 2)")
    print("\n| implementation | batch | first call (s) | timed call (s) | new tokens/s | note |")
    print("|---|---|---|---|---|---|")
    for name, batch, first, seconds, rate, note in rows:
        first = "-" if first is None else f"{first:.1f}"
        print(f"| {name} | {batch} | {first} | {seconds:.2f} | {rate:.1f} | {note} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
