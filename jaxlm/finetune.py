"""Fine-tuning: `python -m jaxlm.finetune --config=configs/finetune/sst2.py --config.init_checkpoint=RUN --workdir=DIR`.

RUN is a pretraining workdir, one of its step dirs, an imported Hugging Face workdir (`python -m jaxlm.convert
from-hf`) or another fine-tuning run. The backbone is restored from it (the loaded / new / unused report is
printed and kept in DIR/backbone_report.json), the task head is new, and training runs through the same sharded
step, checkpoints and resume as pretraining (jaxlm.train.loop). The dev set is evaluated with the task's own
metrics (accuracy, F1, Matthews, Pearson/Spearman, conlleval entity F1, SQuAD EM/F1; for seq2seq, BLEU / ROUGE
or the task's metrics of the generated text: translation, summarisation and T5's text-to-text GLUE / SQuAD, or
GPT-2 writing after a prompt) at every epoch end (or every config.train.eval_every_steps); the checkpoint with
the best dev metric is kept beside the latest, and summary.json holds the final and best dev
metrics. Re-running with the same DIR resumes. From a notebook: `jaxlm.finetune.run(config, workdir)`.
"""
import dataclasses
import json
import os
import sys

from absl import app, flags, logging

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags():
    """Flags are defined only when run as a command, so that notebooks and tests can import both
    jaxlm.pretrain and jaxlm.finetune (each defining --config at import would clash)."""
    global _CONFIG
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "Fine-tuning config file (configs/finetune/*.py).",
                                              lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the summary go.")


def _optimizer(config, num_steps: int, abstract_params):
    """(optax transform, schedule) from config.optimizer: warmup_ratio x steps, optional layer-wise lr decay."""
    import optax

    from jaxlm import train
    from jaxlm.train.backbone import layerwise_lr_scales, scale_updates

    opt = config.optimizer.to_dict()
    warmup_ratio, decay = opt.pop("warmup_ratio"), opt.pop("layerwise_lr_decay")
    if opt["total_steps"] < 0:
        opt["total_steps"] = num_steps
    if opt["warmup_steps"] < 0:
        opt["warmup_steps"] = int(round(warmup_ratio * opt["total_steps"]))
    if opt["schedule"] in ("linear", "cosine") and opt["total_steps"] <= opt["warmup_steps"]:
        opt["total_steps"] = opt["warmup_steps"] + 1  # a 0- or 1-step run (evaluation only)
    if not 0 < decay <= 1:
        raise ValueError(f"config.optimizer.layerwise_lr_decay={decay} must be in (0, 1]")
    tx, schedule = train.make_optimizer(train.OptimizerConfig.from_dict(opt))
    if decay < 1:
        tx = optax.chain(tx, scale_updates(layerwise_lr_scales(abstract_params, decay)))
    return tx, schedule


def build(config, workdir: str | None = None):
    """(spec, model config, task model, tokenizer path, tokenizer) for a config, reading the init checkpoint's
    saved config (not its arrays)."""
    from etils import epath

    from jaxlm import task_pipeline as tp
    from jaxlm.config_defaults import finetune_config
    from jaxlm.models import get_model_config
    from jaxlm.models.heads import HeadConfig, task_model
    from jaxlm.train.backbone import read_backbone_config, workdir_of

    init = config.init_checkpoint
    step = None if config.init_step < 0 else config.init_step
    model_config, saved = (read_backbone_config(init, step) if init else (None, None))
    if config.tokenizer:
        tokenizer_path = config.tokenizer
    elif init:
        tokenizer_path = tp.checkpoint_tokenizer_path(workdir_of(init), saved)
    elif workdir and epath.Path(workdir, "tokenizer.model").exists():
        tokenizer_path = os.path.join(workdir, "tokenizer.model")
    else:
        raise ValueError("config.init_checkpoint='' (a randomly initialised backbone) needs config.tokenizer")
    family = model_config.family if model_config is not None else config.model.family
    tokenizer = tp.load_tokenizer(tokenizer_path, family)
    shape = {k: v for k, v in config.model.items() if k not in finetune_config().model}
    if model_config is None:  # a random backbone: config.model.size, reshaped by any keys added to config.model
        model_config = get_model_config(family, config.model.size or None, **{"vocab_size": tokenizer.vocab_size,
                                                                              **shape})
    elif shape:
        raise ValueError(f"config.model.{sorted(shape)[0]}: the checkpoint {init} fixes the model's shape; keys "
                         f"added to config.model ({sorted(shape)}) shape a random backbone (init_checkpoint='') only")
    model_config = tp.override_model_config(model_config, config.model)
    spec = tp.task_spec(config, family)
    if spec.task == "seq2seq":
        spec = dataclasses.replace(spec, pad_id=model_config.pad_token_id,
                                   decoder_start_id=getattr(model_config, "decoder_start_token_id", 0))
    tp.check_fits(spec, model_config, tokenizer)
    head = HeadConfig(task=spec.task, num_labels=spec.num_labels,
                      dropout=None if config.head.dropout < 0 else config.head.dropout)
    return spec, model_config, task_model(model_config, head), tokenizer_path, tokenizer


