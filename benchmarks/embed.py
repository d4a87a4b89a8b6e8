"""Sentence-embedding throughput of jaxlm (jaxlm.embed) against sentence-transformers, on the same model and texts.

    .venv/bin/python benchmarks/embed.py                      # BERT 256 wide x 4 layers, 512 texts, batch 32
    .venv/bin/python benchmarks/embed.py --hidden 512 --layers 4 --texts 1024 --batch 64 --max_seq_length 128

The model is a random BERT (fp32; --hidden / --layers, hidden/64 heads, 4 x hidden MLP) with a WordPiece
vocabulary trained on the texts, built as a SentenceTransformer (Transformer -> Pooling(mean) -> Normalize),
saved, and imported into jaxlm with `jaxlm.convert.sentence_transformers`: both sides run the same weights, the
same tokenization and the same max_seq_length, and the table says how far apart their embeddings are. Texts are
the first --texts sentences of GLUE SST-2's dev.tsv (mixed lengths) when ../shared/data has it, else generated
sentences of 3 to 60 words.

Timed in one process, one sitting, side by side: each implementation is warmed up once (compiles, caches), then
the rounds alternate between them (--rounds, best of them reported), so a change in the machine's load hits both.
Rows:
  jaxlm Embedder.encode   jaxlm.embed.load(run).encode(texts): tokenization, rows sorted by length, bucketed
                          widths, the mesh of this host's devices (one CPU device here)
  jaxlm Encoder reused    the same model through one jaxlm.tasks.embedding.Encoder kept across calls (its jitted
                          function compiled once): what encode() costs without building its encoder each call
  sentence-transformers   SentenceTransformer(dir).encode(texts, batch_size): PyTorch eager, torch's threads
Each row's "others" is how many cores other processes kept busy while it ran (from /proc/stat; 0 = quiet).
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from machine import cpu_snapshot, print_table, system_line  # noqa: E402  (benchmarks/machine.py)

PACKAGES = ("jax", "jaxlib", "flax", "torch", "transformers", "sentence-transformers")  # the versions the report names

SST2_DEV = os.path.join(os.path.dirname(ROOT), "shared", "data", "glue", "SST-2", "dev.tsv")


def timed(fn) -> tuple[object, dict]:
    """fn()'s result and {wall, cpu (this process), others (cores other processes kept busy meanwhile)}."""
    start = cpu_snapshot()
    out = fn()
    wall, own, busy = (e - s for e, s in zip(cpu_snapshot(), start))
    return out, {"wall": wall, "cpu": own, "others": max(busy - own, 0.0) / wall if wall > 0 else None}


def read_texts(n: int, seed: int = 0) -> tuple[list[str], str]:
    if os.path.isfile(SST2_DEV):
        with open(SST2_DEV, encoding="utf-8") as f:
            rows = [line.rstrip("\n").split("\t")[0].strip() for line in f][1:]
        texts = [t for t in rows if t]
        if len(texts) >= n:
            return texts[:n], f"the first {n} sentences of {os.path.relpath(SST2_DEV, ROOT)}"
    rng = random.Random(seed)
    words = ("the a quick brown fox jumps over lazy dog film movie story is was not very good bad funny dull "
             "charming and or but with without its it 's an of to in on for by").split()
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + " ." for _ in range(n)]
    return texts, f"{n} generated sentences of 3 to 60 words"


