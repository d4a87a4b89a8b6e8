"""Train-step tokens/s and MFU on one accelerator (GPU or TPU), fused against plain attention, and cached decoding.

    python benchmarks/accelerator.py                    # the full table, ~6-8 min on one H200
    python benchmarks/accelerator.py --quick            # tiny models and batches, a smoke run (CPU too)
    python benchmarks/accelerator.py --workloads gpt2 --steps 20

Workloads (random init, synthetic token ids, AdamW + global-norm clipping in the step, scan on, no remat, the
accelerator defaults: config.model.dtype='auto' = bf16 compute with fp32 params, fp32 softmax / norms / loss):
  gpt2:    GPT-2 small CLM, seq 1024
  bert128: BERT-base MLM+NSP, seq 128, 20 masked positions per row
  bert512: BERT-base MLM+NSP, seq 512, 76 masked positions per row (BERT's phase-2 max_predictions_per_seq)
  t5:      T5-base (v1.0) span corruption, encoder 512 / decoder 114 (T5's pretraining lengths)
Each runs with attention_impl='cudnn' (cuDNN flash attention through jax.nn.dot_product_attention) and 'xla'
(jaxlm's einsums), dropout 0 in both (jax.nn.dot_product_attention has no attention dropout; GPU pretraining
recipes such as MaxText's run without dropout). The per-device batch is the first of a descending ladder whose
step compiles and runs (out-of-memory moves one rung down). MFU = the objective's analytic model FLOPs per step
(jaxlm.objectives, what the training loop reports) / step time / the chip's dense bf16 peak (--peak_tflops,
default by device kind), with the measured bf16 matmul rate printed beside it.

Before the table, a parity check: loss and gradients of small bf16 BERT (padding mask), GPT-2 (causal + segment
mask) and T5 (learned relative bias + padding mask) models with cuDNN against the einsum path, and whether the
compiled step really holds cuDNN's fused attention (its custom call in the HLO).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.extend.backend
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from machine import print_table  # noqa: E402  (benchmarks/machine.py)

from jaxlm import sharding, train  # noqa: E402
from jaxlm.decoding import GenerationConfig, adapter_for, generate  # noqa: E402
from jaxlm.models import build_model, family_of, get_model_config  # noqa: E402
from jaxlm.models.common import to_dtype  # noqa: E402
from jaxlm.objectives import get_objective  # noqa: E402

WORKLOADS = {
    "gpt2": dict(family="gpt2", size="small", objective="clm", seq=1024, batches=(64, 32, 16, 8)),
    "bert128": dict(family="bert", size="base", objective="mlm_nsp", seq=128, max_predictions=20,
                    batches=(512, 256, 128, 64)),
    "bert512": dict(family="bert", size="base", objective="mlm_nsp", seq=512, max_predictions=76,
                    batches=(128, 64, 32, 16)),
    "t5": dict(family="t5", size="base", objective="span_corruption", seq=512, batches=(128, 64, 32, 16)),
}
QUICK_SHAPE = dict(num_layers=2, hidden_size=128, num_heads=2, intermediate_size=256)
QUICK_T5_SHAPE = dict(num_layers=2, num_decoder_layers=2, d_model=128, num_heads=2, d_kv=64, d_ff=256)
# Dense bf16 peak FLOP/s by device kind (vendors' datasheets); MFU is against this.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
                    "TPU v5p": 459.0, "TPU v6 lite": 918.0}
FUSED_ATTENTION_MARKER = "__cudnn$fmha"  # the custom call target of cuDNN's fused attention in XLA's HLO


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--impls", default="cudnn,xla", help="attention_impl values, one row each")
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (after 2 untimed)")
    p.add_argument("--quick", action="store_true", help="2-layer width-128 models, small batches")
    p.add_argument("--peak_tflops", type=float, default=0.0, help="dense bf16 peak; 0 = by device kind")
    p.add_argument("--no_parity", action="store_true")
    p.add_argument("--no_decode", action="store_true")
    p.add_argument("--json", default="", help="also write the rows here")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------- pieces
def model_config(w: dict, impl: str, quick: bool, **extra):
    dropout = {"bert": dict(hidden_dropout=0.0, attention_dropout=0.0), "gpt2": dict(dropout=0.0,
               attention_dropout=0.0), "t5": dict(dropout_rate=0.0)}[w["family"]]
    shape = (QUICK_T5_SHAPE if w["family"] == "t5" else QUICK_SHAPE) if quick else {}
    if w["family"] == "gpt2":
        shape = {**shape, "max_position_embeddings": max(1024, w["seq"])}
    if w["family"] == "bert":
        shape = {**shape, "max_position_embeddings": max(512, w["seq"])}
    return get_model_config(w["family"], w["size"], scan_layers=True, remat_policy="none", attention_impl=impl,
                            **dropout, **shape, **extra)


def objective_for(w: dict):
    settings = dict(seq_len=w["seq"])
    if w.get("max_predictions"):
        settings["max_predictions"] = w["max_predictions"]
    return get_objective(w["objective"])(**settings)


def synthetic_batch(objective, batch: int, vocab_size: int, seed: int = 0, padded_rows: bool = False) -> dict:
    """A batch in the objective's layout: random ids, one segment per row (padded_rows: every other row ends
    in padding after 60% of its length, so the masks have something to do), distinct MLM positions."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, (shape, dtype) in objective.batch_spec(batch).items():
        length = shape[-1] if len(shape) > 1 else 1
        if key == "segment_ids":
            value = np.ones(shape, dtype)
            if padded_rows:
                value[::2, int(length * 0.6):] = 0
        elif key.endswith("positions") and key != "masked_positions":
            value = np.broadcast_to(np.arange(length, dtype=dtype), shape).copy()
        elif key == "masked_positions":
            value = np.stack([np.sort(rng.choice(np.arange(1, int(objective.seq_len * 0.6)), shape[1],
                                                 replace=False)) for _ in range(shape[0])]).astype(dtype)
        elif key.endswith("weights"):
            value = np.ones(shape, dtype)
        elif key == "nsp_labels":
            value = rng.integers(0, 2, shape).astype(dtype)
        elif key == "token_types":
            value = (np.arange(length)[None, :] >= length // 2).astype(dtype).repeat(shape[0], 0)
        else:
            value = rng.integers(5, vocab_size, shape).astype(dtype)
        out[key] = value
    if padded_rows and "inputs" in out and "segment_ids" in out:
        out["inputs"] = np.where(out["segment_ids"] > 0, out["inputs"], 0).astype(np.int32)
    return out


def step_pieces(w: dict, impl: str, batch: int, quick: bool):
    config = model_config(w, impl, quick)
    model = build_model(config)
    objective = objective_for(w)
    tx, schedule = train.make_optimizer(train.OptimizerConfig(name="adamw", learning_rate=1e-4, schedule="constant",
                                                              warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0),
                                        num_steps=1)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    step = train.make_train_step(objective.loss_fn(model), tx, learning_rate_fn=schedule)
    dummy = objective.init_inputs(family_of(config), config)
    state, layout = train.create_train_state(lambda rng: model.init(rng, **dummy), tx, jax.random.key(0), mesh)
    run = train.jit_train_step(step, layout, sharding.batch_sharding(mesh), mesh)
    host_batch = synthetic_batch(objective, batch, config.vocab_size)
    flops = objective.train_flops_per_example(family_of(config), config) * batch
    return config, mesh, state, run, host_batch, flops, objective


def is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


# ----------------------------------------------------------------------------------------- rows
def train_row(name: str, w: dict, impl: str, args, peak_flops: float) -> dict:
    batches = (8, 4) if args.quick else w["batches"]
    last_error = None
    for batch in batches:
        try:
            return _timed_train_row(name, w, impl, batch, args, peak_flops)
        except Exception as error:  # noqa: BLE001 - an OOM moves one rung down the ladder, anything else stops
            if not is_out_of_memory(error):
                raise
            last_error = error
            print(f"  {name} {impl} batch {batch}: out of memory, trying a smaller batch", flush=True)
            jax.clear_caches()
    raise RuntimeError(f"{name} {impl}: no batch of {batches} fits: {last_error}")


def _timed_train_row(name, w, impl, batch, args, peak_flops) -> dict:
    config, mesh, state, run, host_batch, flops, objective = step_pieces(w, impl, batch, args.quick)
    batch_arrays = jax.device_put(host_batch, sharding.batch_sharding(mesh))
    with sharding.mesh_context(mesh):
        t = time.perf_counter()
        compiled = run.jitted.lower(state, batch_arrays).compile()
        compile_s = time.perf_counter() - t
        fused = FUSED_ATTENTION_MARKER in compiled.as_text()
        mem = compiled.memory_analysis()
        times, losses = [], []
        for i in range(2 + args.steps):
            t = time.perf_counter()
            state, metrics = compiled(state, batch_arrays)
            jax.block_until_ready((state, metrics))
            if i >= 2:
                times.append(time.perf_counter() - t)
            losses.append(float(metrics["loss"]))
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"{name} {impl}: non-finite loss {losses}")
    step_s = statistics.median(times)
    tokens = batch * objective.tokens_per_example
    device_gb = None
    if mem is not None:
        device_gb = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                     - mem.alias_size_in_bytes) / 2**30
    del state, batch_arrays, compiled
    jax.clear_caches()
    return dict(workload=name, impl=impl, fused_in_hlo=fused, batch=batch, seq=w["seq"], step_s=step_s,
                tokens_per_s=tokens / step_s, mfu=flops / step_s / peak_flops, model_tflop_per_step=flops / 1e12,
                compile_s=compile_s, device_gb=device_gb, first_loss=losses[0], last_loss=losses[-1],
                dtype=jnp.dtype(to_dtype(config.dtype)).name)


