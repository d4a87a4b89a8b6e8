"""A fine-tuning config -> its task, task spec, backbone config, task model and tokenizer (`setup`); and a
fine-tuned run loaded back from its workdir (`load_finetuned`), for evaluate and predict.

The backbone comes from config.init_checkpoint (a pretraining run, an import, or another fine-tuning run: its
saved model config, with config.model's run-time fields applied), or, without one, a random model of
config.model.family / size shaped by any model field config.model sets.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxlm import sharding as shd
from jaxlm import workdir as wd
from jaxlm.data import find_run_tokenizer, load_tokenizer
from jaxlm.data.byte_tokenizer import parse_bytes_name
from jaxlm.models import family_of, get_family
from jaxlm.models.registry import apply_runtime_overrides, model_config_from_section
from jaxlm.paths import absolute, open_text, resolved
from jaxlm.tasks.base import LOWER_IS_BETTER, Task, TaskSpec
from jaxlm.tasks.batches import EpochBatches, bucket_lengths
from jaxlm.tasks.registry import get_task, task_for_config
from jaxlm.train.checkpoint import CHECKPOINT_DIR

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Setup:
    task: Task
    spec: TaskSpec
    model_config: Any
    model: Any
    tokenizer_path: str
    tokenizer: Any


def setup(config, workdir: str | None = None) -> Setup:
    """Everything a fine-tuning run builds from its config before touching data or devices; reads the init
    checkpoint's saved config (not its arrays)."""
    init = config.init_checkpoint
    step = None if config.init_step < 0 else config.init_step
    model_config, saved = wd.read_model_config(init, step) if init else (None, None)
    if config.tokenizer:
        tokenizer_path = config.tokenizer
    elif init:
        tokenizer_path = find_run_tokenizer(wd.run_dir(init), saved)
    elif workdir and os.path.exists(os.path.join(workdir, "tokenizer.model")):
        tokenizer_path = os.path.join(workdir, "tokenizer.model")
    else:
        raise ValueError("config.init_checkpoint='' (a randomly initialised backbone) needs config.tokenizer")
    if model_config is None and not config.model.family:
        raise ValueError("config.init_checkpoint='' (a randomly initialised backbone) needs config.model.family")
    family_name = model_config.family if model_config is not None else config.model.family
    tokenizer = load_tokenizer(tokenizer_path, family_name)
    if model_config is None:  # a random backbone: config.model.size, reshaped by the fields config.model sets
        model_config = model_config_from_section(config.model, vocab_size=tokenizer.vocab_size)
    else:
        check_family(config.model.family, model_config, init)
        model_config = apply_runtime_overrides(model_config, config.model, where=f"the checkpoint {init}")
    family = family_of(model_config)
    task = task_for_config(config)
    spec = task.spec(config, family)
    spec = task.with_model(spec, model_config)
    spec = task.with_init_checkpoint(spec, config, saved)
    task.check_fits(spec, model_config, tokenizer)
    return Setup(task, spec, model_config, task.model(spec, model_config), tokenizer_path, tokenizer)


def task_spec(config, family: str) -> TaskSpec:
    """The task spec of a fine-tuning config for a backbone of `family` (checks that the task fits the data)."""
    return task_for_config(config).spec(config, get_family(family))


def task_model(model_config, task: str, num_labels: int = 2, head_dropout: float | None = None):
    """A task model (backbone + a fresh head) without a config: `task_model(bert_config, 'classification', 3)`;
    regression has one output, QA two."""
    num_labels = {"regression": 1, "question_answering": 2}.get(task, num_labels)
    labels = tuple(str(i) for i in range(num_labels)) if task in ("classification", "token_classification") else None
    spec = TaskSpec(task=task, format="", labels=labels, pair=False, style="bert", max_len=8, head_dropout=head_dropout)
    return get_task(task).model(spec, model_config)


def check_family(wanted: str, model_config, init: str) -> None:
    """config.model.family names the model a recipe is for; a checkpoint of another network is an error (a
    variant of the same network, T5 v1.1 for T5 or RoBERTa for BERT, is logged and fine-tuned as it is)."""
    if not wanted or wanted == model_config.family:
        return
    if get_family(wanted).config_cls is not type(model_config):
        raise ValueError(f"config.model.family={wanted!r}, but config.init_checkpoint={init!r} holds a "
                         f"{model_config.family!r} model: this recipe is for another network (set "
                         f"--config.model.family={model_config.family} to fine-tune it anyway)")
    log.warning("config.model.family=%r; the checkpoint %s is a %r model and is fine-tuned as one", wanted, init,
                model_config.family)


# ----------------------------------------------------------------------------------------------------------------
# A fine-tuned run, loaded back