def build_models(workdir: str, texts: list[str], args) -> tuple[str, str]:
    """(ST directory, jaxlm workdir) of one random BERT with a WordPiece vocabulary trained on `texts`."""
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from tokenizers import BertWordPieceTokenizer

    from jaxlm.convert.sentence_transformers import import_sentence_transformers

    hf_dir, st_dir, run = (os.path.join(workdir, n) for n in ("hf", "st", "run"))
    os.makedirs(hf_dir)
    tokenizer = BertWordPieceTokenizer(lowercase=True)
    tokenizer.train_from_iterator(texts, vocab_size=args.vocab, min_frequency=1, show_progress=False)
    tokenizer.save_model(hf_dir)  # vocab.txt
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=args.hidden,
                                     num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                                     intermediate_size=4 * args.hidden, max_position_embeddings=512)
    transformers.BertModel(config).eval().save_pretrained(hf_dir)
    transformer = Transformer(hf_dir, max_seq_length=args.max_seq_length)
    modules = [transformer, Pooling(transformer.get_embedding_dimension(), pooling_mode="mean"), Normalize()]
    SentenceTransformer(modules=modules, device="cpu").save(st_dir)
    import_sentence_transformers(st_dir, run)
    return st_dir, run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192, help="WordPiece vocabulary trained on the texts (at most)")
    p.add_argument("--texts", type=int, default=512)
    p.add_argument("--batch", type=int, default=32, help="texts per batch, both implementations")
    p.add_argument("--max_seq_length", type=int, default=128, help="tokens per text, both implementations")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per implementation (best reported)")
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    from jaxlm import embed
    from jaxlm.tasks.embedding import Encoder, text_rows

    texts, source = read_texts(args.texts)
    shown = ["benchmarks/embed.py"] + (sys.argv[1:] if argv is None else list(argv))
    print(f"# jaxlm sentence-embedding benchmark\n\n{system_line(PACKAGES)}")
    print(f"command: python {' '.join(shown)}")
    print(f"load average at start (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="jaxlm-embed-bench-") as tmp:
        st_dir, run = build_models(tmp, texts, args)
        st_model = SentenceTransformer(st_dir, device="cpu")
        embedder = embed.load(run, batch_size=args.batch)
        lengths = (text_rows(texts, embedder.tokenizer, args.max_seq_length, embedder.spec.style)["segment_ids"]
                   .sum(1))
        encoder = Encoder(embedder.model, embedder.mesh, embedder.param_shardings, args.batch)

        def reused():
            rows = text_rows(texts, embedder.tokenizer, embedder.max_len, embedder.spec.style)
            return encoder(embedder.params, rows)

        impls = {
            "jaxlm Embedder.encode": lambda: embedder.encode(texts, batch_size=args.batch),
            "jaxlm Encoder reused": reused,
            "sentence-transformers": lambda: st_model.encode(texts, batch_size=args.batch, convert_to_numpy=True,
                                                             show_progress_bar=False),
        }
        warm = {name: timed(fn)[1] for name, fn in impls.items()}  # compiles, caches, allocators
        runs: dict[str, list[dict]] = {name: [] for name in impls}
        outputs = {}
        for _ in range(args.rounds):  # alternating, so a change in load hits every implementation
            for name, fn in impls.items():
                outputs[name], stats = timed(fn)
                runs[name].append(stats)
    reference = np.asarray(outputs["sentence-transformers"], np.float32)
    st_best = min(r["wall"] for r in runs["sentence-transformers"])
    rows = []
    for name, stats in runs.items():
        best = min(stats, key=lambda r: r["wall"])
        diff = float(np.abs(np.asarray(outputs[name], np.float32) - reference).max())
        others = [r["others"] for r in stats if r["others"] is not None]
        rows.append([name, str(args.batch), str(args.max_seq_length), f"{warm[name]['wall']:.2f}",
                     f"{best['wall']:.2f}", " / ".join(f"{r['wall']:.2f}" for r in stats),
                     f"{len(texts) / best['wall']:.0f}", f"{st_best / best['wall']:.2f}x", f"{best['cpu']:.1f}",
                     f"{max(others):.2f}" if others else "-",
                     "-" if name == "sentence-transformers" else f"{diff:.1e}"])
    print(f"\nmodel: random BERT {args.hidden} wide x {args.layers} layers ({max(1, args.hidden // 64)} heads, MLP "
          f"{4 * args.hidden}), vocab {embedder.tokenizer.vocab_size}, Pooling(mean) -> Normalize, fp32; texts: "
          f"{source}; tokens per text (specials included, cut at {args.max_seq_length}): mean "
          f"{lengths.mean():.1f}, min {lengths.min()}, max {lengths.max()}; XLA devices: "
          f"{embedder.mesh.devices.size} CPU; torch threads: {torch.get_num_threads()}\n")
    print_table(["impl", "batch", "max_seq_length", "first call s", "best s", "rounds s", "sentences/s", "vs ST",
                 "CPU s", "others", "max abs diff vs ST"], rows)
    print(f"\nfirst call s: the untimed warm-up (jaxlm compiles there); best s: fastest of {args.rounds} rounds over "
          f"all {len(texts)} texts (rounds s: each, in order); CPU s: this process's CPU seconds in that round; "
          "others: cores kept busy by other processes during the timed rounds (the worst round; 0 = quiet machine); "
          "max abs diff: the last round's embeddings against sentence-transformers'.")
    print(f"load average at end (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
