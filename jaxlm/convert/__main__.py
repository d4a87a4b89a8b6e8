"""Command line: Hugging Face model directory <-> jaxlm workdir.

    python -m jaxlm.convert from-hf --model_dir bert-dir --workdir runs/bert-imported [--scan_layers]
    python -m jaxlm.convert to-hf --workdir runs/bert-imported [--step N] --out hf-out

from-hf writes WORKDIR/checkpoints/0/{state,config} (Orbax; state = TrainState with step 0, the params,
opt_state None), WORKDIR/tokenizer/ (the model's HF tokenizer files) and WORKDIR/jaxlm_config.json.
to-hf reads any jaxlm workdir (an import or a pretraining run) and writes config.json + model.safetensors
(+ the tokenizer files) that transformers' from_pretrained loads.

Neither writes into a non-empty directory (an import beside a pretraining run's steps would be read as its
step 0; an export over another model's files would mix them) unless --overwrite: from-hf then replaces the
whole workdir, to-hf removes what the new export did not write (a stale model.safetensors.index.json, shards).
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
    imp = commands.add_parser("from-hf", help="HF model directory -> jaxlm workdir (Orbax checkpoint at step 0)")
    imp.add_argument("--model_dir", required=True, help="local directory with config.json and the weights")
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
        if not args.overwrite:
            _check_empty(args.workdir, "replace it")
        imported = hf.import_hf(args.model_dir, scan_layers=args.scan_layers, seed=args.seed)
        if args.overwrite and os.path.isdir(args.workdir):  # only once the import has succeeded
            shutil.rmtree(args.workdir)
        saved = hf.write_workdir(args.workdir, imported, args.model_dir)
        print(f"{args.model_dir} -> {args.workdir}: {imported.family}, "
              f"{'scanned' if args.scan_layers else 'unrolled'} layout, tokenizer "
              f"{'copied' if saved['tokenizer_dir'] else 'absent'}")
        print(imported.report.summary())
        return 0
    if not args.overwrite:
        _check_empty(args.out, "write into it")
    result = hf.export_workdir(args.workdir, args.out, step=args.step, dtype=args.dtype,
                               max_shard_bytes=_size(args.max_shard_size) if args.max_shard_size else None)
    written = {os.path.abspath(f) for f in result["files"]}
    stale = [os.path.join(args.out, n) for n in sorted(os.listdir(args.out))
             if os.path.abspath(os.path.join(args.out, n)) not in written] if os.path.isdir(args.out) else []
    for path in stale:  # --overwrite: what another model left (shards, an index, its tokenizer)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    result["removed"] = [os.path.basename(p) for p in stale]
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
