"""Command line: Hugging Face / sentence-transformers model directory <-> jaxlm workdir.

    python -m jaxlm.convert from-hf --model_dir bert-dir --workdir runs/bert-imported [--scan_layers]
    python -m jaxlm.convert to-hf --workdir runs/bert-imported [--step N] --out hf-out
    python -m jaxlm.convert to-st --workdir runs/embedder [--step N] --out st-out

from-hf writes WORKDIR/checkpoints/0/{state,config} (Orbax; state = TrainState with step 0, the params,
opt_state None), WORKDIR/tokenizer/ (the model's HF tokenizer files) and WORKDIR/jaxlm_config.json.
to-hf reads any jaxlm workdir (an import or a pretraining run) and writes config.json + model.safetensors
(+ the tokenizer files) that transformers' from_pretrained loads.

A sentence-transformers directory (one with modules.json) imports as its whole pipeline: Transformer -> Pooling
-> [Dense] -> [Normalize] become an embedding run (task 'retrieval', params {backbone, head}) that jaxlm.embed,
evaluate, predict and fine-tuning read; to-st writes such a run (an import or a retrieval / similarity run
fine-tuned in jaxlm) back as a directory SentenceTransformer(DIR) loads (jaxlm.convert.sentence_transformers).

None writes into a non-empty directory (an import beside a pretraining run's steps would be read as its step
0; an export over another model's files would mix them) unless --overwrite: from-hf then replaces the whole
workdir, to-hf / to-st remove what the new export did not write (a stale model.safetensors.index.json, shards).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys


def _size(text: str) -> int:
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    upper = text.strip().upper()
    for unit, factor in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if upper.endswith(unit):
            return int(float(upper[:-len(unit)]) * factor)
    return int(upper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxlm.convert", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("from-hf", help="HF (or sentence-transformers) model directory -> jaxlm workdir "
                              "(Orbax checkpoint at step 0)")
    imp.add_argument("--model_dir", required=True, help="local directory with config.json and the weights, or a "
                     "sentence-transformers directory (modules.json): imported as its whole embedding pipeline")
    imp.add_argument("--workdir", required=True, help="output jaxlm workdir")
    imp.add_argument("--scan_layers", action="store_true", help="store params in the scanned (stacked) layout")
    imp.add_argument("--seed", type=int, default=0, help="seed for heads the checkpoint lacks")
    imp.add_argument("--overwrite", action="store_true", help="replace a non-empty workdir")
    exp = commands.add_parser("to-hf", help="jaxlm workdir -> HF model directory")
    exp.add_argument("--workdir", required=True)
    exp.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    exp.add_argument("--out", required=True, help="output HF model directory")
    exp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    exp.add_argument("--max_shard_size", default=None, help="e.g. 5GB: shard model.safetensors above this")
    exp.add_argument("--overwrite", action="store_true",
                     help="write into a non-empty directory, removing the files this export does not write")
    to_st = commands.add_parser("to-st", help="jaxlm embedding run -> sentence-transformers model directory")
    to_st.add_argument("--workdir", required=True, help="an imported sentence-transformers model or a retrieval / "
                       "similarity run")
    to_st.add_argument("--step", type=int, default=None, help="checkpoint step (default: the best dev one, else "
                       "the latest)")
    to_st.add_argument("--out", required=True, help="output directory for SentenceTransformer(out)")
    to_st.add_argument("--overwrite", action="store_true",
                       help="write into a non-empty directory, removing the files this export does not write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from jaxlm.convert import hf

    try:
        return _run(args, hf)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:  # bad input: say which, no trace
        print(f"error: {e}", file=sys.stderr)
        return 1


def _check_empty(path: str, flag_help: str) -> bool:
    """True when `path` holds files: an error without --overwrite."""
    if not os.path.isdir(path) or not os.listdir(path):
        return False
    raise FileExistsError(f"{path} is not empty ({', '.join(sorted(os.listdir(path))[:5])}, ...); pass "
                          f"--overwrite to {flag_help}")


def _run(args, hf) -> int:
    if args.command == "from-hf":
        return _import(args, hf)
    if not args.overwrite:
        _check_empty(args.out, "write into it")
    if args.command == "to-st":
        from jaxlm.convert import sentence_transformers as st

        result = st.export_sentence_transformers(args.workdir, args.out, step=args.step)
    else:
        result = hf.export_workdir(args.workdir, args.out, step=args.step, dtype=args.dtype,
                                   max_shard_bytes=_size(args.max_shard_size) if args.max_shard_size else None)
    result["removed"] = _remove_stale(args.out, result["files"])
    print(json.dumps(result, indent=1))
    return 0


def _import(args, hf) -> int:
    from jaxlm.convert import sentence_transformers as st

    if not args.overwrite:
        _check_empty(args.workdir, "replace it")
    if st.is_sentence_transformers_dir(args.model_dir):
        imported = st.read_sentence_transformers(args.model_dir, scan_layers=args.scan_layers, seed=args.seed)
    else:
        imported = hf.import_hf(args.model_dir, scan_layers=args.scan_layers, seed=args.seed)
    if args.overwrite and os.path.isdir(args.workdir):  # only once the import has succeeded
        shutil.rmtree(args.workdir)
    layout = "scanned" if args.scan_layers else "unrolled"
    if isinstance(imported, st.EmbeddingImport):
        st.write_embedding_workdir(args.workdir, imported)
        print(f"{args.model_dir} -> {args.workdir}: sentence-transformers model ({st.MODULES_FILE} found), imported "
              f"as an embedding run ({imported.family}, {layout} layout, tokenizer copied)")
        print(imported.summary())
        return 0
    saved = hf.write_workdir(args.workdir, imported, args.model_dir)
    print(f"{args.model_dir} -> {args.workdir}: {imported.family}, {layout} layout, tokenizer "
          f"{'copied' if saved['tokenizer_dir'] else 'absent'}")
    print(imported.report.summary())
    return 0


def _remove_stale(out: str, written_files: list[str]) -> list[str]:
    """--overwrite: removes what another model left in `out` that this export did not write (shards, an index,
    its tokenizer, a module folder or a stale file inside one), and the folders that leaves empty; returns the
    removed paths relative to `out`."""
    if not os.path.isdir(out):
        return []
    written = {os.path.abspath(f) for f in written_files}
    removed = []
    for root, dirs, files in os.walk(out, topdown=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            if os.path.abspath(path) not in written:
                os.remove(path)
                removed.append(os.path.relpath(path, out))
        for name in dirs:
            path = os.path.join(root, name)
            if os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path):
                os.rmdir(path)
    return sorted(removed)


if __name__ == "__main__":
    sys.exit(main())
