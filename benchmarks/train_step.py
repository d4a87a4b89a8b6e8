"""Train-step throughput of jaxlm against Hugging Face transformers' PyTorch models, on one CPU device.

    .venv/bin/python benchmarks/train_step.py               # the full table (~10 min on 2 quiet cores)
    .venv/bin/python benchmarks/train_step.py --quick       # fewer rows and steps (~5 min)
    .venv/bin/python benchmarks/train_step.py --models gpt2 --steps 5 --flag-sets default,xnn

Workloads (fp32, random init, synthetic token ids, dropout on, AdamW + global-norm clipping in the step):
  bert: BERT-base MLM+NSP, batch 8, seq 128; jaxlm gathers the 20 masked positions before the vocabulary
        projection (BERT's max_predictions_per_seq), HF's BertForPreTraining projects all 128.
  gpt2: GPT-2 small (124M) CLM, batch 4, seq 256.
  xlnet: XLNet-base permutation LM (objective `plm`), batch 4, seq 128, num_predict 21 (K ~ 6): one batch of
        full sentence-pair rows `A <sep> B <sep> <cls>` built by jaxlm.objectives.plm.plm_features (the authors'
        span sampling and factorisation order), the same arrays fed to HF's XLNetLMHeadModel (perm_mask and
        target_mapping as float, labels = targets at the target_mapping rows, -100 at unused rows). Both run the
        query stream at the 21 targets only and project only those to the vocabulary.

Every configuration runs in a fresh subprocess (this script re-invoked with --worker), so that
 - XLA_FLAGS can differ per row (XLA reads them once, when jax initialises its CPU client);
 - the peak RSS (ru_maxrss) is that configuration's own high-water mark, not the process's history;
 - no compile cache or allocator state carries over from one row to the next.
Step time is the median of --steps timed steps after --warmup untimed ones (the first call is always
untimed), each ended with block_until_ready. MFU = analytic model FLOPs per step / step time / the fp32
matmul peak measured in its own subprocess. The same model FLOPs are used for the PyTorch rows (HF's extra
MLM projection of unmasked positions counts as waste, not as model FLOPs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from machine import cpu_snapshot  # noqa: E402  (benchmarks/machine.py)

WORKLOADS = {
    "bert": dict(family="bert", size="base", objective="mlm_nsp", batch=8, seq=128, max_predictions=20),
    "gpt2": dict(family="gpt2", size="small", objective="clm", batch=4, seq=256, max_predictions=0),
    "xlnet": dict(family="xlnet", size="base", objective="plm", batch=4, seq=128, max_predictions=0,
                  num_predict=21),
}
# XLNet's sentencepiece ids (xlnet-base-cased): <unk> 0, <s> 1, </s> 2, <cls> 3, <sep> 4, <pad> 5, <mask> 6.
XLNET_CLS_ID, XLNET_SEP_ID, XLNET_PAD_ID, XLNET_FIRST_WORD_ID = 3, 4, 5, 7

XNN_FLAG = "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY"
ONEDNN_FLAG = "--xla_cpu_use_onednn=true"
# name -> (XLA_FLAGS, extra environment). "default" is what jaxlm's commands run with (jaxlm.cli): glibc's
# malloc asks for transparent huge pages, so the step's large temporary buffer (XLA frees and re-maps it every
# step) faults in 2 MiB pages, not 4 KiB ones; "no-thp" is without (the default before 2026-12-04). The PyTorch
# rows run under the default's environment too (torch gains nothing from it).
THP_ENV = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
FLAG_SETS = {
    "default": ("", THP_ENV),
    "xnn": (XNN_FLAG, {}),
    "onednn": (ONEDNN_FLAG, {}),
    "xnn+onednn": (f"{XNN_FLAG} {ONEDNN_FLAG}", {}),
    "ynn-all": ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce", {}),
    "ynn-off": ("--xla_cpu_experimental_ynn_fusion_type=", {}),
    "no-thp": ("", {"GLIBC_TUNABLES": ""}),
}

# (scan_layers, remat_policy) rows of the main table; the first is the configuration the flag and loss
# comparisons use.
LAYOUTS_FULL = [(True, "none"), (False, "none"), (True, "full"), (True, "dots_saveable")]
LAYOUTS_QUICK = [(True, "none"), (False, "none"), (True, "full")]
FULL_FLAG_SETS = ("xnn", "onednn", "ynn-off", "no-thp")
QUICK_FLAG_SETS = ("no-thp",)

WORKER_TIMEOUT_S = 900


# ----------------------------------------------------------------------------------------- workers
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


class StepTimer:
    """Wall and own CPU time per step, plus how many cores other processes kept busy meanwhile."""

    def __init__(self):
        self.wall, self.cpu, self._start = [], [], None
        self._others_busy = 0.0
        self._others_wall = 0.0

    def start(self):
        self._start = cpu_snapshot()

    def stop(self, timed: bool = True):
        end = cpu_snapshot()
        wall, own, busy = (e - s for e, s in zip(end, self._start))
        if timed:
            self.wall.append(wall)
            self.cpu.append(own)
            self._others_busy += max(busy - own, 0.0)
            self._others_wall += wall
        return wall

    def summary(self) -> dict:
        return dict(step_s=statistics.median(self.wall), best_step_s=min(self.wall), step_times=self.wall,
                    cpu_s=statistics.median(self.cpu),
                    others_cores=self._others_busy / self._others_wall if self._others_wall else None)


def _synthetic_batch(workload: dict, vocab_size: int, seed: int = 0) -> dict:
    """A full (no padding) batch in jaxlm's batch format; MLM slots at distinct random positions."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b, s, p = workload["batch"], workload["seq"], workload["max_predictions"]
    if workload["objective"] == "plm":
        return _plm_batch(workload, vocab_size, rng)
    inputs = rng.integers(5, vocab_size, (b, s), dtype=np.int32)
    batch = {"inputs": inputs, "segment_ids": np.ones((b, s), np.int32),
             "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy()}
    if workload["objective"] == "clm":
        batch["targets"] = np.concatenate([inputs[:, 1:], inputs[:, :1]], axis=1)
        weights = np.ones((b, s), np.float32)
        weights[:, -1] = 0.0  # no next token for the last position (HF's shifted labels drop it too)
        batch["weights"] = weights
    else:
        batch["token_types"] = (np.arange(s)[None, :] >= s // 2).astype(np.int32).repeat(b, 0)
        positions = np.stack([np.sort(rng.choice(np.arange(1, s), p, replace=False)) for _ in range(b)])
        batch["masked_positions"] = positions.astype(np.int32)
        batch["masked_targets"] = rng.integers(5, vocab_size, (b, p), dtype=np.int32)
        batch["masked_weights"] = np.ones((b, p), np.float32)
        batch["nsp_labels"] = rng.integers(0, 2, (b,), dtype=np.int32)
    return batch


def _plm_batch(workload: dict, vocab_size: int, rng) -> dict:
    """Full rows `A <sep> B <sep> <cls>` (A 30-95 random word ids, B the rest), through the objective's own
    host-side plm_features: perm_mask [B,L,L] bool, target_mapping [B,P,L], targets / target_weights [B,P]."""
    import numpy as np

    from jaxlm.objectives.plm import PLM_KEYS, plm_features

    s, rows = workload["seq"], []
    for _ in range(workload["batch"]):
        len_a = int(rng.integers(30, 96))
        words = rng.integers(XLNET_FIRST_WORD_ID, vocab_size, s - 3, dtype=np.int32)
        rows.append(plm_features(words[:len_a], words[len_a:], rng, seq_len=s, num_predict=workload["num_predict"],
                                 sep_id=XLNET_SEP_ID, cls_id=XLNET_CLS_ID, pad_id=XLNET_PAD_ID))
    return {k: np.stack([r[k] for r in rows]) for k in PLM_KEYS}


def _optimizer_config():
    from jaxlm.train import OptimizerConfig

    # HF-style AdamW; constant LR so every timed step does identical work.
    return OptimizerConfig(name="adamw", learning_rate=1e-4, schedule="constant", warmup_steps=0,
                           eps=1e-6, weight_decay=0.01, max_grad_norm=1.0)


def _jaxlm_pieces(spec: dict, num_layers: int | None = None):
    """Model, loss, optimizer, mesh and the jitted train step exactly as jaxlm.pretrain builds them."""
    import jax

    from jaxlm import sharding, train
    from jaxlm.models import build_model, get_model_config
    from jaxlm.objectives import LossConfig

    w = WORKLOADS[spec["model"]]
    overrides = dict(scan_layers=spec["scan"], remat_policy=spec["remat"])
    if num_layers is not None:
        overrides["num_layers"] = num_layers
    config = get_model_config(w["family"], w["size"], **overrides)
    model = build_model(config)
    tx, schedule = train.make_optimizer(_optimizer_config(), num_steps=1)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    objective = _objective(w, LossConfig(logits_chunk_size=spec.get("chunk", 0)))
    loss_fn = objective.loss_fn(model)
    step = train.make_train_step(loss_fn, tx, learning_rate_fn=schedule)
    batch = _synthetic_batch(w, config.vocab_size)
    if w["objective"] == "plm":  # as jaxlm.pretrain initialises (the two-stream model needs its PLM inputs)
        from jaxlm.models import family_of

        dummy = objective.init_inputs(family_of(config), config)
    else:
        dummy = {k: batch[k][:1] for k in ("inputs", "segment_ids", "positions")}
    init_fn = lambda rng: model.init(rng, **dummy)  # noqa: E731
    return config, tx, mesh, init_fn, step, batch


def _objective(w: dict, loss=None):
    from jaxlm.objectives import LossConfig, get_objective

    settings = dict(seq_len=w["seq"], loss=loss or LossConfig())
    if w["max_predictions"]:
        settings["max_predictions"] = w["max_predictions"]
    if w.get("num_predict"):
        settings["num_predict"] = w["num_predict"]
    return get_objective(w["objective"])(**settings)


def _model_flops_per_step(model: str, config) -> float:
    """The training loop's own analytic FLOPs (the objective's count from the model family)."""
    from jaxlm.models import family_of

    w = WORKLOADS[model]
    return _objective(w).train_flops_per_example(family_of(config), config) * w["batch"]


def _program_hash(compiled) -> str:
    """Hash of the optimised HLO without source metadata: equal hashes = XLA built the same program."""
    import hashlib
    import re

    text = re.sub(r"(, )?(metadata|stack_frame_id)=(\{[^}]*\}|\d+)", "", compiled.as_text())
    return hashlib.md5(text.encode()).hexdigest()[:10]


def worker_jax(spec: dict) -> dict:
    import jax
    import numpy as np

    jax.config.update("jax_enable_compilation_cache", False)
    from jaxlm import sharding, train

    config, tx, mesh, init_fn, step, host_batch = _jaxlm_pieces(spec)
    t = time.perf_counter()
    state, layout = train.create_train_state(init_fn, tx, jax.random.key(0), mesh)
    jax.block_until_ready(state)
    init_s = time.perf_counter() - t
    run = train.jit_train_step(step, layout, sharding.batch_sharding(mesh), mesh)
    batch = jax.device_put(host_batch, sharding.batch_sharding(mesh))
    with sharding.mesh_context(mesh):
        t = time.perf_counter()
        lowered = run.jitted.lower(state, batch)
        lower_s = time.perf_counter() - t
        t = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t
        mem = compiled.memory_analysis()
        timer, losses, first_step_s = StepTimer(), [], None
        for i in range(spec["warmup"] + spec["steps"]):
            timer.start()
            state, metrics = compiled(state, batch)
            jax.block_until_ready((state, metrics))
            wall = timer.stop(timed=i >= spec["warmup"])
            first_step_s = wall if first_step_s is None else first_step_s
            losses.append(float(metrics["loss"]))
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite loss {losses}")
    return dict(**timer.summary(), first_step_s=first_step_s, init_s=init_s,
                lower_s=lower_s, compile_s=compile_s, losses=losses, hlo_hash=_program_hash(compiled),
                flops=_model_flops_per_step(spec["model"], config),
                xla_temp_mb=mem.temp_size_in_bytes / 2**20 if mem else None,
                xla_args_mb=mem.argument_size_in_bytes / 2**20 if mem else None,
                xla_alias_mb=mem.alias_size_in_bytes / 2**20 if mem else None,
                peak_rss_mb=_peak_rss_mb())


def worker_compile(spec: dict) -> dict:
    """Lower + compile time of the train step on abstract shapes (nothing allocated)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from jaxlm import sharding, train

    _, tx, mesh, init_fn, step, host_batch = _jaxlm_pieces(spec, num_layers=spec["layers"])
    layout = train.abstract_train_state(init_fn, tx, mesh)
    run = train.jit_train_step(step, layout, sharding.batch_sharding(mesh), mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh))
             for k, v in host_batch.items()}
    with sharding.mesh_context(mesh):
        t = time.perf_counter()
        lowered = run.jitted.lower(layout.abstract, batch)
        lower_s = time.perf_counter() - t
        t = time.perf_counter()
        lowered.compile()
        compile_s = time.perf_counter() - t
    return dict(lower_s=lower_s, compile_s=compile_s, hlo_chars=len(lowered.as_text()),
                peak_rss_mb=_peak_rss_mb())


def worker_torch(spec: dict) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    w = WORKLOADS[spec["model"]]
    if spec["model"] == "bert":
        config = transformers.BertConfig()  # bert-base-uncased shapes
        model = transformers.BertForPreTraining(config)
    elif spec["model"] == "xlnet":
        from jaxlm.convert.hf_xlnet import hf_config_from_fields
        from jaxlm.models import get_model_config

        # jaxlm's XLNet-base config mapped as the exporter maps it (dropout 0.1, no memory, untie_r, 'bi')
        fields = hf_config_from_fields(get_model_config(w["family"], w["size"]))
        fields.pop("model_type", None)
        config = transformers.XLNetConfig(**fields)
        model = transformers.XLNetLMHeadModel(config)
    else:
        config = transformers.GPT2Config()  # gpt2 (124M) shapes
        model = transformers.GPT2LMHeadModel(config)
    model.train()  # dropout on, as in the jaxlm step
    host = _synthetic_batch(w, config.vocab_size)
    inputs = torch.from_numpy(host["inputs"]).long()
    if spec["model"] == "bert":
        labels = torch.full_like(inputs, -100)
        rows = torch.arange(w["batch"])[:, None]
        labels[rows, torch.from_numpy(host["masked_positions"]).long()] = torch.from_numpy(
            host["masked_targets"]).long()
        kwargs = dict(input_ids=inputs, token_type_ids=torch.from_numpy(host["token_types"]).long(),
                      attention_mask=torch.ones_like(inputs), labels=labels,
                      next_sentence_label=torch.from_numpy(host["nsp_labels"]).long())
    elif spec["model"] == "xlnet":
        # HF's XLNetLMHeadModel: labels [B,P] -> CE over the target_mapping rows (mean over labels != -100);
        # the rows plm_features leaves unused (target_weights 0) get -100, so the loss is jaxlm's weighted mean.
        labels = torch.from_numpy(np.where(host["target_weights"] > 0, host["targets"], -100)).long()
        kwargs = dict(input_ids=inputs, token_type_ids=torch.from_numpy(host["token_types"]).long(),
                      attention_mask=torch.from_numpy(host["segment_ids"]).float(),
                      perm_mask=torch.from_numpy(host["perm_mask"]).float(),
                      target_mapping=torch.from_numpy(host["target_mapping"]).float(), labels=labels)
    else:
        kwargs = dict(input_ids=inputs, attention_mask=torch.ones_like(inputs), labels=inputs)
    params = list(model.parameters())
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    # fused=True: the HF Trainer's default optimizer ("adamw_torch_fused") on torch >= 2.8.
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-4, eps=1e-6, fused=spec.get("fused", True))
    timer, losses, first_step_s = StepTimer(), [], None
    for i in range(spec["warmup"] + spec["steps"]):
        timer.start()
        opt.zero_grad(set_to_none=True)
        loss = model(**kwargs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        wall = timer.stop(timed=i >= spec["warmup"])
        first_step_s = wall if first_step_s is None else first_step_s
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"non-finite loss {losses}")
    return dict(**timer.summary(), first_step_s=first_step_s, losses=losses,
                attn_impl=getattr(model.config, "_attn_implementation", None), peak_rss_mb=_peak_rss_mb(),
                threads=torch.get_num_threads())


def worker_peak(spec: dict) -> dict:
    """fp32 matmul peak of XLA (jaxlm's own measurement, larger n) and, for reference, of torch."""
    import jax.numpy as jnp

    from jaxlm.train import measure_matmul_peak_flops

    out = {"xla_gflops": max(measure_matmul_peak_flops(n, jnp.float32, repeats=spec["repeats"]) for n in
                             (1024, 2048)) / 1e9}
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
        a = torch.ones(2048, 2048)
        a @ a
        best = float("inf")
        for _ in range(spec["repeats"]):
            t = time.perf_counter()
            a @ a
            best = min(best, time.perf_counter() - t)
        out["torch_gflops"] = 2 * 2048 ** 3 / best / 1e9
    except ImportError:
        out["torch_gflops"] = None
    return out


WORKERS = {"jax": worker_jax, "compile": worker_compile, "torch": worker_torch, "peak": worker_peak}


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    load_before = os.getloadavg()[0]
    result = WORKERS[spec["kind"]](spec)
    result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------ driver
def run_worker(spec: dict, extra_xla_flags: str = "") -> dict:
    env = dict(os.environ)
    # The row's flags only: never inherit e.g. the tests' 8-simulated-device flag.
    xla_flags, extra_env = FLAG_SETS[spec.get("flags", "default")]
    env["XLA_FLAGS"] = " ".join(x for x in (xla_flags, extra_xla_flags) if x)
    env.pop("GLIBC_TUNABLES", None)  # the row's malloc settings only (make sets them for its own children)
    env.update(extra_env)
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {WORKER_TIMEOUT_S} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.perf_counter() - t
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"exit {proc.returncode}: " + " | ".join(tail)}


def torch_available() -> str | None:
    """None if torch + transformers import, else the reason."""
    try:
        subprocess.run([sys.executable, "-c", "import torch, transformers"], check=True, capture_output=True,
                       timeout=300)
        return None
    except subprocess.CalledProcessError as e:
        return (e.stderr.decode().strip().splitlines() or ["import failed"])[-1]


def _fmt(v, spec="{:.2f}", none="-"):
    return none if v is None else spec.format(v)


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
    sys.stdout.flush()


def system_line() -> str:
    import importlib.metadata as md

    versions = []
    for pkg in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        try:
            versions.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            versions.append(f"{pkg} -")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; " + ", ".join(versions)


MAIN_HEADER = ["model", "impl", "scan", "remat", "loss head", "flags", "step s", "best s", "tok/s", "MFU",
               "vs torch", "CPU s", "others", "compile s", "XLA temp MB", "peak RSS MB"]


def _loss_head(model: str, spec: dict) -> str:
    if model == "xlnet":
        return f"{WORKLOADS[model]['num_predict']} target pos."  # both: query stream at target_mapping only
    if spec["kind"] == "torch":
        return "all 128 pos." if model == "bert" else "full logits"
    if model == "bert":
        return "20 masked pos."
    return f"chunked {spec['chunk']}" if spec.get("chunk") else "full logits"


def _main_row(model: str, spec: dict, r: dict, flops, peak_gflops, torch_step, default_hash) -> list[str]:
    is_torch = spec["kind"] == "torch"
    impl = "HF torch" if is_torch else "jaxlm"
    if "error" in r:
        return [model, impl, "", "", "", spec.get("flags", ""), "ERROR: " + r["error"][:120]] + [""] * 9
    w = WORKLOADS[model]
    step_s = r["step_s"]
    flags = "-"
    if not is_torch:
        flags = spec["flags"]
        if spec["flags"] != "default" and default_hash and r.get("hlo_hash") == default_hash:
            flags += " (same HLO)"  # XLA compiled the identical program: any difference is noise
    return [
        model, impl, "-" if is_torch else ("on" if spec["scan"] else "off"), "-" if is_torch else spec["remat"],
        _loss_head(model, spec), flags, f"{step_s:.2f}", f"{r['best_step_s']:.2f}",
        f"{w['batch'] * w['seq'] / step_s:.0f}",
        _fmt(flops / step_s / (peak_gflops * 1e9) if flops and peak_gflops else None, "{:.0%}"),
        "1.00x" if is_torch else _fmt(torch_step / step_s if torch_step else None, "{:.2f}x"),
        f"{r['cpu_s']:.1f}", _fmt(r.get("others_cores"), "{:.2f}"),
        "-" if is_torch else f"{r['lower_s'] + r['compile_s']:.1f}",
        "-" if is_torch else _fmt(r.get("xla_temp_mb"), "{:.0f}"), f"{r['peak_rss_mb']:.0f}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert,gpt2", help="comma-separated subset of: " + ",".join(WORKLOADS))
    p.add_argument("--steps", type=int, default=None, help="timed steps per row (default 3, --quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling (>= 1)")
    p.add_argument("--quick", action="store_true", help="fewer layouts, flag sets and compile points")
    p.add_argument("--flags", default="default", choices=sorted(FLAG_SETS),
                   help="flag set for the main jaxlm rows (see FLAG_SETS)")
    p.add_argument("--flag-sets", default=None,
                   help="flag sets compared on the first layout, from: " + ",".join(FLAG_SETS) +
                   f" (default {','.join(FULL_FLAG_SETS)}; --quick: {','.join(QUICK_FLAG_SETS)}; '' = none)")
    p.add_argument("--xla-flags", default="", help="extra raw XLA flags appended to every jaxlm row")
    p.add_argument("--chunks", default=None, help="GPT-2 logits_chunk_size values compared on the first layout "
                   "(default 256,1024; --quick 256; '' = none)")
    p.add_argument("--compile-layers", default=None, help="layer counts for the compile-time table "
                   "(default 2,12,24, scanned and unscanned; --quick: scanned only; '' = none)")
    p.add_argument("--no-torch", action="store_true", help="skip the Hugging Face PyTorch rows")
    p.add_argument("--json", default=None, help="also write every raw result to this file")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0

    def csv(value, default):
        return [x.strip() for x in (default if value is None else value).split(",") if x.strip()]

    models = csv(args.models, "")
    unknown = [m for m in models if m not in WORKLOADS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(WORKLOADS)}")
    steps = args.steps or (2 if args.quick else 3)
    warmup = max(1, args.warmup)
    layouts = LAYOUTS_QUICK if args.quick else LAYOUTS_FULL
    flag_sets = csv(args.flag_sets, ",".join(QUICK_FLAG_SETS if args.quick else FULL_FLAG_SETS))
    bad = [f for f in flag_sets if f not in FLAG_SETS]
    if bad:
        p.error(f"--flag-sets: unknown {bad}; choose from {sorted(FLAG_SETS)}")
    chunks = [int(c) for c in csv(args.chunks, "256" if args.quick else "256,1024")]
    compile_layers = [int(n) for n in csv(args.compile_layers, "2,12,24")]
    results = []

    def record(section, spec, result):
        results.append({"section": section, "spec": spec, "result": result})
        status = result.get("error") or (
            f"{result['step_s']:.2f} s/step" if "step_s" in result else
            f"compile {result['compile_s']:.1f} s" if "compile_s" in result else
            f"{result.get('xla_gflops', 0):.0f} GFLOP/s")
        print(f"  [{section}] {json.dumps(spec)} -> {status}", file=sys.stderr, flush=True)
        return result

    start = time.time()
    shown = ["benchmarks/train_step.py"] + (sys.argv[1:] if argv is None else list(argv))
    print(f"# jaxlm train-step benchmark\n\n{system_line()}")
    print(f"command: python {' '.join(shown)}")
    print(f"load average at start (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    no_torch = "--no-torch given" if args.no_torch else torch_available()
    if no_torch:
        print(f"PyTorch reference rows skipped: {no_torch}")

    peak = record("peak", {"kind": "peak", "repeats": 10}, run_worker({"kind": "peak", "repeats": 10}))
    peak_gflops = peak.get("xla_gflops")
    print(f"fp32 matmul peak (best of 10, n=1024 and 2048): XLA {_fmt(peak_gflops, '{:.0f}')} GFLOP/s, "
          f"torch {_fmt(peak.get('torch_gflops'), '{:.0f}')} GFLOP/s; MFU is against the XLA figure")

    for model in models:
        w = WORKLOADS[model]
        base = dict(kind="jax", model=model, steps=steps, warmup=warmup, chunk=0)
        first = dict(base, scan=layouts[0][0], remat=layouts[0][1])
        specs = [] if no_torch else [dict(kind="torch", model=model, steps=steps, warmup=warmup)]
        specs += [dict(base, scan=scan, remat=remat, flags=args.flags) for scan, remat in layouts]
        specs += [dict(first, flags=f) for f in flag_sets if f != args.flags]
        if model == "gpt2":
            specs += [dict(first, flags=args.flags, chunk=c) for c in chunks]
        done = [(spec, record(model, spec, run_worker(spec, args.xla_flags if spec["kind"] == "jax" else "")))
                for spec in specs]
        flops = next((r["flops"] for _, r in done if "flops" in r), None)
        torch_step = next((r.get("step_s") for s, r in done if s["kind"] == "torch"), None)
        default_hash = next((r.get("hlo_hash") for s, r in done if s["kind"] == "jax" and s == dict(
            first, flags="default")), None)
        table = [_main_row(model, s, r, flops, peak_gflops, torch_step, default_hash) for s, r in done]
        desc = f"batch {w['batch']}, seq {w['seq']}" + (
            f", {w['max_predictions']} MLM predictions per row" if w["max_predictions"] else "") + (
            f", {w['num_predict']} PLM targets per row" if w.get("num_predict") else "")
        print_table(f"{model}: {w['family']}-{w['size']} {w['objective']} train step ({desc}; "
                    f"{w['batch'] * w['seq']} tokens/step; {_fmt(flops / 1e9 if flops else None, '{:.0f}')} "
                    f"model GFLOP/step; median of {steps} steps)", MAIN_HEADER, table)

    if "bert" in models and compile_layers:
        rows = []
        for scan in ([True] if args.quick else [True, False]):
            for n in compile_layers:
                spec = dict(kind="compile", model="bert", scan=scan, remat="none", chunk=0, layers=n,
                            flags=args.flags)
                r = record("compile", spec, run_worker(spec, args.xla_flags))
                if "error" in r:
                    rows.append(["on" if scan else "off", str(n), "ERROR: " + r["error"][:120], "", "", ""])
                else:
                    rows.append(["on" if scan else "off", str(n), f"{r['lower_s']:.1f}", f"{r['compile_s']:.1f}",
                                 f"{r['lower_s'] + r['compile_s']:.1f}", f"{r['hlo_chars'] / 1e3:.0f}"])
        print_table("compile time of the BERT-base-width MLM+NSP train step vs depth (abstract inputs, "
                    "nothing executed)", ["scan", "layers", "lower s", "compile s", "total s",
                                          "StableHLO kchars"], rows)

    print("\nstep s: median wall time per step; best s: fastest step; CPU s: this process's CPU seconds per "
          "step (median); others: cores kept busy by other processes during the timed steps (0 = quiet "
          "machine); (same HLO): XLA compiled the identical program as with default flags.")
    print(f"load average at end (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"wall time {(time.time() - start) / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"system": system_line(), "peak": peak, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
