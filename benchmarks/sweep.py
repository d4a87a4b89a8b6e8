"""K fine-tuning trials vmapped (`jaxlm.sweep`) against the same K trials run one after another (`jaxlm.finetune`),
on the CPU jax finds (one device).

    .venv/bin/python benchmarks/sweep.py                       # BERT-tiny-like (2 x 128), K = 8, SST-2 subset
    .venv/bin/python benchmarks/sweep.py --model mini --trials 8 --epochs 1

Workload: configs/finetune/sst2.py on the first --train sentences of ../shared/data/glue/SST-2 (dev: the first
--dev), max_len 64, batch 32, AdamW with 10% warmup, dropout on, the dev set scored at every epoch end; the
backbone is a randomly initialised BERT written as a pretraining checkpoint (a sweep's cost does not depend on the
weights) and the bytes tokenizer. The K trials are lr {1e-4, 3e-4} x seeds 0 .. K/2 - 1. Each mode runs in a fresh
subprocess (no compile cache, no allocator state carried over): "sweep" is one `sweep.run`, "sequential" K
`finetune.run` calls in one process (a sequential sweep of separate commands would add K - 1 interpreter and jax
start-ups on top); "sweep vmap_width=1" is the sweep's one program with its trials stepped one after another inside
it (lax.map) instead of vmapped. The modes must agree: the table's last column is the largest difference between
a trial's final dev loss there and in the sequential runs.

Each row's "others" is how many cores other processes kept busy while it ran (from /proc/stat; 0 = quiet).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from machine import cpu_model, cpu_snapshot  # noqa: E402  (benchmarks/machine.py)

SST2 = os.path.join(ROOT, "..", "shared", "data", "glue", "SST-2")
MODELS = {  # the BERT miniatures of Turc et al. 2019
    "tiny": dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=512),
    "mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
}
RATES = (1e-4, 3e-4)


# ----------------------------------------------------------------------------------------- the worker
def _backbone(workdir: str, model: str) -> str:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jaxlm.models import build_model, get_model_config
    from jaxlm.train import TrainState, make_checkpoint_manager, save_checkpoint

    config = get_model_config("bert", None, **MODELS[model], max_position_embeddings=64, vocab_size=264)
    params = nn.unbox(build_model(config).init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"])
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.adamw(1e-3).init(params),
                       rng=jnp.zeros((2,), jnp.uint32))
    manager = make_checkpoint_manager(workdir, async_save=False)
    save_checkpoint(manager, 0, state, config={"model": {"family": "bert"}, "model_config": dataclasses.asdict(config)})
    manager.wait_until_finished()
    manager.close()
    return workdir


def _config(args, backbone: str):
    from jaxlm.config_defaults import load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "sst2.py"))
    config.init_checkpoint, config.tokenizer = backbone, "bytes"
    config.data.update(max_len=64, train_limit=args.train, eval_limit=args.dev)
    config.train.update(batch_size=32, eval_batch_size=64, num_epochs=float(args.epochs), log_every=1000,
                        progress_bar=False, async_checkpointing=False, accounting=False)
    return config


def worker(args) -> dict:
    from jaxlm import finetune, sweep

    tmp = tempfile.mkdtemp(prefix="jaxlm-sweep-bench-")
    config = _config(args, _backbone(os.path.join(tmp, "backbone"), args.model))
    trials = sweep.make_trials(list(RATES), seeds=list(range(args.trials // len(RATES))))
    start = cpu_snapshot(include_children=True)
    if args.worker.startswith("sweep"):
        width = int(args.worker.partition("width=")[2] or 0)
        result = sweep.run(config, os.path.join(tmp, "sweep"), trials, vmap_width=width)
        final = [t["final"]["loss"] for t in result["trials"]]
        steps, timing = result["num_steps"], result["timing"]
        compile_s, steady = timing["first_step_s"], timing["steady_step_s"]
    else:
        final, compile_s, steady = [], 0.0, 0.0
        for t in trials:
            summary = finetune.run(sweep.trial_config(config, t), os.path.join(tmp, f"trial{t.index}"))
            final.append(summary["final_eval"]["loss"])
            compile_s += summary["first_step_s"]
            steady += summary["step_time_s"]
            steps = summary["final_step"]
    wall, own, busy = (e - s for e, s in zip(cpu_snapshot(include_children=True), start))
    return {"mode": args.worker, "trials": len(trials), "steps": steps, "wall": wall, "cpu": own,
            "others": max(busy - own, 0.0) / wall, "first_step_s": compile_s, "steady_step_s": steady,
            "final_dev_loss": final}


# ----------------------------------------------------------------------------------------- the table
def run_mode(args, mode: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--model", args.model, "--trials",
           str(args.trials), "--epochs", str(args.epochs), "--train", str(args.train), "--dev", str(args.dev)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)  # one CPU device
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"{mode} worker failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--trials", type=int, default=8, help="K: an even number (two learning rates)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train", type=int, default=512, help="training sentences")
    parser.add_argument("--dev", type=int, default=256, help="dev sentences")
    parser.add_argument("--json", default="", help="also write the raw rows here")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    if not os.path.isfile(os.path.join(SST2, "train.tsv")):
        sys.exit(f"SST-2 not found at {SST2}")
    if args.trials < 2 or args.trials % len(RATES):
        sys.exit(f"--trials={args.trials} must be a positive multiple of {len(RATES)}")
    load = os.getloadavg()
    rows = [run_mode(args, mode) for mode in ("sweep", "sweep vmap_width=1", "sequential")]
    sequential = rows[-1]
    m = MODELS[args.model]
    print(f"# jaxlm sweep benchmark\n\n{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("command: python benchmarks/sweep.py " + " ".join(sys.argv[1:]))
    print(f"load average at start (1/5/15 min): {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"\nBERT-{args.model} ({m['num_layers']} layers x {m['hidden_size']}) on SST-2 ({args.train} train / "
          f"{args.dev} dev sentences, max_len 64, batch 32, {args.epochs} epochs = {sequential['steps']} steps), "
          f"K = {args.trials} trials (lr {', '.join(f'{r:g}' for r in RATES)} x {args.trials // len(RATES)} seeds)\n")
    header = ["mode", "wall s", "vs sequential", "setup+compile+1st step s", "steady s / trial-step", "CPU s",
              "others", "max |dev loss diff|"]
    table = []
    for r in rows:
        per_trial_step = r["steady_step_s"] / r["trials"]
        table.append([f"{r['mode']} ({r['trials']} trials)", f"{r['wall']:.1f}",
                      f"{sequential['wall'] / r['wall']:.2f}x", f"{r['first_step_s']:.1f}", f"{per_trial_step:.4f}",
                      f"{r['cpu']:.1f}", f"{r['others']:.2f}",
                      "-" if r is sequential else
                      f"{max(abs(a - b) for a, b in zip(r['final_dev_loss'], sequential['final_dev_loss'])):.1e}"])
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print("\nsteady s / trial-step: the mean step time after the first, divided by the trials it trains (sweep: "
          "one step trains all K; sequential: the mean over the K runs' step times, one trial each). vmap_width=1: "
          "the same one program, its trials stepped one after another inside it (lax.map) instead of vmapped.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