def _check_batch(name: str, batch_size: int, mesh, process_count: int):
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if batch_size % shards or batch_size % process_count:
        raise ValueError(f"config.train.{name}={batch_size} must be divisible by the data x fsdp mesh axes "
                         f"({shards}) and the {process_count} process(es)")


def _eval_at(workdir: str, step: int) -> dict | None:
    """The dev metrics logged at `step` (metrics.jsonl)."""
    from jaxlm.train.metrics import read_metrics

    found = None
    for record in read_metrics(workdir):
        if record.get("split") == "eval" and record.get("step") == step:
            found = {k: v for k, v in record.items() if k not in ("split", "step", "time")}
    return found


def run(config, workdir: str):
    """Builds every piece from the config, restores the backbone, trains; returns the run summary."""
    import jax
    from etils import epath

    from jaxlm import sharding, train
    from jaxlm import task_pipeline as tp
    from jaxlm.models.common import matmul_params
    from jaxlm.objectives.finetuning import make_finetuning_loss
    from jaxlm.paths import absolute
    from jaxlm.train import metrics as mx
    from jaxlm.train.backbone import restore_backbone

    sharding.initialize_from_config(config.distributed)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    process_index, process_count = jax.process_index(), jax.process_count()
    spec, model_config, model, tokenizer_path, tokenizer = build(config, workdir)
    logging.info("task %s (%s, %s labels); backbone %s", spec.task, spec.format, spec.num_labels, model_config)

    d = config.data
    train_examples = tp.read_examples(spec, d, d.train_file, split=d.train_split, limit=d.train_limit)
    train_features = tp.make_features(spec, train_examples, tokenizer)
    eval_examples = eval_features = None
    if d.eval_file or (d.tfds_name and d.eval_split):
        eval_examples = tp.read_examples(spec, d, d.eval_file, split=d.eval_split, limit=d.eval_limit)
        eval_features = tp.make_features(spec, eval_examples, tokenizer)

    mesh = sharding.make_mesh(**config.mesh)
    _check_batch("batch_size", config.train.batch_size, mesh, process_count)
    _check_batch("eval_batch_size", config.train.eval_batch_size, mesh, process_count)
    train_iter = tp.EpochBatches(train_features, config.train.batch_size, tp.device_keys(spec),
                                 seed=config.seed, process_index=process_index, process_count=process_count)
    steps_per_epoch = train_iter.steps_per_epoch
    num_steps = (config.train.num_steps if config.train.num_steps > 0
                 else int(round(config.train.num_epochs * steps_per_epoch)))
    logging.info("%d training examples -> %d rows, %d steps per epoch, %d steps", len(train_examples),
                 len(train_features["inputs"]), steps_per_epoch, num_steps)

    dummy = tp.init_batch(spec)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy))["params"]
    tx, schedule = _optimizer(config, num_steps, train.state.unbox(abstract))
    state, layout = train.create_train_state(lambda rng: model.init(rng, **dummy), tx, jax.random.key(config.seed),
                                             mesh)

    best_metric = spec.best_metric(config.train.best_metric) if eval_examples is not None else None
    best_mode = "min" if best_metric in tp.LOWER_IS_BETTER else "max"
    manager = train.make_checkpoint_manager(workdir, max_to_keep=config.train.keep_checkpoints,
                                            async_save=config.train.async_checkpointing,
                                            best_metric=best_metric, best_mode=best_mode)
    report = None
    if manager.latest_step() is None and config.init_checkpoint:
        params, report = restore_backbone(state.params, config.init_checkpoint,
                                          step=None if config.init_step < 0 else config.init_step)
        state = state.replace(params=params)
        tp.write_json(os.path.join(workdir, "backbone_report.json"), dataclasses.asdict(report))
    elif manager.latest_step() is not None:
        logging.info("resuming %s from step %d", workdir, manager.latest_step())

    loss_fn = make_finetuning_loss(spec.task, model)
    train_step = train.jit_train_step(
        train.make_train_step(loss_fn, tx, num_microbatches=config.train.num_microbatches, learning_rate_fn=schedule),
        layout, sharding.batch_sharding(mesh), mesh)
    evaluator = None
    if eval_examples is not None:
        predictor = tp.make_predictor(spec, model, mesh, layout.shardings.params, config.train.eval_batch_size,
                                      tokenizer)
        evaluator = tp.TaskEvaluator(spec, predictor, eval_examples, eval_features)

    if process_index == 0:
        tokenizer_path = tp.save_tokenizer(tokenizer_path, workdir)
    saved_config = {
        **config.to_dict(), "model": {**config.model.to_dict(), "family": model_config.family},
        "model_config": dataclasses.asdict(model_config), "head": dataclasses.asdict(model.head),
        "task_spec": dataclasses.asdict(spec), "best_metric": best_metric,
        "tokenizer_file": absolute(tokenizer_path),
        "init_checkpoint_resolved": absolute(config.init_checkpoint) if config.init_checkpoint else None,
    }
    tokens_per_step = config.train.batch_size * spec.row_len
    if spec.task == "seq2seq" and spec.encoder_decoder:  # each T5 stack over its own length
        from jaxlm.models.t5 import seq2seq_train_flops

        flops_per_token = seq2seq_train_flops(model_config, state.params["backbone"], spec.max_len,
                                              spec.max_target_len) / spec.max_len
    else:
        flops_per_token = train.transformer_train_flops_per_token(
            matmul_params(state.params), model_config.num_layers, model_config.hidden_size, spec.row_len)
    peak = None
    if jax.local_devices()[0].platform == "cpu" and config.train.cpu_peak_flops:
        peak = config.train.cpu_peak_flops / jax.local_device_count()
    period = config.train.eval_every_steps or steps_per_epoch  # evaluation and checkpoint period
    eval_every = period if config.train.eval_every_epoch or config.train.eval_every_steps else 0
    summary = train.train(
        state=state, train_step=train_step, train_iter=train_iter, num_steps=num_steps, workdir=workdir, mesh=mesh,
        checkpoint_manager=manager, checkpoint_every=period, eval_step=evaluator,
        eval_iter_fn=evaluator.iter_fn if evaluator else None, eval_every=eval_every,
        log_every=config.train.log_every, flops_per_step=flops_per_token * tokens_per_step,
        tokens_per_step=tokens_per_step, peak_flops_per_device=peak, config=saved_config,
        progress=config.train.progress_bar)
    manager.close()

    state = summary.pop("state")
    if evaluator is not None and summary.get("final_eval") is None:  # no step taken: score the initial model
        summary["final_eval"] = evaluator.evaluate(state.params)
    summary.update(task=spec.task, format=spec.format, steps_per_epoch=steps_per_epoch,
                   train_examples=len(train_examples), eval_examples=len(eval_examples or ()),
                   best_metric=best_metric)
    if best_metric is not None:
        best = tp.best_step(workdir, best_metric)
        summary["best_step"] = best
        summary["best_eval"] = _eval_at(workdir, best) if best is not None else None
    if report is not None:
        summary["backbone"] = {"source": report.source, "step": report.step, "loaded": len(report.loaded),
                               "new": report.new, "unused": report.unused}
    for key in ("final_eval", "best_eval"):  # exp(task loss) is no perplexity
        if summary.get(key):
            summary[key].pop("perplexity", None)
    mx.write_summary(workdir, summary, plot=False, echo=False)
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
    summary = run(_CONFIG.value, FLAGS.workdir)
    if summary.get("status") != "completed":
        logging.warning("run ended with status %s", summary.get("status"))


def cli():
    from jaxlm.config_defaults import check_overrides
    from jaxlm.tasks import BadInputError

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
