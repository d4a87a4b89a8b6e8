"""The language model a bias probe scores, from any run: a pretraining run, an import (`convert from-hf`), a
text-to-text fine-tuning run, or a fine-tuning run of a task with its own head (classification, NER, QA,
embeddings), which keeps no language-model head: its backbone is scored with the LM head of the run it was
fine-tuned from (its init checkpoint, followed back through earlier fine-tuning runs), so that the probe measures
what fine-tuning did to the backbone."""
from __future__ import annotations

import os

from jaxlm import sharding as shd
from jaxlm import workdir as wd
from jaxlm.models import family_of
from jaxlm.tasks.base import TaskSpec
from jaxlm.tasks.finetuning import best_step
from jaxlm.tasks.registry import get_task

MAX_INIT_CHAIN = 8  # fine-tuning runs followed back before giving up (a loop of init checkpoints)


def _has_task_head(saved: dict | None) -> bool:
    task = ((saved or {}).get("task_spec") or {}).get("task")
    return task is not None and task != "seq2seq"


def _init_checkpoint(path: str, saved: dict) -> str:
    init = saved.get("init_checkpoint_resolved") or saved.get("init_checkpoint")
    if not init:
        raise ValueError(f"{path}: a fine-tuning run ({saved['task_spec']['task']}) from a randomly initialised "
                         "backbone has no language-model head to score with")
    return init


def _lm_head_params(path: str, target: dict, chain: int = 0) -> dict:
    """`target`'s params (the LM tree outside the backbone) from the first run up the init chain that has them."""
    if chain > MAX_INIT_CHAIN:
        raise ValueError(f"{path}: more than {MAX_INIT_CHAIN} fine-tuning runs in the init_checkpoint chain")
    saved = wd.read_config(path)
    if _has_task_head(saved):
        return _lm_head_params(_init_checkpoint(path, saved), target, chain + 1)
    params, _, _ = wd.read_params(path, target=target, subtree=wd.lm_subtree(saved or {}))
    return params


def open_language_model(path: str, step: int | None = None, *, mesh=None, tokenizer: str = "") -> wd.Run:
    """The run's language model on `mesh` (see the module docstring). A fine-tuning run's default step is its best
    dev checkpoint, as `evaluate` and `predict` use."""
    mesh = mesh or shd.make_mesh()
    saved = wd.read_config(path, step)
    if not _has_task_head(saved):
        return wd.open_run(path, step, mesh=mesh, tokenizer=tokenizer)
    init = _init_checkpoint(path, saved)
    if step is None:
        spec = TaskSpec.from_dict(saved["task_spec"])
        step = best_step(path, saved.get("best_metric") or get_task(spec.task).best_metric(spec))
    model_config = wd.model_config_from_saved(saved)
    family = family_of(model_config)
    target = wd.abstract_params(family.build(model_config), family.init_inputs(model_config), mesh)
    stored = wd.stored_param_shapes(path, step)["backbone"]
    key = family.backbone_key
    if key:
        backbone, _, step = wd.read_params(path, step, target=target[key], subtree=("backbone",))
        params = {key: backbone}
    else:  # the backbone is part of the LM tree (GPT-2: all of it; T5's encoder: some of it)
        own = {k: v for k, v in target.items() if k in stored}
        params, _, step = wd.read_params(path, step, target=own, subtree=("backbone",))
    rest = {k: v for k, v in target.items() if k not in params}
    if rest:
        params = {**params, **_lm_head_params(init, rest)}
    tok, tokenizer_path = wd.tokenizer_of(path, saved, family.name, tokenizer)
    return wd.Run(path=os.fspath(path), step=step, saved=saved, model_config=model_config, params=params,
                  tokenizer=tok, tokenizer_path=tokenizer_path, mesh=mesh, rules=shd.DEFAULT_RULES)
