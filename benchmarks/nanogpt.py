"""nanoGPT's own train.py against `python -m jaxlm.pretrain` on nanoGPT's README CPU recipe (shakespeare_char: 4 layers,
4 heads, width 128, context 64, batch 12, 2000 iterations, no dropout), one after the other on the same machine:
wall time, seconds per step and the final validation loss of each.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT          # once (torch and numpy are all it needs)
    .venv/bin/python benchmarks/nanogpt.py --nanogpt_dir=../nanoGPT    # ~3 + ~3 min on 2 cores
    .venv/bin/python benchmarks/nanogpt.py --nanogpt_dir=../nanoGPT --steps=50   # a smoke run (~1 min)

--nanogpt_dir is a checkout, or a bare clone / mirror (`git clone --mirror`): its HEAD is exported then. Nothing is
downloaded: nanoGPT's data/shakespeare_char/prepare.py fetches the text, so the benchmark writes what it would write
(train.bin, val.bin, meta.pkl: the first 90% of the characters train, the last 10% validate, uint16 ids of the
sorted characters) from ../shared/data/tinyshakespeare/input.txt into a temporary copy of the repository, and runs

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1 \
        --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 \
        --dropout=0.0

there (--max_iters / --lr_decay_iters follow --steps; --eval_interval too when --steps is no multiple of 250), then
`python -m jaxlm.pretrain --config=configs/pretrain/shakespeare_char.py --config.train.num_steps=STEPS` as a user
would run it: with the environment of this process (XLA_FLAGS dropped: one CPU device) and, by default, an empty
XLA compilation cache (`--jaxlm_cache=user` keeps the user's, where a second run loads its compiled steps).

Columns: wall = the whole command, start-up and evaluation included (what `time` says); s/step = nanoGPT's median
iteration time (its own `time ... ms` lines) and jaxlm's steady step time (summary.json `step_time_s`: evaluation,
checkpoints and the first, compiling call left out); val loss = nanoGPT's last `estimate_loss` (20 random batches
of val.bin) and jaxlm's final evaluation (the whole validation split); others = the cores other processes kept busy
meanwhile (from /proc/stat; 0 = a quiet machine).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from machine import cpu_snapshot, print_table, system_line  # noqa: E402  (benchmarks/machine.py)

from jaxlm.config_defaults import shared_data  # noqa: E402

INPUT = shared_data("tinyshakespeare", "input.txt")  # the path the config reads ($JAXLM_SHARED_DATA or ../shared/data)
CONFIG = os.path.join("configs", "pretrain", "shakespeare_char.py")
NANOGPT_FILES = ("train.py", "model.py", "configurator.py", "config")
README_RECIPE = ("--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                 "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--dropout=0.0")
EVAL_INTERVAL = 250  # config/train_shakespeare_char.py


def write_shakespeare_char(input_path: str, out_dir: str) -> dict:
    """What nanoGPT's data/shakespeare_char/prepare.py writes, without its download."""
    with open(input_path) as f:  # prepare.py: open(input_file_path, 'r')
        data = f.read()
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}
    n = len(data)
    train_ids = np.array([stoi[c] for c in data[:int(n * 0.9)]], dtype=np.uint16)
    val_ids = np.array([stoi[c] for c in data[int(n * 0.9):]], dtype=np.uint16)
    os.makedirs(out_dir, exist_ok=True)
    train_ids.tofile(os.path.join(out_dir, "train.bin"))
    val_ids.tofile(os.path.join(out_dir, "val.bin"))
    with open(os.path.join(out_dir, "meta.pkl"), "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return {"chars": n, "vocab_size": len(chars), "train": len(train_ids), "val": len(val_ids)}


def nanogpt_copy(source: str, into: str) -> str:
    """A working copy of nanoGPT's files: from a checkout, or HEAD of a bare clone / mirror."""
    source = os.path.abspath(os.path.expanduser(source))
    if os.path.isfile(os.path.join(source, "train.py")):
        for name in NANOGPT_FILES:
            (shutil.copytree if os.path.isdir(os.path.join(source, name)) else shutil.copy)(
                os.path.join(source, name), os.path.join(into, name))
        return "checkout " + source
    if os.path.isfile(os.path.join(source, "HEAD")) and os.path.isdir(os.path.join(source, "objects")):
        archive = subprocess.run(["git", f"--git-dir={source}", "archive", "HEAD", *NANOGPT_FILES],
                                 check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
        commit = subprocess.run(["git", f"--git-dir={source}", "rev-parse", "--short", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
        return f"git {source} at {commit}"
    raise SystemExit(f"--nanogpt_dir={source} is neither a nanoGPT checkout (no train.py) nor a git directory: "
                     "git clone https://github.com/karpathy/nanoGPT")


def timed(cmd: list[str], cwd: str, env: dict, log_path: str) -> tuple[float, float, str]:
    """Runs cmd; (wall s, others' busy cores, its output). Output also goes to log_path."""
    t0, own0, busy0 = cpu_snapshot(include_children=True)
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t1, own1, busy1 = cpu_snapshot(include_children=True)
    with open(log_path, "w") as f:
        f.write(proc.stdout)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed (rc {proc.returncode}); output in {log_path}:\n"
                         f"{proc.stdout[-3000:]}")
    wall = t1 - t0
    return wall, max(0.0, ((busy1 - busy0) - (own1 - own0)) / wall), proc.stdout


def run_nanogpt(args, tmp: str) -> dict:
    repo = os.path.join(tmp, "nanoGPT")
    os.makedirs(repo)
    where = nanogpt_copy(args.nanogpt_dir, repo)
    data = write_shakespeare_char(INPUT, os.path.join(repo, "data", "shakespeare_char"))
    cmd = [args.nanogpt_python, "train.py", "config/train_shakespeare_char.py", *README_RECIPE,
           f"--max_iters={args.steps}", f"--lr_decay_iters={args.steps}", f"--out_dir={os.path.join(tmp, 'out')}"]
    if args.steps % EVAL_INTERVAL:
        cmd.append(f"--eval_interval={args.steps}")
    print(f"nanoGPT ({where}; {data['train']:,} train / {data['val']:,} val characters): {' '.join(cmd)}", flush=True)
    wall, others, out = timed(cmd, repo, dict(os.environ), os.path.join(tmp, "nanogpt.log"))
    evals = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", out)
    times = [float(t) for it, t in re.findall(r"iter (\d+): loss [\d.]+, time ([\d.]+)ms", out) if int(it) > 0]
    step, _, val = evals[-1]
    return {"wall_s": wall, "others": others, "s_per_step": statistics.median(times) / 1e3,
            "val_loss": float(val), "eval_step": int(step), "command": " ".join(cmd)}


def run_jaxlm(args, tmp: str) -> dict:
    workdir = os.path.join(tmp, "jaxlm")
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user's shell has
    if args.jaxlm_cache == "cold":
        env["JAXLM_COMPILATION_CACHE"] = os.path.join(tmp, "xla-cache")
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "jaxlm.pretrain", f"--config={CONFIG}", f"--workdir={workdir}",
           f"--config.train.num_steps={args.steps}", "--config.train.progress_bar=False", *args.jaxlm_args]
    print(f"jaxlm ({args.jaxlm_cache} compilation cache): {' '.join(cmd)}", flush=True)
    wall, others, _ = timed(cmd, ROOT, env, os.path.join(tmp, "jaxlm.log"))
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    return {"wall_s": wall, "others": others, "s_per_step": summary["step_time_s"],
            "val_loss": summary["final_eval"]["loss"], "eval_step": summary["final_step"],
            "first_step_s": summary["first_step_s"], "command": " ".join(cmd)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nanogpt_dir", default=os.environ.get("NANOGPT_DIR", os.path.join(ROOT, "..", "nanoGPT")),
                   help="a nanoGPT checkout or bare clone (default $NANOGPT_DIR, else ../nanoGPT)")
    p.add_argument("--nanogpt_python", default=sys.executable, help="a python with torch and numpy")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--only", choices=("both", "nanogpt", "jaxlm"), default="both")
    p.add_argument("--jaxlm_cache", choices=("cold", "user"), default="cold",
                   help="cold: an empty XLA compilation cache (compiles, as a first run does); user: the user's")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, workdir)")
    p.add_argument("jaxlm_args", nargs="*", help="more jaxlm.pretrain flags, after --")
    args = p.parse_args()
    if not os.path.exists(INPUT):
        raise SystemExit(f"{INPUT} not found (../shared/data/tinyshakespeare/input.txt)")
    tmp = tempfile.mkdtemp(prefix="jaxlm-nanogpt-")
    results = {}
    try:
        if args.only in ("both", "nanogpt"):
            results["nanoGPT train.py (torch, eager)"] = run_nanogpt(args, tmp)
        if args.only in ("both", "jaxlm"):
            results["jaxlm.pretrain"] = run_jaxlm(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n# nanoGPT shakespeare_char, {args.steps} steps, {datetime.date.today().isoformat()}\n")
    print(system_line(("jax", "jaxlib", "flax", "optax", "grain", "torch", "numpy")) + "\n")
    rows = [[name, f"{r['wall_s']:.1f}", f"{r['s_per_step'] * 1e3:.1f} ms", f"{r['val_loss']:.4f} (step "
             f"{r['eval_step']})", f"{r.get('first_step_s', 0.0):.1f}" if "first_step_s" in r else "-",
             f"{r['others']:.2f}"] for name, r in results.items()]
    print_table(["run", "wall s", "s/step", "final val loss", "compile + first call s", "others"], rows)
    if len(results) == 2:
        ours, theirs = results["jaxlm.pretrain"], results["nanoGPT train.py (torch, eager)"]
        print(f"\njaxlm / nanoGPT wall time: {ours['wall_s'] / theirs['wall_s']:.2f}x (target <= 0.8x); "
              f"val loss {ours['val_loss']:.4f} vs {theirs['val_loss']:.4f} "
              f"({ours['val_loss'] - theirs['val_loss']:+.4f})")


if __name__ == "__main__":
    main()
