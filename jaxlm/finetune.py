"""Fine-tuning: `python -m jaxlm.finetune --config=configs/finetune/sst2.py --config.init_checkpoint=RUN --workdir=DIR`.

RUN is a pretraining workdir, one of its step dirs, an imported Hugging Face workdir (`python -m jaxlm.convert
from-hf`) or another fine-tuning run. The backbone is restored from it (the loaded / new / unused report is
printed and kept in DIR/backbone_report.json), the task head is new, and training runs through the same sharded
step, checkpoints and resume as pretraining (jaxlm.train.loop). The dev set is evaluated with the task's own
metrics (jaxlm.tasks) at every epoch end (or every config.train.eval_every_steps); the checkpoint with the best
dev metric is kept beside the latest, and summary.json holds the final and best dev metrics. Re-running with the
same DIR resumes. From a notebook: `jaxlm.finetune.run(config, workdir)`.
"""
import dataclasses
import json
import os
import sys

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from jaxlm import sharding, train
from jaxlm.cli import setup_command
from jaxlm.config_defaults import check_overrides
from jaxlm.data import keep_tokenizer
from jaxlm.run_lock import workdir_lock
from jaxlm.tasks import BadInputError, EpochBatches, num_rows
from jaxlm.tasks.base import LOWER_IS_BETTER
from jaxlm.tasks.evaluation import TaskEvaluator
from jaxlm.tasks.finetuning import (
    best_step,
    data_seed,
    run_config,
    setup,
    train_flops_per_step,
    train_length_buckets,
    write_json,
)
from jaxlm.train import lora
from jaxlm.train.accounting import accounting_for_run
from jaxlm.train.metrics import read_metrics, write_summary
from jaxlm.workdir import abstract_params, restore_backbone

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags():
    """Flags are defined only when run as a command, so that notebooks and tests can import both
    jaxlm.pretrain and jaxlm.finetune (each defining --config at import would clash)."""
    global _CONFIG
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (configs/finetune/*.py).",
                                              lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the summary go.")


def _check_batch(name: str, batch_size: int, mesh, process_count: int):
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size < 1 or batch_size % shards or batch_size % process_count:
        raise ValueError(f"config.train.{name}={batch_size} must be a positive multiple of the data x fsdp mesh axes "
                         f"({shards}) and of the {process_count} process(es)")


def _check_run_length(t) -> None:
    if t.num_steps < -1:
        raise ValueError(f"config.train.num_steps={t.num_steps} must be >= 1, or -1 / 0 to train "
                         f"config.train.num_epochs={t.num_epochs} epochs")
    if t.num_epochs < 0:
        raise ValueError(f"config.train.num_epochs={t.num_epochs} must be >= 0 (0 only evaluates the initial model)")


def _eval_at(workdir: str, step: int) -> dict | None:
    """The dev metrics logged at `step` (metrics.jsonl)."""
    found = None
    for record in read_metrics(workdir):
        if record.get("split") == "eval" and record.get("step") == step:
            found = {k: v for k, v in record.items() if k not in ("split", "step", "time")}
    return found


def run(config, workdir: str):
    """Builds every piece from the config, restores the backbone, trains; returns the run summary. Holds the
    workdir's lock (jaxlm.run_lock) for the whole run: a second run on the same workdir is refused."""
    sharding.initialize_from_config(config.distributed)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, enabled=jax.process_index() == 0):
        return _train(config, workdir)


def _train(config, workdir: str):
    process_index, process_count = jax.process_index(), jax.process_count()
    _check_run_length(config.train)
    s = setup(config, workdir)
    task, spec = s.task, s.spec
    logging.info("task %s (%s, %s labels); backbone %s", spec.task, spec.format, spec.num_labels, s.model_config)

    d = config.data
    train_examples = task.read_examples(spec, d, d.train_file, split=d.train_split, limit=d.train_limit)
    train_features = task.features(spec, train_examples, s.tokenizer)
    eval_examples = eval_features = None
    if d.eval_file or (d.tfds_name and d.eval_split):
        eval_examples = task.read_examples(spec, d, d.eval_file, split=d.eval_split, limit=d.eval_limit)
        eval_features = task.features(spec, eval_examples, s.tokenizer)

    mesh, rules = sharding.mesh_and_rules(config.mesh)
    _check_batch("batch_size", config.train.batch_size, mesh, process_count)
    _check_batch("eval_batch_size", config.train.eval_batch_size, mesh, process_count)
    buckets, bucket_keys = train_length_buckets(config, task, spec)
    train_iter = EpochBatches(train_features, config.train.batch_size, task.device_keys(spec), seed=data_seed(config),
                              process_index=process_index, process_count=process_count, buckets=buckets,
                              bucket_keys=bucket_keys)
    steps_per_epoch = train_iter.steps_per_epoch
    num_steps = (config.train.num_steps if config.train.num_steps > 0
                 else int(round(config.train.num_epochs * steps_per_epoch)))
    logging.info("%d training examples -> %d rows, %d steps per epoch, %d steps", len(train_examples),
                 num_rows(train_iter.features), steps_per_epoch, num_steps)
    if buckets:
        logging.info("length buckets: batches per epoch %s; %.1f of %d tokens per row on average",
                     train_iter.batches_per_bucket, train_iter.mean_row_len(), spec.row_len)

    init_batch = task.init_batch(spec)
    lora_config = lora.LoraConfig.from_dict(config.lora)
    tx, schedule = train.make_optimizer(config.optimizer, num_steps=max(num_steps, 1),
                                        params=lora.optimizer_params(abstract_params(s.model, init_batch), lora_config))
    init_fn = lambda rng: s.model.init(rng, **init_batch)  # noqa: E731
    state, layout = train.create_train_state(init_fn, lora.base_optimizer(tx, lora_config),
                                             jax.random.key(config.seed), mesh, rules)

    best_metric = task.best_metric(spec, config.train.best_metric) if eval_examples is not None else None
    manager = train.make_checkpoint_manager(workdir, max_to_keep=config.train.keep_checkpoints,
                                            async_save=config.train.async_checkpointing, best_metric=best_metric,
                                            best_mode="min" if best_metric in LOWER_IS_BETTER else "max")
    report = None
    if manager.latest_step() is None and config.init_checkpoint:
        init_step = None if config.init_step < 0 else config.init_step
        params, report = restore_backbone(state.params, config.init_checkpoint, step=init_step)
        params = task.restore_head(spec, params, config.init_checkpoint, init_step)
        state = state.replace(params=params)
        write_json(os.path.join(workdir, "backbone_report.json"), dataclasses.asdict(report))
    elif manager.latest_step() is not None:
        logging.info("resuming %s from step %d", workdir, manager.latest_step())
    adapted = None
    if lora_config.enabled:  # the backbone frozen (stored once in the workdir), LoRA adapters + head train
        adapted = lora.adapt(state, layout, init_fn, lora_config, tx, mesh, rules, run_dir=workdir,
                             resume=manager.latest_step() is not None)
        state = adapted.state

    if adapted is None:
        train_step = train.jit_train_step(
            train.make_train_step(task.loss_fn(spec, s.model), tx, num_microbatches=config.train.num_microbatches,
                                  learning_rate_fn=schedule),
            layout, sharding.batch_sharding(mesh), mesh, rules)
    else:
        train_step = adapted.jit_train_step(task.loss_fn(spec, s.model), tx, sharding.batch_sharding(mesh),
                                            num_microbatches=config.train.num_microbatches, learning_rate_fn=schedule)
    evaluate = None
    if eval_examples is not None:
        predictor = task.predictor(spec, s.model, mesh, layout.shardings.params, config.train.eval_batch_size,
                                   s.tokenizer, rules)
        evaluate = TaskEvaluator(task, spec, predictor, eval_examples, eval_features)
        if adapted is not None:
            evaluate = adapted.evaluator(evaluate)

    tokenizer_path = keep_tokenizer(s.tokenizer_path, workdir) if process_index == 0 else s.tokenizer_path
    saved_config = run_config(config, s, tokenizer_path, best_metric)
    peak = None
    if jax.local_devices()[0].platform == "cpu" and config.train.cpu_peak_flops:
        peak = config.train.cpu_peak_flops / jax.local_device_count()
    period = config.train.eval_every_steps or steps_per_epoch  # evaluation and checkpoint period
    eval_every = period if config.train.eval_every_epoch or config.train.eval_every_steps else 0
    flops_per_step = train_flops_per_step(task, spec, s.model_config, train_iter)  # an epoch's mean (buckets)
    tokens_per_step = round(config.train.batch_size * (train_iter.mean_row_len() if buckets else spec.row_len))
    summary = train.train(
        state=state, train_step=train_step, train_iter=train_iter, num_steps=num_steps, workdir=workdir, mesh=mesh,
        checkpoint_manager=manager, checkpoint_every=period, evaluate=evaluate, eval_every=eval_every,
        log_every=config.train.log_every,
        flops_per_step=flops_per_step, tokens_per_step=tokens_per_step,
        peak_flops_per_device=peak, config=saved_config,
        progress=config.train.progress_bar,
        accounting=accounting_for_run(config.train, flops_per_step, mesh.devices.size))
    manager.close()

    state = summary.pop("state")
    if evaluate is not None and summary.get("final_eval") is None:  # no step taken: score the initial model
        summary["final_eval"] = evaluate(state.params)
    summary.update(task=spec.task, format=spec.format, steps_per_epoch=steps_per_epoch,
                   train_examples=len(train_examples), eval_examples=len(eval_examples or ()),
                   best_metric=best_metric)
    if best_metric is not None:
        best = best_step(workdir, best_metric)
        summary["best_step"] = best
        summary["best_eval"] = _eval_at(workdir, best) if best is not None else None
    if report is not None:
        summary["backbone"] = {"source": report.source, "step": report.step, "loaded": len(report.loaded),
                               "new": report.new, "unused": report.unused}
    write_summary(workdir, summary, plot=False, echo=False)
    if process_index == 0 and summary.get("final_eval"):
        print("dev metrics (final): " + json.dumps(summary["final_eval"]), flush=True)
        if summary.get("best_eval"):
            print(f"dev metrics (best, step {summary['best_step']}): " + json.dumps(summary["best_eval"]), flush=True)
    summary["state"] = state
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    setup_command()
    summary = run(_CONFIG.value, FLAGS.workdir)
    if summary.get("status") != "completed":
        logging.warning("run ended with status %s", summary.get("status"))


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
