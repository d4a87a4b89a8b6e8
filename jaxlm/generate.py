"""Command line: continue prompts with a jaxlm checkpoint (a pretraining run or an imported HF model).

    python -m jaxlm.generate --checkpoint runs/gpt2-imported --prompt "The quick brown fox" \
        [--prompt "..." | --prompts_file prompts.txt] [--max_new_tokens 64] \
        [--strategy greedy|sample|beam] [--temperature 1.0 --top_k 0 --top_p 1.0 --seed 0] \
        [--num_beams 4 --length_penalty 0.6 --length_penalty_style gnmt|hf --early_stopping never|true|false]

The model and tokenizer come from the run directory (jaxlm.workdir.open_run: a pretraining run, an import or a
text-to-text fine-tuning run; the parameters restored onto this host's devices as the model's logical axes shard
them); --tokenizer overrides the run's own tokenizer. Prompts are left-padded into batches of
--batch_size (all padded to the longest prompt, so the search compiles once); each row stops at the
tokenizer's EOS (unless --ignore_eos). Prints every prompt followed by its continuation (encoder-decoder
models such as T5: the prompt, ended by EOS, is the encoder input, and the decoder's output is printed).
"""
from __future__ import annotations

import argparse
import sys

import jax

from jaxlm import sharding as shd
from jaxlm.cli import setup_command
from jaxlm.decoding import GenerationConfig, adapter_for, generate, pad_prompts
from jaxlm.paths import open_text
from jaxlm.workdir import open_run


def _special_id(tokenizer, name: str):
    try:
        return getattr(tokenizer, name)
    except (ValueError, AttributeError):
        return None


def _early_stopping(text: str):
    return {"true": True, "false": False, "never": "never"}[text.lower()]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m jaxlm.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="jaxlm workdir (run or `jaxlm.convert from-hf` import)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts_file", default=None, help="a text file with one prompt per line")
    parser.add_argument("--tokenizer", default=None, help="override: a .model file or an HF tokenizer directory")
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--strategy", default="greedy", choices=("greedy", "sample", "beam"))
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="0 = off")
    parser.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--num_beams", type=int, default=4)
    parser.add_argument("--length_penalty", type=float, default=0.6, help="alpha; 0 = none")
    parser.add_argument("--length_penalty_style", default="gnmt", choices=("gnmt", "hf"))
    parser.add_argument("--early_stopping", type=_early_stopping, default="never", help="never | true | false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--padding_side", default="left", choices=("left", "right"))
    parser.add_argument("--ignore_eos", action="store_true", help="always generate max_new_tokens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_command()
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as e:  # bad input: say which, no trace
        print(f"error: {e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    prompts = list(args.prompt)
    if args.prompts_file:
        with open_text(args.prompts_file) as f:
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise ValueError("no prompts: pass --prompt TEXT (repeatable) or --prompts_file FILE")

    run = open_run(args.checkpoint, args.step, tokenizer=args.tokenizer or "")
    model_config, tokenizer, step = run.model_config, run.tokenizer, run.step
    tokenizer_eos = _special_id(tokenizer, "eos_id")
    eos_id = None if args.ignore_eos else tokenizer_eos
    start_id = next((i for i in (_special_id(tokenizer, "bos_id"), tokenizer_eos) if i is not None), 0)
    adapter = adapter_for(model_config)  # an encoder (BERT) is an error naming the families that write
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens, strategy=args.strategy, temperature=args.temperature,
        top_k=args.top_k, top_p=args.top_p, num_beams=args.num_beams, length_penalty=args.length_penalty,
        length_penalty_style=args.length_penalty_style, early_stopping=args.early_stopping, eos_id=eos_id,
        pad_id=model_config.pad_token_id)
    if adapter.is_encoder_decoder:  # T5-style: the prompt is the encoder input, ended by EOS as in training
        encoded = [tokenizer.encode(p) + ([tokenizer_eos] if tokenizer_eos is not None else []) for p in prompts]
    else:
        encoded = [tokenizer.encode(p) or [start_id] for p in prompts]  # an empty prompt starts from BOS/EOS
    length = max(map(len, encoded))
    rng = jax.random.key(args.seed)
    for start in range(0, len(encoded), args.batch_size):
        chunk = encoded[start:start + args.batch_size]
        rows = len(chunk)
        chunk = chunk + [chunk[-1]] * (args.batch_size - rows if len(encoded) > args.batch_size else 0)
        tokens, mask = pad_prompts(chunk, model_config.pad_token_id, args.padding_side, length)
        with shd.mesh_context(run.mesh, run.rules):  # on the mesh the params were restored onto
            out = generate(adapter, run.params, tokens, mask, config=config, rng=jax.random.fold_in(rng, start))
        out_tokens, out_lengths = jax.device_get((out.tokens, out.lengths))
        for i in range(rows):
            ids = [int(t) for t in out_tokens[i, :out_lengths[i]]]
            if ids and ids[-1] == eos_id:
                ids = ids[:-1]
            print(f"=== [{start + i}] {prompts[start + i]!r} (step {step}, {len(ids)} new tokens)")
            if adapter.is_encoder_decoder:
                print(tokenizer.decode(ids))
            else:  # decode with the prompt: sentencepiece drops a leading space from new tokens decoded alone
                prompt_ids = encoded[start + i]
                print(prompts[start + i] + tokenizer.decode(prompt_ids + ids)[len(tokenizer.decode(prompt_ids)):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
