"""Fine-tuning sensitivity sweeps: `python -m jaxlm.sweep --config=configs/finetune/sst2.py --seeds=0-9
--learning_rates=2e-5,3e-5,5e-5 --workdir=DIR [--early_stop_at=0.3 --early_stop_keep=5] [--config.X=...]`.

Every (seed, learning rate) trial of a fine-tuning config trains at once, stacked on a trial axis under one vmapped
step (jaxlm.train.trials): a trial is exactly `jaxlm.finetune.run` with that config.seed, config.data_seed and
config.optimizer.learning_rate, only batched with the others. Dodge et al. (2020) separate the weight-initialisation
seed (here: the head and the dropout stream, both drawn from jax.random.key(config.seed) as in finetune) from the
data-order seed: --seeds=0-9 gives ten trials whose two seeds are equal, --init_seeds=0-4 --data_seeds=0-4 their
25 combinations (one of the two flags alone holds the other seed at the config's value).

Early stopping as Dodge et al. (2020) recommend ("start many, stop early"): after --early_stop_at of the training
steps every trial is evaluated on the dev set and only the --early_stop_keep best continue; the trial-steps and
training FLOPs the stopped trials did not spend are reported.

DIR gets sweep.json (every trial's dev metrics at each evaluation and per-step training losses; per learning rate
the mean, standard deviation, min and max across seeds; the expected-best-validation-performance curves of Dodge et
al. 2019; the compute saved), expected_max.png, and DIR/best: the best trial (by the task's dev metric) as a regular
fine-tuning run directory (its best checkpoint, config, tokenizer, metrics.jsonl, summary.json), which
`python -m jaxlm.evaluate --workdir=DIR/best` and `python -m jaxlm.predict` read. From a notebook:
`jaxlm.sweep.run(config, workdir, make_trials(...))`.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from etils import epath
from ml_collections import config_flags

from jaxlm import sharding, train
from jaxlm.cli import setup_command
from jaxlm.config_defaults import check_overrides
from jaxlm.data import keep_tokenizer
from jaxlm.run_lock import workdir_lock
from jaxlm.tasks import BadInputError, EpochBatches
from jaxlm.tasks.base import LOWER_IS_BETTER
from jaxlm.tasks.evaluation import TaskEvaluator
from jaxlm.tasks.finetuning import data_seed, run_config, setup, write_json
from jaxlm.train import sweep_report
from jaxlm.train import trials as tr
from jaxlm.train.metrics import MetricWriter, write_summary
from jaxlm.workdir import abstract_params, restore_backbone

log = logging.getLogger(__name__)
FLAGS = flags.FLAGS
_CONFIG = None
REPORT_FILE, PLOT_FILE, BEST_DIR = "sweep.json", "expected_max.png", "best"


@dataclasses.dataclass(frozen=True)
class Trial:
    index: int
    init_seed: int  # config.seed: the head's initialisation and the dropout stream
    data_seed: int  # config.data_seed: the order of the training batches
    learning_rate: float  # config.optimizer.learning_rate (the schedule's peak)


# ----------------------------------------------------------------------------------------------------------------
# The grid, from the flags

def parse_seeds(flag: str, text: str) -> list[int]:
    """'0-9', '0,3,7' or '0-4,10' -> the seeds; errors name the flag."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"{flag}={text!r}: {part!r} is not a seed or a range of seeds (e.g. 0-9 or 0,3,7)"
                             ) from None
        if lo < 0:
            raise ValueError(f"{flag}={text!r}: seeds must be >= 0")
        if hi < lo:
            raise ValueError(f"{flag}={text!r}: the range {part} is empty (its start exceeds its end)")
        seeds += range(lo, hi + 1)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{flag}={text!r}: a seed is listed twice")
    return seeds


