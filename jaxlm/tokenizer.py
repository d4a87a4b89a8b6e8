"""Tokenizer command line: train a sentencepiece model with jaxlm's special tokens, or inspect one.

    python -m jaxlm.tokenizer train --input 'corpus/*.txt,extra.txt' --vocab_size 32000 \
        --model_type unigram --output tokenizers/wiki32k
    python -m jaxlm.tokenizer train --input pydoc --vocab_size 1000 --output /tmp/pydoc1k
    python -m jaxlm.tokenizer info tokenizers/wiki32k.model

`--input pydoc` trains on the Python manual shipped with CPython (offline quickstart).
"""

from __future__ import annotations

import argparse
import sys

from jaxlm.data.tokenizer import Tokenizer, train_tokenizer


def _describe(tokenizer: Tokenizer) -> str:
    specials = " ".join(f"{k}={v}" for k, v in tokenizer.special_tokens().items())
    return f"{tokenizer.model_file}: vocab_size={tokenizer.vocab_size} {specials}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a sentencepiece model")
    train.add_argument("--input", required=True,
                       help="FILE_OR_GLOB[,...] (one sentence per line), or 'pydoc'")
    train.add_argument("--vocab_size", type=int, required=True)
    train.add_argument("--model_type", choices=("unigram", "bpe"), default="unigram")
    train.add_argument("--output", required=True, help="PREFIX: writes PREFIX.model and PREFIX.vocab")
    train.add_argument("--num_sentinels", type=int, default=0, help="T5 <extra_id_i> tokens to add")
    train.add_argument("--byte_fallback", action="store_true",
                       help="unknown characters become byte pieces (needs vocab_size > ~300)")
    train.add_argument("--character_coverage", type=float, default=0.9995)
    train.add_argument("--input_sentence_size", type=int, default=2_000_000,
                       help="sample at most this many lines")
    info = commands.add_parser("info", help="print vocab size and special ids of a .model file")
    info.add_argument("model")
    args = parser.parse_args(argv)

    if args.command == "info":
        print(_describe(Tokenizer(args.model)))
        return 0
    inputs = args.input
    if inputs == "pydoc":
        from jaxlm.data.corpus import pydoc_documents

        inputs = iter([text for _, text in pydoc_documents()])
    tokenizer = train_tokenizer(
        inputs, args.output, args.vocab_size, args.model_type, num_sentinels=args.num_sentinels,
        byte_fallback=args.byte_fallback, character_coverage=args.character_coverage,
        input_sentence_size=args.input_sentence_size)
    print(_describe(tokenizer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
