"""Fine-tuning throughput of jaxlm against Hugging Face transformers' PyTorch, on SST-2 training rows, one CPU device.

    .venv/bin/python benchmarks/finetune.py            # BERT-mini and BERT-base, every row (~15 min on 2 cores)
    .venv/bin/python benchmarks/finetune.py --quick    # BERT-mini only, few steps (a smoke test, ~2 min)
    .venv/bin/python benchmarks/finetune.py --models base --steps 6

Workload: sequence classification (2 labels) on GLUE SST-2's train.tsv rows (../shared/data/glue/SST-2, read in
place; skipped with a message when absent), batch 32, max_len 128, fp32, dropout 0.1 on, AdamW (lr 2e-5, weight
decay 0.01, global-norm clipping at 1.0), random init of the same config on both sides (BERT-base 12 x 768, 12 heads;
BERT-mini 4 x 256, 4 heads; 30522-token embedding table). The token ids are jaxlm's: a sentencepiece vocabulary of
8000 pieces trained here on the rows (no download) and `jaxlm.tasks.classification_features`, `[CLS] text [SEP]`
cut to 128; the very same ids, token types and masks go to both frameworks.

Rows (each framework in its own subprocess, so that torch's and XLA's thread pools never share the cores):
  jaxlm  padded 128   jaxlm.finetune's step (the task model, task loss, make_train_step + jit_train_step, the
                      state donated) on EpochBatches with config.data.length_buckets=(): every batch 32 x 128
  torch  padded 128   BertForSequenceClassification, torch.optim.AdamW (fused, the HF Trainer's default), the same
                      batches: every batch 32 x 128 (equal padding: the frameworks compared on the same work)
  jaxlm  buckets      the same step on EpochBatches with the default length buckets (16, 32, 64, 128): each batch
                      cut to the shortest bucket that holds its rows; one compiled program per bucket
  torch  dynamic      each batch padded to its longest row, as transformers' DataCollatorWithPadding does (the HF
                      Trainer / run_glue.py default)
The timed batches are the first --steps of each row's own seeded epoch order (the two padded rows: the same
batches), after --warmup untimed ones (jaxlm bucketed: after one untimed step of every bucket, so no compile is
timed). examples/s = the timed batches' rows / their wall time (host batch building, transfer and the step, each
step ended with block_until_ready / loss.item()). `others` = cores other processes kept busy meanwhile (0 = quiet).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from machine import cpu_snapshot, print_table, system_line  # noqa: E402  (benchmarks/machine.py)

from jaxlm.config_defaults import shared_data  # noqa: E402

PACKAGES = ("jax", "jaxlib", "flax", "torch", "transformers")
SST2_TRAIN = shared_data("glue", "SST-2", "train.tsv")  # $JAXLM_SHARED_DATA or ../shared/data
MODELS = {"mini": dict(num_layers=4, hidden_size=256, num_heads=4, intermediate_size=1024),
          "base": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072)}
BATCH, MAX_LEN, VOCAB, LR = 32, 128, 30522, 2e-5
BUCKETS = (16, 32, 64, 128)
ROWS = (("jax", "padded 128"), ("torch", "padded 128"), ("jax", "buckets"), ("torch", "dynamic"))
WORKER_TIMEOUT_S = 1800


def prepare_features(workdir: str, vocab_size: int = 8000) -> tuple[str, dict]:
    """SST-2 train rows -> jaxlm's classification features at max_len 128 (npz in workdir) and length stats."""
    import numpy as np

    from jaxlm.data import load_tokenizer, train_tokenizer
    from jaxlm.tasks import classification_features, read_glue
    from jaxlm.tasks.batches import row_lengths

    examples, _ = read_glue(SST2_TRAIN, "sst2")
    prefix = os.path.join(workdir, f"sst2_sp{vocab_size}")
    train_tokenizer(iter([e.text_a for e in examples]), prefix, vocab_size)
    features = classification_features(examples, load_tokenizer(prefix + ".model"), MAX_LEN)
    path = os.path.join(workdir, "features.npz")
    np.savez(path, **features)
    lengths = row_lengths(features["segment_ids"])
    return path, dict(rows=len(examples), mean_len=float(lengths.mean()), p50=float(np.percentile(lengths, 50)),
                      p90=float(np.percentile(lengths, 90)), max_len=int(lengths.max()))


def _epoch(features: dict, buckets: tuple, keys: tuple, bucket_keys: tuple):
    from jaxlm.tasks import EpochBatches

    return EpochBatches(features, BATCH, keys, seed=0, buckets=buckets, bucket_keys=bucket_keys)


