"""LoRA against full fine-tuning of the same model: trainable parameters, optimizer-state memory, step time.

    .venv/bin/python benchmarks/lora.py                     # BERT 4 layers x 256, batch 16, seq 128, r = 8
    .venv/bin/python benchmarks/lora.py --layers 6 --hidden 384 --heads 12 --batch 32 --seq 64 --rank 16

The model is a random BERT sequence classifier (fp32, 30,522-token vocabulary, 4 x hidden MLP, dropout 0.1 on),
trained on synthetic token ids with AdamW + global-norm clipping through jaxlm's own step builder: full fine-tuning
through `train.jit_train_step`, LoRA through `jaxlm.train.lora` (the backbone frozen and passed to the step as an
argument, the adapters + head trained). Rows:
  full                    every parameter trains (the optimizer holds Adam's two moments for all of them)
  LoRA q,v                adapters on the attention query / value projections (Hu et al.'s choice)
  LoRA attention,mlp      adapters on every attention projection and both MLP kernels

Timed in one process, one sitting: every row is compiled and warmed up first, then the timed rounds alternate
between the rows (--rounds x --steps steps each), so a change in the machine's load hits all of them; step time is
the median over the rounds (best also shown). "opt state MB" is the optimizer state's size (Adam's moments + the
count); "XLA temp MB" the compiled step's temporary buffers (memory_analysis). Each row's "others" is how many
cores other processes kept busy while it ran (from /proc/stat; 0 = quiet), as benchmarks/train_step.py records it.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for path in (ROOT, os.path.join(ROOT, "benchmarks")):
    if path not in sys.path:
        sys.path.insert(0, path)  # run from a checkout without installing jaxlm

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from train_step import StepTimer, system_line  # noqa: E402

from jaxlm import sharding as shd  # noqa: E402
from jaxlm import train  # noqa: E402
from jaxlm.models import get_model_config  # noqa: E402
from jaxlm.tasks.base import apply_model, ce_metrics  # noqa: E402
from jaxlm.tasks.finetuning import task_model  # noqa: E402
from jaxlm.train import lora  # noqa: E402


def _loss_fn(model):
    def loss_fn(params, batch, rng):
        loss, acc, n = ce_metrics(apply_model(model, params, batch, rng)["logits"], batch["labels"],
                                  batch["example_weights"])
        return loss, {"accuracy": acc, "num_tokens": n}
    return loss_fn


def _batch(batch: int, seq: int, vocab: int) -> dict:
    rng = np.random.default_rng(0)
    inputs = rng.integers(5, vocab, (batch, seq)).astype(np.int32)
    return {"inputs": inputs, "segment_ids": np.ones_like(inputs), "token_types": np.zeros_like(inputs),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), inputs.shape).copy(),
            "labels": (inputs[:, 0] % 2).astype(np.int32), "example_weights": np.ones((batch,), np.float32)}


def build_row(name: str, model, lora_config: lora.LoraConfig, batch: dict, mesh, optimizer_config) -> dict:
    """The row's state, jitted step and sizes; compiled and warmed up (2 untimed steps)."""
    x = {k: batch[k][:1] for k in ("inputs", "segment_ids", "token_types", "positions")}
    init_fn = lambda rng: model.init(rng, **x)  # noqa: E731
    abstract = unboxed_shapes(init_fn)
    tx, schedule = train.make_optimizer(optimizer_config, num_steps=1000,
                                        params=lora.optimizer_params(abstract, lora_config))
    state, layout = train.create_train_state(init_fn, lora.base_optimizer(tx, lora_config), jax.random.key(0), mesh)
    sharding = shd.batch_sharding(mesh)
    if lora_config.enabled:
        run = lora.adapt(state, layout, init_fn, lora_config, tx, mesh)
        state = run.state
        step = run.jit_train_step(_loss_fn(model), tx, sharding, learning_rate_fn=schedule)
        jitted_args = (state, run.frozen, None)
    else:
        step = train.jit_train_step(train.make_train_step(_loss_fn(model), tx, learning_rate_fn=schedule), layout,
                                    sharding, mesh)
        jitted_args = (state, None)
    global_batch = shd.host_local_to_global(batch, mesh, sharding)
    with shd.mesh_context(mesh, shd.DEFAULT_RULES):
        args = tuple(global_batch if a is None else a for a in jitted_args)
        compiled = step.jitted.lower(*args).compile()
    temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
    for _ in range(2):
        state, metrics = step(state, global_batch)
    jax.block_until_ready(metrics)
    return dict(name=name, step=step, state=state, batch=global_batch, timer=StepTimer(),
                trainable=lora.count_params(state.params), total=lora.count_params(abstract),
                opt_bytes=lora.tree_bytes(state.opt_state), temp_bytes=temp, losses=[float(metrics["loss"])])


def unboxed_shapes(init_fn):
    return nn.unbox(jax.eval_shape(init_fn, jax.random.key(0))["params"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--steps", type=int, default=3, help="timed steps per row per round")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)

    config = get_model_config("bert", "base", num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads,
                              intermediate_size=4 * args.hidden, max_position_embeddings=max(512, args.seq))
    model = task_model(config, "classification", 2)
    mesh = shd.make_mesh()
    batch = _batch(args.batch, args.seq, config.vocab_size)
    optimizer_config = dict(learning_rate=1e-4, warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0)
    rows = [build_row("full", model, lora.LoraConfig(), batch, mesh, optimizer_config)]
    for targets, label in (("query,value", "q,v"), ("attention,mlp", "attention,mlp")):
        cfg = lora.LoraConfig(rank=args.rank, alpha=args.alpha, targets=targets)
        rows.append(build_row(f"LoRA r={args.rank} {label}", model, cfg, batch, mesh, optimizer_config))

    for _ in range(args.rounds):
        for row in rows:
            row["timer"].start()
            for _ in range(args.steps):
                row["state"], metrics = row["step"](row["state"], row["batch"])
            jax.block_until_ready(metrics)
            row["timer"].stop()
            row["losses"].append(float(metrics["loss"]))

    print("# LoRA vs full fine-tuning (benchmarks/lora.py)\n")
    print(system_line())
    print(f"BERT {args.layers} layers x {args.hidden} ({args.heads} heads, MLP {4 * args.hidden}), vocab "
          f"{config.vocab_size}, batch {args.batch} x seq {args.seq}, fp32, AdamW, {jax.device_count()} device(s); "
          f"{args.rounds} rounds x {args.steps} steps, rows alternating\n")
    header = ["fine-tuning", "trainable params", "% of model", "opt state MB", "vs full", "XLA temp MB",
              "step s", "best s", "vs full", "others"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    full = rows[0]
    for row in rows:
        per_step = [w / args.steps for w in row["timer"].wall]
        median, best = statistics.median(per_step), min(per_step)
        row["median"] = median
        others = row["timer"].summary()["others_cores"]
        temp = "-" if row["temp_bytes"] is None else f"{row['temp_bytes'] / 2**20:.1f}"
        print(f"| {row['name']} | {row['trainable']:,} | {100 * row['trainable'] / row['total']:.2f}% | "
              f"{row['opt_bytes'] / 2**20:.2f} | {row['opt_bytes'] / full['opt_bytes']:.3f}x | {temp} | "
              f"{median:.3f} | {best:.3f} | {median / full['median']:.2f}x | {others:.2f} |")
    print(f"\nmodel parameters: {full['total']:,}; losses (first -> last timed): " + "; ".join(
        f"{r['name']} {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}" for r in rows))
    assert all(np.isfinite(r["losses"]).all() for r in rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