def parity_rows(args) -> list[dict]:
    """bf16 loss and gradients of small models, cuDNN against einsums, and whether cuDNN's kernel compiled in."""
    shapes = dict(num_layers=2, hidden_size=256, num_heads=4, intermediate_size=512)
    cases = [("bert (padding mask)", dict(WORKLOADS["bert128"]), shapes),
             ("gpt2 (causal + segments)", dict(WORKLOADS["gpt2"], seq=256), shapes),
             ("t5 (bias + padding)", dict(WORKLOADS["t5"], seq=128),
              dict(num_layers=2, num_decoder_layers=2, d_model=256, num_heads=4, d_kv=64, d_ff=512))]
    rows = []
    for label, w, shape in cases:
        try:
            rows.append(parity_row(label, w, shape))
        except Exception as error:  # noqa: BLE001 - a kernel that fails to compile is a finding, not a crash
            rows.append(dict(case=label, fused_in_hlo=False, loss_xla=float("nan"), loss_cudnn=float("nan"),
                             grad_rel_diff=float("nan"), bias_grad_rel_diff=f"FAILED {type(error).__name__}"))
            print(f"FAILED parity {label}: {str(error)[:2000]}", flush=True)
        print(rows[-1], flush=True)
    return rows


def parity_row(label: str, w: dict, shape: dict) -> dict:
    objective = objective_for(w)
    results = {}
    for impl in ("xla", "cudnn"):
        config = model_config(w, impl, quick=False, **shape)
        model = build_model(config)
        loss_fn = objective.loss_fn(model)
        params = model.init(jax.random.key(0), **objective.init_inputs(family_of(config), config))["params"]
        params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                              is_leaf=lambda x: hasattr(x, "value"))
        batch = jax.device_put(synthetic_batch(objective, 8, config.vocab_size, padded_rows=True))
        grad_fn = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b, jax.random.key(1))[0]))
        fused = FUSED_ATTENTION_MARKER in grad_fn.lower(params, batch).compile().as_text()
        loss, grads = grad_fn(params, batch)
        results[impl] = (float(loss), grads, fused)
    (ref_loss, ref_grads, _), (loss, grads, fused) = results["xla"], results["cudnn"]
    num = sum(float(jnp.sum(jnp.square(a - b))) for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
    den = sum(float(jnp.sum(jnp.square(b))) for b in jax.tree.leaves(ref_grads))
    bias_note = "-"
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): (a, b) for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads))}
    bias = [(a, b) for key, (a, b) in flat.items() if "relative" in key]
    if bias:
        a, b = bias[0]
        bias_note = (f"{float(jnp.linalg.norm(a - b) / (jnp.linalg.norm(b) + 1e-30)):.2e} "
                     f"(grad norm {float(jnp.linalg.norm(b)):.2e})")
    return dict(case=label, fused_in_hlo=fused, loss_xla=ref_loss, loss_cudnn=loss,
                grad_rel_diff=(num / den) ** 0.5 if den else float("nan"), bias_grad_rel_diff=bias_note)