def measure(one_step, warmup: int, steps: int) -> dict:
    """`warmup` untimed then `steps` timed calls of one_step() -> (loss, real rows, row length)."""
    import numpy as np

    t = time.perf_counter()
    for _ in range(warmup):
        one_step()
    warmup_s = time.perf_counter() - t
    walls, examples, lengths, losses, others = [], 0, [], [], 0.0
    for _ in range(steps):
        start = cpu_snapshot()
        loss, rows, length = one_step()
        wall, own, busy = (e - s for e, s in zip(cpu_snapshot(), start))
        walls.append(wall)
        examples += rows
        lengths.append(length)
        losses.append(loss)
        others += max(busy - own, 0.0)
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite loss {losses}")
    total = sum(walls)
    return dict(examples_per_s=examples / total, step_s=statistics.median(walls), total_s=total, steps=steps,
                mean_len=statistics.mean(lengths), others=others / total, warmup_s=warmup_s, losses=losses)


def worker_jax(spec: dict) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_compilation_cache", False)
    from jaxlm import sharding, train
    from jaxlm.config_defaults import finetune_config
    from jaxlm.models import get_model_config
    from jaxlm.tasks import TaskSpec, get_task
    from jaxlm.workdir import abstract_params

    features = dict(np.load(spec["features"]))
    task = get_task("classification")
    tspec = TaskSpec(task="classification", format="sst2", labels=("0", "1"), pair=False, style="bert",
                     max_len=MAX_LEN)
    model_config = get_model_config("bert", None, vocab_size=VOCAB, **MODELS[spec["model"]])
    model = task.model(tspec, model_config)
    config = finetune_config()
    config.optimizer.learning_rate = LR
    init_batch = task.init_batch(tspec)
    tx, schedule = train.make_optimizer(config.optimizer, num_steps=10_000,
                                        params=abstract_params(model, init_batch))
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    state, layout = train.create_train_state(lambda rng: model.init(rng, **init_batch), tx, jax.random.key(0), mesh)
    step = train.jit_train_step(train.make_train_step(task.loss_fn(tspec, model), tx, learning_rate_fn=schedule),
                                layout, sharding.batch_sharding(mesh), mesh)
    bucketed = spec["padding"] == "buckets"
    batches = _epoch(features, BUCKETS if bucketed else (), task.device_keys(tspec),
                     task.length_bucket_keys(tspec) if bucketed else ())
    batch_sharding = sharding.batch_sharding(mesh)

    def one_step():
        nonlocal state
        batch = next(batches)
        with sharding.mesh_context(mesh):
            state, metrics = step(state, sharding.host_local_to_global(batch, mesh, batch_sharding))
        return float(jax.block_until_ready(metrics["loss"])), int(batch["example_weights"].sum()), \
            batch["inputs"].shape[1]

    t = time.perf_counter()
    if bucketed:  # one untimed step of each bucket (its compile), on batches of a later epoch
        first = {}
        for index, (_, length) in enumerate(batches.epoch_plan(1)):
            first.setdefault(length, index)
        for index in first.values():
            batches.set_state({**batches.get_state(), "epoch": 1, "batch": index})
            one_step()
        batches.set_state({**batches.get_state(), "epoch": 0, "batch": 0})
    compile_s = time.perf_counter() - t
    result = measure(one_step, spec["warmup"], spec["steps"])
    per_bucket = {}
    if bucketed and spec.get("per_bucket", 0):  # each bucket's own step time -> the epoch's examples/s
        plan = batches.epoch_plan(2)
        for length in batches.buckets:
            index = next(i for i, (_, b) in enumerate(plan) if b == length)
            batches.set_state({**batches.get_state(), "epoch": 2, "batch": index})
            walls = []
            for _ in range(spec["per_bucket"]):
                t = time.perf_counter()
                one_step()
                walls.append(time.perf_counter() - t)
                batches.set_state({**batches.get_state(), "epoch": 2, "batch": index})
            per_bucket[length] = statistics.median(walls)
        epoch_s = sum(per_bucket[b] * c for b, c in batches.batches_per_bucket.items())
        result["epoch_examples_per_s"] = len(features["inputs"]) / epoch_s
    return dict(**result, bucket_warmup_s=compile_s, buckets=batches.batches_per_bucket, bucket_step_s=per_bucket,
                flops_per_row_128=task.train_flops_per_example(tspec, model_config))