@dataclasses.dataclass
class FinetunedRun:
    workdir: str
    step: int
    config: dict  # the run's saved config (finetune_config().to_dict() + model_config, task_spec, ...)
    task: Task
    spec: TaskSpec
    model: Any
    params: Any  # on `mesh`, sharded as in training
    tokenizer: Any
    mesh: Any
    param_shardings: Any

    def predictor(self, batch_size: int | None = None):
        return self.task.predictor(self.spec, self.model, self.mesh, self.param_shardings,
                                   batch_size or (self.config.get("train") or {}).get("eval_batch_size", 64),
                                   self.tokenizer)


def best_step(workdir: str, metric: str) -> int | None:
    """The step whose saved dev metrics are best (None if no checkpoint carries `metric`)."""
    mode = "min" if metric in LOWER_IS_BETTER else "max"
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, best_fn=lambda m: float(m[metric]),
                                           best_mode=mode)
    try:
        with ocp.CheckpointManager(resolved(workdir) / CHECKPOINT_DIR, options=options) as manager:
            return manager.best_step()
    except (KeyError, TypeError):
        return None


def load_finetuned(workdir: str, step: int | None = None, mesh=None) -> FinetunedRun:
    """A fine-tuning run's model, params (best dev checkpoint unless `step`), restored straight onto the mesh,
    its tokenizer and task spec."""
    saved = wd.read_config(workdir, step)
    if saved is None or "task_spec" not in saved:
        raise ValueError(f"{workdir}: not a fine-tuning run (its checkpoint config has no task_spec)")
    spec = TaskSpec.from_dict(saved["task_spec"])
    task = get_task(spec.task)
    if step is None:
        step = best_step(workdir, saved.get("best_metric") or task.best_metric(spec))
    model_config = wd.model_config_from_saved(saved)
    model = task.model(spec, model_config)
    mesh = mesh or shd.make_mesh()
    target = wd.abstract_params(model, task.init_batch(spec), mesh)
    params, _, step = wd.read_params(workdir, step, target=target)
    param_shardings = jax.tree.map(lambda a: a.sharding, target)
    tokenizer = load_tokenizer(find_run_tokenizer(workdir, saved), model_config.family)
    return FinetunedRun(workdir, step, saved, task, spec, model, params, tokenizer, mesh, param_shardings)


def train_length_buckets(config, task: Task, spec: TaskSpec) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """(lengths, keys cut to them) of the length-bucketed training batches: config.data.length_buckets below the
    row length, and the row length itself; ((), ()) when the config turns bucketing off or the task always trains
    on full rows (Task.length_bucket_keys)."""
    lengths = bucket_lengths(tuple(config.data.get("length_buckets", ())), spec.row_len)
    keys = task.length_bucket_keys(spec)
    if not lengths or keys is None:
        if lengths:
            log.info("task %s trains on full %d-token rows (no length buckets)", spec.task, spec.row_len)
        return (), ()
    return lengths, tuple(keys)


def train_flops_per_step(task: Task, spec: TaskSpec, model_config, batches: EpochBatches) -> float:
    """Training FLOPs of one global batch, averaged over an epoch's steps (with length buckets, each bucket's row
    length weighted by its batches)."""
    per_row = lambda length: task.train_flops_per_example(dataclasses.replace(spec, max_len=length),  # noqa: E731
                                                          model_config)
    if not batches.buckets:
        return task.train_flops_per_example(spec, model_config) * batches.batch_size
    total = sum(count * per_row(length) for length, count in batches.batches_per_bucket.items())
    return total / max(batches.steps_per_epoch, 1) * batches.batch_size


def data_seed(config) -> int:
    """The seed of the training data order: config.data_seed, or config.seed when it is -1."""
    return config.seed if config.data_seed < 0 else config.data_seed


def run_config(config, s: Setup, tokenizer_path: str, best_metric: str | None) -> dict:
    """The config a fine-tuning run saves with its checkpoints: what load_finetuned (evaluate, predict) reads back."""
    return {
        **config.to_dict(), "model": {**config.model.to_dict(), "family": s.model_config.family},
        "model_config": dataclasses.asdict(s.model_config), "task_spec": dataclasses.asdict(s.spec),
        "best_metric": best_metric,
        # the tokenizer's own name where nothing is on disk ("bytes"), else its absolute path
        "tokenizer_file": tokenizer_path if parse_bytes_name(tokenizer_path) is not None else absolute(tokenizer_path),
        "init_checkpoint_resolved": absolute(config.init_checkpoint) if config.init_checkpoint else None,
    }


def write_json(path: str, obj) -> None:
    """Process 0 writes `obj` to `path` (local or remote)."""
    if jax.process_index() == 0:
        with open_text(path, "w") as f:
            json.dump(obj, f, indent=2)