def parse_learning_rates(flag: str, text: str) -> list[float]:
    """'2e-5,3e-5,5e-5' -> the peak learning rates (each finite and > 0); errors name the flag."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError(f"{flag}={text!r} is empty: give one or more learning rates, e.g. {flag}=2e-5,3e-5,5e-5")
    rates = []
    for part in parts:
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"{flag}={text!r}: {part!r} is not a number") from None
        if not np.isfinite(rate) or rate <= 0:
            raise ValueError(f"{flag}={text!r}: {part} is not a positive learning rate")
        rates.append(rate)
    if len(set(rates)) != len(rates):
        raise ValueError(f"{flag}={text!r}: a learning rate is listed twice")
    return rates


def make_trials(learning_rates, *, seeds=None, init_seeds=None, data_seeds=None, config=None) -> list[Trial]:
    """The sweep's trials, learning rate by learning rate: `seeds` pairs an init and a data seed of the same value;
    `init_seeds` x `data_seeds` crosses them (a missing one is the config's: config.seed / its data seed)."""
    if seeds and (init_seeds or data_seeds):
        raise ValueError("--seeds sets both the init and the data seeds: give it, or --init_seeds / --data_seeds")
    if seeds:
        pairs = [(s, s) for s in seeds]
    else:
        init_seeds = init_seeds or [config.seed if config is not None else 0]
        data_seeds = data_seeds or [data_seed(config) if config is not None else init_seeds[0]]
        pairs = list(itertools.product(init_seeds, data_seeds))
    grid = itertools.product(learning_rates, pairs)
    return [Trial(k, i, d, float(lr)) for k, (lr, (i, d)) in enumerate(grid)]


def check_early_stopping(at: float, keep: int, num_trials: int) -> None:
    if at == 0 and keep == 0:
        return
    if not 0 < at < 1:
        raise ValueError(f"--early_stop_at={at} must be a fraction of the training steps in (0, 1) (0: no early "
                         "stopping)")
    if not 1 <= keep < num_trials:
        raise ValueError(f"--early_stop_keep={keep} must be in [1, {num_trials}): the trials kept of the "
                         f"{num_trials} after --early_stop_at")


def trial_config(config, trial: Trial) -> ml_collections.ConfigDict:
    """The plain fine-tuning config this trial is: config with its seeds and peak learning rate."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed, c.data_seed, c.optimizer.learning_rate = trial.init_seed, trial.data_seed, trial.learning_rate
    if "length_buckets" in c.data:  # the stacked trials train on full rows (one shape for every data order)
        c.data.length_buckets = ()
    return c


# ----------------------------------------------------------------------------------------------------------------
# Training every trial at once

def _better(a: float, b: float | None, mode: str) -> bool:
    return b is None or (a > b if mode == "max" else a < b)


def run(config, workdir: str, trials: list[Trial], *, early_stop_at: float = 0.0, early_stop_keep: int = 0,
        vmap_width: int = 0) -> dict:
    """Trains every trial stacked; returns the report (also DIR/sweep.json). Holds the workdir's lock.
    vmap_width: trials vmapped together (0: all; see jaxlm.train.trials.make_trials_step)."""
    if not trials:
        raise ValueError("a sweep needs at least one trial")
    if vmap_width < 0:
        raise ValueError(f"--vmap_width={vmap_width} must be >= 0 (0: every trial at once)")
    if "lora" in config and config.lora.rank > 0:
        raise ValueError(f"config.lora.rank={config.lora.rank}: a sweep stacks full fine-tuning trials; LoRA trials "
                         "are not supported yet (run jaxlm.finetune per trial)")
    check_early_stopping(early_stop_at, early_stop_keep, len(trials))
    sharding.initialize_from_config(config.distributed)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    if (epath.Path(workdir) / BEST_DIR / "checkpoints").exists():
        raise ValueError(f"--workdir={workdir} already holds a sweep ({BEST_DIR}/checkpoints); a sweep does not "
                         "resume: give a new --workdir")
    with workdir_lock(workdir, enabled=jax.process_index() == 0):
        return _sweep(config, workdir, trials, early_stop_at, early_stop_keep, vmap_width)


def _sweep(config, workdir, trials, early_stop_at, early_stop_keep, vmap_width):
    t_begin = time.perf_counter()
    process_index, process_count = jax.process_index(), jax.process_count()
    s = setup(config, workdir)
    task, spec = s.task, s.spec
    d = config.data
    if not (d.eval_file or (d.tfds_name and d.eval_split)):
        raise ValueError("a sweep ranks its trials on the dev set: set config.data.eval_file (or tfds_name and "
                         "eval_split)")
    train_examples = task.read_examples(spec, d, d.train_file, split=d.train_split, limit=d.train_limit)
    train_features = task.features(spec, train_examples, s.tokenizer)
    eval_examples = task.read_examples(spec, d, d.eval_file, split=d.eval_split, limit=d.eval_limit)
    eval_features = task.features(spec, eval_examples, s.tokenizer)

    mesh, rules = sharding.mesh_and_rules(config.mesh)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    for key in ("batch_size", "eval_batch_size"):
        size = config.train[key]
        if size < 1 or size % shards or size % process_count:
            raise ValueError(f"config.train.{key}={size} must be a positive multiple of the data x fsdp mesh axes "
                             f"({shards}) and of the {process_count} process(es)")
    iters = {seed: EpochBatches(train_features, config.train.batch_size, task.device_keys(spec), seed=seed,
                                process_index=process_index, process_count=process_count)
             for seed in sorted({t.data_seed for t in trials})}
    steps_per_epoch = next(iter(iters.values())).steps_per_epoch
    num_steps = (config.train.num_steps if config.train.num_steps > 0
                 else int(round(config.train.num_epochs * steps_per_epoch)))
    if num_steps < 1:
        raise ValueError(f"config.train.num_epochs={config.train.num_epochs} / num_steps={config.train.num_steps} "
                         "train no step: a sweep needs at least one")
    stop_step = int(round(early_stop_at * num_steps)) if early_stop_keep else 0
    if early_stop_keep and not 1 <= stop_step < num_steps:
        raise ValueError(f"--early_stop_at={early_stop_at} of {num_steps} steps is step {stop_step}: it must fall "
                         "inside the run")

    # States: trial k is a plain run of seed init_seed[k]; the restored backbone is the same for every trial.
    init_batch = task.init_batch(spec)
    abstract = abstract_params(s.model, init_batch)
    tx, _ = train.make_optimizer(config.optimizer, num_steps=num_steps, params=abstract)
    states, layout = tr.create_trial_states(lambda rng: s.model.init(rng, **init_batch), tx,
                                            [t.init_seed for t in trials], mesh, rules)
    state_arrays, param_arrays = tr.TrialArrays(layout.shardings), tr.TrialArrays(layout.shardings.params)
    report = None
    if config.init_checkpoint:
        init_step = None if config.init_step < 0 else config.init_step
        first = param_arrays.take(states.params, 0)
        restored, report = restore_backbone(first, config.init_checkpoint, step=init_step)
        restored = task.restore_head(spec, restored, config.init_checkpoint, init_step)
        shared = jax.tree.map(lambda new, old: new is not old, restored, first)
        states = states.replace(params=param_arrays.share(states.params, restored, shared))
        write_json(os.path.join(workdir, "backbone_report.json"), dataclasses.asdict(report))

    step_fn = tr.jit_trials_step(tr.make_trials_step(
        task.loss_fn(spec, s.model),
        lambda lr: train.make_optimizer(config.optimizer, num_steps=num_steps, params=abstract, learning_rate=lr),
        num_microbatches=config.train.num_microbatches, vmap_width=vmap_width), layout, mesh, rules)
    batch_sharding = tr.trial_batch_sharding(mesh)
    predictor = task.predictor(spec, s.model, mesh, layout.shardings.params, config.train.eval_batch_size,
                               s.tokenizer, rules)
    evaluate = TaskEvaluator(task, spec, predictor, eval_examples, eval_features)
    metric = task.best_metric(spec, config.train.best_metric)
    mode = "min" if metric in LOWER_IS_BETTER else "max"

    best_dir = os.path.join(workdir, BEST_DIR)
    manager = train.make_checkpoint_manager(best_dir, max_to_keep=1, async_save=config.train.async_checkpointing,
                                            best_metric=metric, best_mode=mode)
    tokenizer_path = keep_tokenizer(s.tokenizer_path, best_dir) if process_index == 0 else s.tokenizer_path

    period = config.train.eval_every_steps or steps_per_epoch
    eval_every = period if config.train.eval_every_epoch or config.train.eval_every_steps else 0
    active = list(range(len(trials)))  # trial index at each position of the stacked state
    losses = {t.index: [] for t in trials}
    evals = {t.index: [] for t in trials}
    diverged: dict[int, int] = {}  # trial -> first non-finite step
    steps_trained = {t.index: 0 for t in trials}
    best = {"trial": None, "step": None, "value": None, "metrics": None}
    early = None
    pending: list = []
    timing = {"first_step_s": None, "steady_s": 0.0, "steady_steps": 0, "eval_s": 0.0}
    t_interval = None

    def flush(step: int):
        nonlocal pending, t_interval
        if not pending:
            return
        fetched = jax.device_get(pending)
        pending = []
        for offset, m in enumerate(fetched):
            at = step - len(fetched) + offset + 1
            for pos, k in enumerate(active):
                loss = float(m["loss"][pos])
                losses[k].append(loss)
                if k not in diverged and not (m["is_finite"][pos] and np.isfinite(loss)):
                    diverged[k] = at
                    log.warning("trial %d (init seed %d, data seed %d, lr %g) diverged at step %d", k,
                                trials[k].init_seed, trials[k].data_seed, trials[k].learning_rate, at)
        if t_interval is not None:
            timing["steady_s"] += time.perf_counter() - t_interval
        t_interval = time.perf_counter()
        if process_index == 0:
            mean = np.nanmean([losses[k][-1] for k in active])
            print(f"step {step}/{num_steps}: {len(active)} trials, mean train loss {mean:.4f}", flush=True)

    def evaluate_all(step: int):
        """Every active trial's dev metrics; the best trial so far is checkpointed into DIR/best."""
        nonlocal t_interval
        t = time.perf_counter()
        round_best = None
        for pos, k in enumerate(active):
            if k in diverged:
                continue
            metrics = evaluate(param_arrays.take(states.params, pos))
            evals[k].append({"step": step, **metrics})
            value = float(metrics[metric])
            if np.isfinite(value) and _better(value, best["value"], mode) and (
                    round_best is None or _better(value, round_best[2], mode)):
                round_best = (pos, k, value, metrics)
        if round_best is not None:
            pos, k, value, metrics = round_best
            best.update(trial=k, step=step, value=value, metrics=metrics)
            train.save_checkpoint(manager, step, state_arrays.take(states, pos), data_iter=iters[trials[k].data_seed],
                                  config=run_config(trial_config(config, trials[k]), s, tokenizer_path, metric),
                                  metrics=metrics)
        timing["eval_s"] += time.perf_counter() - t
        t_interval = time.perf_counter()

    learning_rates = jnp.asarray([t.learning_rate for t in trials], jnp.float32)
    step = 0
    while step < num_steps:
        seeds = sorted({trials[k].data_seed for k in active})
        host = {seed: next(iters[seed]) for seed in seeds}
        batch = {key: np.stack([host[trials[k].data_seed][key] for k in active]) for key in host[seeds[0]]}
        states, metrics = step_fn(states, sharding.host_local_to_global(batch, mesh, batch_sharding), learning_rates)
        step += 1
        for k in active:
            steps_trained[k] += 1
        pending.append(metrics)
        if timing["first_step_s"] is None:  # compile + first step, kept out of the steady step time
            jax.block_until_ready(metrics)
            timing["first_step_s"] = time.perf_counter() - t_begin  # setup, data, compile and the first step
            flush(step)
            timing["steady_s"] = 0.0
        else:
            timing["steady_steps"] += 1
        last = step == num_steps
        do_eval = last or step == stop_step or (eval_every and step % eval_every == 0)
        if do_eval or step % max(config.train.log_every, 1) == 0:
            flush(step)
        if do_eval:
            evaluate_all(step)
        if step == stop_step:
            early = _early_stop(trials, active, evals, diverged, metric, mode, early_stop_keep, step)
            keep = [active.index(k) for k in early["kept"]]
            states = state_arrays.keep(states, keep)
            learning_rates = learning_rates[jnp.asarray(keep)]
            active = list(early["kept"])
    jax.block_until_ready(states)
    manager.wait_until_finished()
    manager.close()
    if best["trial"] is None:
        raise FloatingPointError("every trial diverged: no dev metric to rank them by")

    flops_per_step = task.train_flops_per_example(spec, s.model_config) * config.train.batch_size
    result = _report(config, trials, losses, evals, diverged, steps_trained, early, metric, mode, num_steps,
                     steps_per_epoch, flops_per_step, best, timing, time.perf_counter() - t_begin, vmap_width)
    result.update(task=spec.task, train_examples=len(train_examples), eval_examples=len(eval_examples),
                  backbone=None if report is None else {"source": report.source, "step": report.step,
                                                        "loaded": len(report.loaded), "new": report.new})
    _write_best_run(best_dir, trials[best["trial"]], losses, evals, best, result)
    if process_index == 0:
        epath.Path(workdir, REPORT_FILE).write_text(json.dumps(result, indent=2))
        curves = {label: c for label, c in result["expected_max"].items() if label != "at_early_stop"}
        if curves:
            sweep_report.plot_expected_max(curves, os.path.join(workdir, PLOT_FILE), metric)
        print(format_report(result), flush=True)
    return result


def _early_stop(trials, active, evals, diverged, metric, mode, keep, step) -> dict:
    """The `keep` best active trials by their dev metric at `step` (ties: the earlier trial); diverged ones last."""
    def key(k):
        value = evals[k][-1][metric] if k not in diverged and evals[k] and evals[k][-1]["step"] == step else None
        if value is None or not np.isfinite(value):
            return (1, 0.0, k)
        return (0, -value if mode == "max" else value, k)

    ranked = sorted(active, key=key)
    values = {k: (None if key(k)[0] else float(evals[k][-1][metric])) for k in active}
    return {"step": step, "kept": sorted(ranked[:keep]), "stopped": sorted(ranked[keep:]), "metric_at_stop": values}


def _report(config, trials, losses, evals, diverged, steps_trained, early, metric, mode, num_steps, steps_per_epoch,
            flops_per_step, best, timing, wall_s, vmap_width) -> dict:
    higher = mode == "max"
    stopped = set(early["stopped"]) if early else set()
    rows = []
    for t in trials:
        history = evals[t.index]
        best_eval = None
        for e in history:
            if np.isfinite(e[metric]) and (best_eval is None or _better(e[metric], best_eval[metric], mode)):
                best_eval = e
        status = "diverged" if t.index in diverged else "stopped" if t.index in stopped else "completed"
        rows.append({**dataclasses.asdict(t), "status": status, "steps_trained": steps_trained[t.index],
                     "diverged_at": diverged.get(t.index), "evals": history, "best": best_eval,
                     "final": history[-1] if history and status == "completed" else None,
                     "train_loss": losses[t.index]})
    completed = [r for r in rows if r["status"] == "completed"]
    by_rate, curves = {}, {}
    for lr in sorted({t.learning_rate for t in trials}):
        done = [r for r in completed if r["learning_rate"] == lr]
        entry = {"best": sweep_report.across_seeds([r["best"][metric] for r in done]),
                 "final": sweep_report.across_seeds([r["final"][metric] for r in done]),
                 "diverged": sum(r["status"] == "diverged" for r in rows if r["learning_rate"] == lr),
                 "stopped": sum(r["status"] == "stopped" for r in rows if r["learning_rate"] == lr)}
        if early:
            entry["at_early_stop"] = sweep_report.across_seeds(
                [v for k, v in early["metric_at_stop"].items() if v is not None and trials[k].learning_rate == lr])
        by_rate[f"{lr:g}"] = entry
        if done:
            curves[f"lr={lr:g}"] = sweep_report.expected_max_curve([r["best"][metric] for r in done], higher)
    if completed:
        curves["all trials"] = sweep_report.expected_max_curve([r["best"][metric] for r in completed], higher)
    if early:
        at_stop = [v for v in early["metric_at_stop"].values() if v is not None]
        if at_stop:
            curves["at_early_stop"] = sweep_report.expected_max_curve(at_stop, higher)
    trial_steps_run = sum(steps_trained.values())
    trial_steps_full = len(trials) * num_steps
    compute = {"flops_per_trial_step": flops_per_step, "trial_steps_run": trial_steps_run,
               "trial_steps_full": trial_steps_full, "trial_steps_saved": trial_steps_full - trial_steps_run,
               "flops_run": trial_steps_run * flops_per_step,
               "flops_saved": (trial_steps_full - trial_steps_run) * flops_per_step,
               "fraction_saved": (trial_steps_full - trial_steps_run) / trial_steps_full}
    steady = timing["steady_s"] / timing["steady_steps"] if timing["steady_steps"] else None
    winner = trials[best["trial"]]
    return {
        "metric": metric, "mode": mode, "num_trials": len(trials), "num_steps": num_steps,
        "steps_per_epoch": steps_per_epoch, "batch_size": config.train.batch_size,
        "best_trial": {**dataclasses.asdict(winner), "step": best["step"], "metrics": best["metrics"],
                       "run_dir": BEST_DIR},
        "by_learning_rate": by_rate, "expected_max": curves,
        "expected_max_values": "each completed trial's best dev metric over its evaluations",
        "early_stopping": None if early is None else {**early, "fraction": early["step"] / num_steps,
                                                      "keep": len(early["kept"])},
        "compute": compute,
        "vmap_width": vmap_width,
        "timing": {"wall_s": wall_s, "first_step_s": timing["first_step_s"], "steady_step_s": steady,
                   "eval_s": timing["eval_s"]},
        "trials": rows, "config": config.to_dict(),
    }


def _write_best_run(best_dir, trial, losses, evals, best, result) -> None:
    """DIR/best's metrics.jsonl (the trial's per-step losses and evaluations) and summary.json, as finetune writes
    them; its checkpoint and tokenizer are already there."""
    if jax.process_index() != 0:
        return
    writer = MetricWriter(best_dir, tensorboard=False)
    records = [(i + 1, {"loss": loss}, "train") for i, loss in enumerate(losses[trial.index])]
    records += [(e["step"], {k: v for k, v in e.items() if k != "step"}, "eval") for e in evals[trial.index]]
    for step, metrics, split in sorted(records, key=lambda r: (r[0], r[2] == "eval")):
        writer.write(step, metrics, split)
    writer.close()
    history = evals[trial.index]
    final = {k: v for k, v in history[-1].items() if k != "step"}
    write_summary(best_dir, {
        "status": "completed" if history[-1]["step"] == result["num_steps"] else "stopped",
        "final_step": history[-1]["step"], "final_eval": final,
        "best_metric": result["metric"], "best_step": best["step"], "best_eval": best["metrics"],
        "task": result["task"], "steps_per_epoch": result["steps_per_epoch"],
        "train_examples": result["train_examples"], "eval_examples": result["eval_examples"],
        "sweep_trial": dataclasses.asdict(trial)}, plot=False, echo=False)


def format_report(result: dict) -> str:
    """The per-learning-rate table a person reads first."""
    metric = result["metric"]
    lines = [f"dev {metric} of each trial's best checkpoint, across seeds (completed trials):",
             f"{'lr':>10}  {'n':>3}  {'mean':>8}  {'std':>8}  {'min':>8}  {'max':>8}  stopped  diverged"]
    for lr, entry in result["by_learning_rate"].items():
        b = entry["best"]
        if b["count"]:
            lines.append(f"{lr:>10}  {b['count']:>3}  {b['mean']:8.4f}  {b['std']:8.4f}  {b['min']:8.4f}  "
                         f"{b['max']:8.4f}  {entry['stopped']:>7}  {entry['diverged']:>8}")
        else:
            lines.append(f"{lr:>10}  {0:>3}  {'-':>8}  {'-':>8}  {'-':>8}  {'-':>8}  {entry['stopped']:>7}  "
                         f"{entry['diverged']:>8}")
    w = result["best_trial"]
    lines.append(f"best: trial {w['index']} (init seed {w['init_seed']}, data seed {w['data_seed']}, lr "
                 f"{w['learning_rate']:g}) at step {w['step']}: {metric} {w['metrics'][metric]:.4f} -> "
                 f"{w['run_dir']}/")
    c = result["compute"]
    if result["early_stopping"]:
        lines.append(f"early stopping at step {result['early_stopping']['step']}: kept "
                     f"{result['early_stopping']['keep']} of {result['num_trials']}, saved {c['trial_steps_saved']} "
                     f"of {c['trial_steps_full']} trial-steps ({c['fraction_saved']:.0%}), "
                     f"{c['flops_saved']:.3e} training FLOPs")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The command

def define_flags():
    """Flags are defined only when run as a command (as jaxlm.finetune does), so that notebooks and tests can
    import every command module."""
    global _CONFIG
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (configs/finetune/*.py).",
                                              lock_config=True)
    flags.DEFINE_string("workdir", None, "Where sweep.json, expected_max.png and the best trial's run go.")
    flags.DEFINE_string("seeds", "", "Seeds of the trials, each both the init and the data seed: 0-9, 0,3,7.")
    flags.DEFINE_string("init_seeds", "", "Init seeds (head, dropout), crossed with --data_seeds.")
    flags.DEFINE_string("data_seeds", "", "Data-order seeds, crossed with --init_seeds.")
    flags.DEFINE_string("learning_rates", None, "Peak learning rates, e.g. 2e-5,3e-5,5e-5.")
    flags.DEFINE_float("early_stop_at", 0.0, "Fraction of the training steps after which only the "
                       "--early_stop_keep best trials continue (0: no early stopping).")
    flags.DEFINE_integer("early_stop_keep", 0, "Trials kept at --early_stop_at.")
    flags.DEFINE_integer("vmap_width", 0, "Trials vmapped together, the groups run one after another in the same "
                         "program (less memory; 1 can be faster on a CPU); 0: all at once.")


def trials_from_flags(config) -> list[Trial]:
    if FLAGS.learning_rates is None:
        raise ValueError("--learning_rates is required, e.g. --learning_rates=2e-5,3e-5,5e-5")
    rates = parse_learning_rates("--learning_rates", FLAGS.learning_rates)
    if not (FLAGS.seeds or FLAGS.init_seeds or FLAGS.data_seeds):
        raise ValueError("give the trials' seeds: --seeds=0-9, or --init_seeds / --data_seeds")
    parsed = {name: parse_seeds(f"--{name}", getattr(FLAGS, name)) if getattr(FLAGS, name) else None
              for name in ("seeds", "init_seeds", "data_seeds")}
    return make_trials(rates, config=config, **parsed)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    setup_command()
    config = _CONFIG.value
    try:
        trials = trials_from_flags(config)
        check_early_stopping(FLAGS.early_stop_at, FLAGS.early_stop_keep, len(trials))
    except ValueError as e:  # a bad flag: its name and what was expected, no usage dump
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    run(config, FLAGS.workdir, trials, early_stop_at=FLAGS.early_stop_at, early_stop_keep=FLAGS.early_stop_keep,
        vmap_width=FLAGS.vmap_width)


def cli():
    check_overrides(sys.argv)
    define_flags()
    flags.mark_flag_as_required("config")
    try:
        app.run(main)
    except BadInputError as e:  # a bad line in a task file: file:line and what was expected, no traceback
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