def decode_rows(args) -> list[dict]:
    """GPT-2 small greedy decoding with the KV cache, bf16 (dtype auto), prompt 128, 128 new tokens."""
    config = dataclasses.replace(model_config(WORKLOADS["gpt2"], "auto", args.quick), scan_layers=False)
    model = build_model(config)
    params = model.init(jax.random.key(0), np.zeros((1, 8), np.int32))["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    adapter = adapter_for(config)
    prompt, new = (16, 16) if args.quick else (128, 128)
    rows = []
    for batch in ((1, 4) if args.quick else (1, 64)):
        prompts = np.random.default_rng(batch).integers(5, config.vocab_size, (batch, prompt), dtype=np.int32)
        gen = GenerationConfig(max_new_tokens=new, strategy="greedy", use_cache=True, pad_id=0)
        call = lambda: jax.block_until_ready(generate(adapter, params, prompts, config=gen))  # noqa: E731
        t = time.perf_counter()
        call()
        first_s = time.perf_counter() - t
        times = []
        for _ in range(3):
            t = time.perf_counter()
            call()
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        rows.append(dict(batch=batch, prompt=prompt, new_tokens=new, first_call_s=first_s, seconds=seconds,
                         new_tokens_per_s=batch * new / seconds, ms_per_token_step=1e3 * seconds / new))
        print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------------------- main
def table(title: str, header: list[str], rows: list[list]) -> None:
    print(f"\n#### {title}\n", flush=True)
    print_table(header, [[str(v) for v in row] for row in rows])


def peak_for(device_kind: str) -> float:
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name.lower() in device_kind.lower():
            return tflops * 1e12
    return 0.0


def measured_bf16_matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    matmul = jax.jit(lambda x, y: x @ y)
    for _ in range(3):
        matmul(a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(reps):
        out = matmul(a, b)
    out.block_until_ready()
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def versions_line() -> str:
    import flax
    import optax

    device = jax.devices()[0]
    backend = jax.extend.backend.get_backend()
    platform_version = backend.platform_version.strip()
    parts = [f"{device.device_kind} x{jax.device_count()} ({jax.default_backend()}, {platform_version})",
             f"jax {jax.__version__}", f"jaxlib {jax.lib.__version__}", f"flax {flax.__version__}",
             f"optax {optax.__version__}", f"Python {platform.python_version()}"]
    try:
        from jax._src.lib import cuda_versions  # private, but the only place jax reports cuDNN's version

        if cuda_versions is not None:
            parts.append(f"cuDNN {cuda_versions.cudnn_get_version()}")
            parts.append(f"CUDA runtime {cuda_versions.cuda_runtime_get_version()}")
    except Exception:  # noqa: BLE001 - versions are informative only
        pass
    return ", ".join(parts)


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    print("# jaxlm accelerator benchmark\n")
    print(versions_line())
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; command: python benchmarks/accelerator.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])}")
    device_kind = jax.devices()[0].device_kind
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_for(device_kind)
    matmul_n = 1024 if args.quick else 8192
    matmul = measured_bf16_matmul_tflops(matmul_n)
    if not peak:
        peak = matmul * 1e12
        print(f"no datasheet peak for {device_kind!r}: MFU is against the measured matmul rate")
    print(f"bf16 matmul {matmul_n}^3: {matmul:.3g} TFLOP/s measured; MFU against {peak / 1e12:.3g} TFLOP/s\n",
          flush=True)
    out = dict(versions=versions_line(), device_kind=device_kind, peak_tflops=peak / 1e12, matmul_tflops=matmul)

    if not args.no_parity:
        try:
            out["parity"] = parity_rows(args)
        except Exception as error:  # noqa: BLE001 - the table below still runs
            out["parity"] = []
            print(f"FAILED parity: {type(error).__name__}: {str(error)[:2000]}", flush=True)
        table("parity: cuDNN attention against the einsum path (bf16, 2 layers x 256, batch 8)",
                    ["case", "cuDNN in HLO", "loss einsum", "loss cuDNN", "grad rel. diff", "bias grad rel. diff"],
                    [[r["case"], "yes" if r["fused_in_hlo"] else "NO", f"{r['loss_xla']:.5f}", f"{r['loss_cudnn']:.5f}",
                      f"{r['grad_rel_diff']:.2e}", r["bias_grad_rel_diff"]] for r in out["parity"]])

    rows, failed = [], []
    for name in args.workloads.split(","):
        for impl in args.impls.split(","):
            try:
                rows.append(train_row(name, WORKLOADS[name], impl, args, peak))
                print(rows[-1], flush=True)
            except Exception as error:  # noqa: BLE001 - one failing row (a kernel that does not compile) is reported
                failed.append(f"{name} {impl}: {type(error).__name__}: {str(error)[:2000]}")
                print(f"FAILED {failed[-1]}", flush=True)
                jax.clear_caches()
    out["train"], out["failed"] = rows, failed
    table("train step (one device, scan on, no remat, dtype auto, fp32 params, dropout 0, AdamW)",
                ["workload", "attention", "fused kernel", "dtype", "batch", "seq", "step ms", "tokens/s", "MFU",
                 "model TFLOP/step", "compile s", "device GB", "loss first -> last"],
                [[r["workload"], r["impl"], "yes" if r["fused_in_hlo"] else "no", r["dtype"], r["batch"], r["seq"],
                  f"{1e3 * r['step_s']:.1f}", f"{r['tokens_per_s']:,.0f}", f"{100 * r['mfu']:.1f}%",
                  f"{r['model_tflop_per_step']:.2f}", f"{r['compile_s']:.1f}",
                  "-" if r["device_gb"] is None else f"{r['device_gb']:.1f}",
                  f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}"] for r in rows])

    for line in failed:
        print(f"failed: {line[:300]}")
    if not args.no_decode:
        try:
            out["decode"] = decode_rows(args)
        except Exception as error:  # noqa: BLE001
            out["decode"] = []
            print(f"FAILED decode: {type(error).__name__}: {str(error)[:2000]}", flush=True)
        table("GPT-2 small greedy decoding with the KV cache (bf16)",
                    ["batch", "prompt", "new tokens", "first call s", "s", "new tokens/s", "ms per step"],
                    [[r["batch"], r["prompt"], r["new_tokens"], f"{r['first_call_s']:.1f}", f"{r['seconds']:.3f}",
                      f"{r['new_tokens_per_s']:,.0f}", f"{r['ms_per_token_step']:.2f}"] for r in out["decode"]])
    print(f"\nwall time {(time.time() - started) / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
