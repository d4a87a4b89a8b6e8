"""Pretraining: `python -m jaxlm.pretrain --config=configs/pretrain/quickstart.py --workdir=DIR`.

Override any key on the command line (`--config.train.num_steps=200`, `--config.model.num_layers=2`); a misspelt
key is an error listing the valid ones. Re-running with the workdir of an earlier run resumes from its latest
checkpoint, data iterator included. From a notebook: `jaxlm.pretrain.run(config, workdir)`.

On Linux the command first restarts itself once with malloc's transparent huge pages (jaxlm.huge_pages), before
its heavy imports so that the restart costs no import time.
"""
# ruff: noqa: E402  (the restart comes before the heavy imports, so that it costs no import time)
import sys

from jaxlm.huge_pages import restart_with_huge_pages

if __name__ == "__main__":
    restart_with_huge_pages()

import dataclasses

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from jaxlm import data, sharding, train
from jaxlm.cli import setup_command
from jaxlm.config_defaults import check_overrides
from jaxlm.data.sources import data_dir
from jaxlm.models import family_of
from jaxlm.models.common import to_dtype
from jaxlm.models.registry import model_config_from_section
from jaxlm.objectives import objective_from_config
from jaxlm.run_lock import workdir_lock
from jaxlm.train.accounting import accounting_for_run
from jaxlm.train.metrics import format_summary

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags():
    """Flags exist only when this runs as a command, so notebooks can import pretrain and finetune together."""
    global _CONFIG
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file (configs/pretrain/*.py).",
                                              lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the summary go (local or gs://).")


def check_train_section(config, process_count: int) -> None:
    """The run-length and batch keys, named when they cannot work."""
    t = config.train
    for key in ("num_steps", "batch_size", "num_microbatches", "steps_per_call"):
        if t[key] < 1:
            raise ValueError(f"config.train.{key}={t[key]} must be >= 1")
    for key in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "prefetch_batches"):
        if t[key] < 0:
            raise ValueError(f"config.train.{key}={t[key]} must be >= 0 (0 turns it off)")
    if t.eval_every and not t.eval_batches and process_count > 1:
        raise ValueError("config.train.eval_batches=0 (the whole validation split) needs one process: with several, "
                         "each would run its own number of eval steps; give a count")
    if t.batch_size % process_count:
        raise ValueError(f"config.train.batch_size={t.batch_size} is not divisible by the {process_count} processes")


def run(config, workdir: str):
    """Builds every piece from the config and trains; returns the run summary. Holds the workdir's lock
    (jaxlm.run_lock) for the whole run: a second run on the same workdir is refused."""
    sharding.initialize_from_config(config.distributed)
    check_train_section(config, jax.process_count())
    objective = objective_from_config(config)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    with workdir_lock(workdir, enabled=jax.process_index() == 0):
        return _train(config, workdir, objective)


def _train(config, workdir: str, objective):
    process_index, process_count = jax.process_index(), jax.process_count()
    batch_size = config.train.batch_size

    dataset = data.prepare_dataset(config.data)
    tokenizer = data.load_or_train_tokenizer(config.data, workdir, dataset, process_count=process_count)
    objective.check_tokenizer(tokenizer)
    model_config = model_config_from_section(config.model, vocab_size=tokenizer.vocab_size)
    if model_config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"config.model.vocab_size={model_config.vocab_size} is smaller than the tokenizer's "
                         f"vocabulary ({tokenizer.vocab_size})")
    family = family_of(model_config)
    objective.check_model(family, model_config)
    model_config = objective.prepare_model_config(model_config, tokenizer)
    objective = objective.for_model(model_config)
    model = family.build(model_config)
    mesh, rules = sharding.mesh_and_rules(config.mesh)
    if batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the data x fsdp mesh axes "
                         f"({mesh.shape['data']} x {mesh.shape['fsdp']})")
    logging.info("model %s; mesh %s; %d process(es)", model_config, dict(mesh.shape), process_count)

    tx, schedule = train.make_optimizer(config.optimizer, num_steps=config.train.num_steps)
    init_inputs = objective.init_inputs(family, model_config)
    state, layout = train.create_train_state(lambda rng: model.init(rng, **init_inputs), tx,
                                             jax.random.key(config.seed), mesh, rules)
    memory_shape = objective.memory_shape(model_config, batch_size)
    if memory_shape is not None:  # XLNet's mems, carried across steps and saved with the state
        state, layout = train.with_memory(state, layout, memory_shape, to_dtype(model_config.dtype))
    manager = train.make_checkpoint_manager(workdir, max_to_keep=config.train.keep_checkpoints,
                                            async_save=config.train.async_checkpointing)
    if config.train.init_from and manager.latest_step() is None:
        restored = train.restore_latest(config.train.init_from, layout)  # onto this run's mesh
        if restored is None:
            raise FileNotFoundError(f"config.train.init_from={config.train.init_from!r} has no checkpoint")
        logging.info("starting from %s step %d (its data position is not used)", config.train.init_from,
                     restored.step)
        state = restored.state

    loss_fn = objective.loss_fn(model)
    batch_sharding = sharding.batch_sharding(mesh)
    step_fn = train.make_train_step(loss_fn, tx, num_microbatches=config.train.num_microbatches,
                                    learning_rate_fn=schedule)
    train_step = train.jit_train_step(step_fn, layout, batch_sharding, mesh, rules)
    steps_per_call = config.train.steps_per_call
    train_steps = train.jit_train_steps(step_fn, layout, batch_sharding, mesh, rules) if steps_per_call > 1 else None
    stream = dict(batch_size=batch_size // process_count, seed=config.seed, process_index=process_index,
                  process_count=process_count)
    train_iter = objective.iterator(dataset, tokenizer, split=config.data.train_split, data_dir=data_dir(config.data),
                                    worker_count=config.data.worker_count, **stream)
    evaluate, baselines = None, {}
    if config.train.eval_every or config.train.eval_batches:
        def eval_batches():
            return objective.eval_iterator(dataset, tokenizer, split=config.data.eval_split,
                                           data_dir=data_dir(config.data),
                                           num_batches=config.train.eval_batches or None,  # 0: the whole split
                                           **stream)
        eval_step = train.jit_eval_step(train.make_eval_step(loss_fn), layout, batch_sharding, mesh, rules)
        evaluate = train.BatchEvaluator(eval_step, eval_batches, mesh, batch_sharding)
        baselines = objective.baselines(eval_batches())

    saved_config = {**config.to_dict(), "model_config": dataclasses.asdict(model_config),
                    "tokenizer_file": tokenizer.model_file}
    peak = None
    if jax.local_devices()[0].platform == "cpu" and config.train.cpu_peak_flops:
        peak = config.train.cpu_peak_flops / jax.local_device_count()
    flops_per_step = objective.train_flops_per_example(family, model_config) * batch_size
    summary = train.train(
        state=state, train_step=train_step, train_iter=train_iter, num_steps=config.train.num_steps,
        workdir=workdir, mesh=mesh, checkpoint_manager=manager, checkpoint_every=config.train.checkpoint_every,
        evaluate=evaluate, eval_every=config.train.eval_every, log_every=config.train.log_every,
        flops_per_step=flops_per_step, tokens_per_step=batch_size * objective.tokens_per_example,
        peak_flops_per_device=peak, config=saved_config, progress=config.train.progress_bar, extra_summary=baselines,
        accounting=accounting_for_run(config.train, flops_per_step, mesh.devices.size),
        train_steps=train_steps, steps_per_call=steps_per_call, prefetch=config.train.prefetch_batches)
    manager.close()
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
    if not _CONFIG.value.train.progress_bar:  # with the bar on, the loop already printed the summary table
        print(format_summary({k: v for k, v in summary.items() if k != "state"}))


if __name__ == "__main__":
    check_overrides(sys.argv)
    define_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