def worker_torch(spec: dict) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    m = MODELS[spec["model"]]
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=m["hidden_size"],
                                     num_hidden_layers=m["num_layers"], num_attention_heads=m["num_heads"],
                                     intermediate_size=m["intermediate_size"], num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    model.train()
    features = dict(np.load(spec["features"]))
    keys = ("inputs", "segment_ids", "token_types", "labels", "example_weights")
    batches = _epoch(features, (), keys, ())  # the padded rows' batches, in the same order
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, eps=1e-6, fused=True)
    params = list(model.parameters())
    dynamic = spec["padding"] == "dynamic"

    def one_step():
        batch = next(batches)
        real = batch["example_weights"] > 0  # the epoch's short last batch: only its real rows (as a collator)
        length = int(batch["segment_ids"][real].sum(1).max()) if dynamic else MAX_LEN
        t = {k: torch.from_numpy(np.ascontiguousarray(batch[k][real][:, :length] if batch[k].ndim > 1
                                                      else batch[k][real])).long() for k in keys[:4]}
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=t["inputs"], attention_mask=t["segment_ids"], token_type_ids=t["token_types"],
                    labels=t["labels"])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(out.loss.detach()), int(real.sum()), length

    result = measure(one_step, spec["warmup"], spec["steps"])
    return dict(**result, threads=torch.get_num_threads(),
                attn_impl=getattr(model.config, "_attn_implementation", None))


WORKERS = {"jax": worker_jax, "torch": worker_torch}


def run_worker(spec: dict, xla_flags: str) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags  # never the tests' 8 simulated devices
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="BERT-mini only, 3 timed steps")
    parser.add_argument("--models", default="mini,base", help="comma-separated: mini, base")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per row (default 24 mini / 8 base)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--xla_flags", default="", help="XLA_FLAGS for the jaxlm rows (default: none)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print("RESULT " + json.dumps(WORKERS[spec["kind"]](spec)), flush=True)
        return 0
    if not os.path.isfile(SST2_TRAIN):
        print(f"skipped: SST-2 training rows not found at {SST2_TRAIN} (../shared/data, see its README.md)")
        return 0
    models = ["mini"] if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    print(system_line(PACKAGES))
    print(f"command: {' '.join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:]))}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="jaxlm-bench-finetune-") as tmp:
        path, stats = prepare_features(tmp)
        print(f"SST-2 train: {stats['rows']} rows, tokens per row (with [CLS]/[SEP]) mean {stats['mean_len']:.1f}, "
              f"median {stats['p50']:.0f}, p90 {stats['p90']:.0f}, max {stats['max_len']}")
        table, notes = [], []
        for model in models:
            steps = args.steps or (3 if args.quick else (24 if model == "mini" else 8))
            results = {}
            for kind, padding in ROWS:
                spec = dict(kind=kind, model=model, padding=padding, features=path, steps=steps,
                            warmup=1 if args.quick else args.warmup, per_bucket=1 if args.quick else 2)
                r = run_worker(spec, args.xla_flags)
                results[(kind, padding)] = r
                if "error" in r:
                    print(f"{model} {kind} {padding}: {r['error']}", file=sys.stderr)
            for kind, padding in ROWS:
                r = results[(kind, padding)]
                if "error" in r:
                    table.append([f"BERT-{model}", kind, padding, "error", "-", "-", "-", "-"])
                    continue
                torch_row = results[("torch", "padded 128" if padding == "padded 128" else "dynamic")]
                ratio = (r["examples_per_s"] / torch_row["examples_per_s"]
                         if "error" not in torch_row and kind == "jax" else None)
                table.append([f"BERT-{model}", "jaxlm" if kind == "jax" else "PyTorch", padding,
                              f"{r['examples_per_s']:.1f}", f"{r['step_s']:.3f}", f"{r['mean_len']:.1f}",
                              f"{ratio:.2f}x" if ratio else "-", f"{r['others']:.2f}"])
                if kind == "jax" and padding == "buckets":
                    step_s = ", ".join(f"{b}: {t:.3f} s" for b, t in r["bucket_step_s"].items())
                    dynamic = results[("torch", "dynamic")]
                    versus = (f" = {r['epoch_examples_per_s'] / dynamic['examples_per_s']:.2f}x PyTorch dynamic"
                              if "error" not in dynamic else "")
                    notes.append(f"BERT-{model} jaxlm buckets: batches per epoch {r['buckets']}; step per bucket "
                                 f"{step_s}; a whole epoch at these step times: "
                                 f"{r['epoch_examples_per_s']:.1f} examples/s{versus}")
        print()
        print_table(["model", "impl", "padding", "examples/s", "step s (median)", "tokens/row", "ratio vs torch",
                     "others"], table)
        for note in notes:
            print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
