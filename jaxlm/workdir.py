"""The one reader of run directories: a pretraining run, an imported Hugging Face model (`convert from-hf`) or a
fine-tuning run, local or remote (gs://).

    workdir/checkpoints/<step>/{state,data_iter,config,metrics}   Orbax (jaxlm.train.checkpoint writes them)
    workdir/jaxlm_config.json                                      an import's config, also beside its checkpoint
    workdir/tokenizer.model | workdir/tokenizer/                   the run's tokenizer (sentencepiece | HF files)

Every command that reads a run (finetune's backbone, evaluate, predict, generate, convert to-hf, the embedding,
bias and evaluation-harness commands) goes through here. Parameters are restored straight onto the shardings
the caller's mesh wants: each host reads only its own shards (Orbax), never the whole tree first.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd
from jaxlm.data.tokenizer_io import find_run_tokenizer, load_tokenizer
from jaxlm.layers import stack_layers
from jaxlm.models import family_of, get_model_config
from jaxlm.models.common import unbox
from jaxlm.paths import open_text, resolved
from jaxlm.train import lora
from jaxlm.train.backbone import BackboneReport, num_stacked_layers, plan_backbone, scanned_name, split_source
from jaxlm.train.checkpoint import CHECKPOINT_DIR

log = logging.getLogger(__name__)

CONFIG_FILE = "jaxlm_config.json"


# ---------------------------------------------------------------------------------------------------------
# Steps and configs

def _read_only_manager(directory: epath.Path, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0, **options))


def step_dir(path: str, step: int | None = None) -> epath.Path:
    """A run's workdir (its latest step, or `step`), its checkpoints/ folder, or one step's folder -> the step
    folder."""
    path = resolved(path)
    if (path / "state").exists():
        return path
    directory = path if path.name == CHECKPOINT_DIR else path / CHECKPOINT_DIR
    if not directory.exists():
        raise FileNotFoundError(f"{directory} not found: {path} is not a jaxlm run (pass its workdir, its "
                                "checkpoints/ folder or one step's folder)")
    with _read_only_manager(directory) as manager:
        steps = manager.all_steps()
        step = manager.latest_step() if step is None else int(step)
        if step is None or step not in steps:
            raise FileNotFoundError(f"no complete checkpoint {'' if step is None else step} in {directory} "
                                    f"(steps: {sorted(steps)})")
    return directory / str(step)


def run_dir(path: str) -> str:
    """The run directory of a workdir / checkpoints dir / step dir (where the tokenizer lives); from the path
    alone, so that a run without checkpoints (a fresh import) still finds its tokenizer."""
    folder = epath.Path(path)
    if folder.name == CHECKPOINT_DIR:
        return os.fspath(folder.parent)
    if str(folder.name).isdigit() and folder.parent.name == CHECKPOINT_DIR:
        return os.fspath(folder.parent.parent)
    return os.fspath(path)


def read_config(path: str, step: int | None = None) -> dict | None:
    """The run config saved beside a checkpoint, else the run's jaxlm_config.json (an import); None if neither."""
    config_dir = step_dir(path, step) / "config"
    if config_dir.exists():
        with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
            return checkpointer.restore(config_dir)
    config_file = epath.Path(run_dir(path)) / CONFIG_FILE
    if config_file.is_file():
        with open_text(config_file) as f:
            return json.load(f)
    return None


def model_config_from_saved(saved: dict):
    """The model config of a saved run config (a pretraining run's, an import's or a fine-tuning run's)."""
    model = saved.get("model") or {}
    family = model.get("family")
    if family is None:
        raise ValueError("saved config has no model.family; is this a jaxlm workdir?")
    fields = saved.get("model_config")
    if fields is None:  # a run saved before model_config existed: family, size and overrides
        fields = {k: v for k, v in model.items() if k not in ("family", "size") and v is not None}
        return get_model_config(family, model.get("size") or None, **fields)
    return get_model_config(family, None, **{k: v for k, v in fields.items() if k != "family"})


def read_model_config(path: str, step: int | None = None):
    """(model config, saved run config) of the checkpoint at `path`: which model it holds."""
    saved = read_config(path, step)
    if saved is None:
        raise FileNotFoundError(f"{step_dir(path, step)}: the checkpoint has no config item (and "
                                f"{os.path.join(run_dir(path), CONFIG_FILE)} is absent); cannot tell which model it "
                                "holds")
    return model_config_from_saved(saved), saved


def tokenizer_of(path: str, saved: dict | None = None, family: str | None = None, override: str = ""):
    """(tokenizer, its path): `override` if given, else the one that came with the run."""
    tokenizer_path = override or find_run_tokenizer(run_dir(path), saved)
    return load_tokenizer(tokenizer_path, family), tokenizer_path


# ---------------------------------------------------------------------------------------------------------
# Parameters

def _stored_tree(state_dir: epath.Path) -> dict:
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(state_dir)
    tree = getattr(metadata, "item_metadata", metadata)
    tree = getattr(tree, "tree", tree)
    if not isinstance(tree, dict) or "params" not in tree:
        keys = list(tree)[:10] if isinstance(tree, dict) else type(tree).__name__
        raise ValueError(f"{state_dir}: no 'params' in the stored state (keys: {keys})")
    return tree


def stored_param_shapes(path: str, step: int | None = None) -> dict:
    """The stored parameter tree as ShapeDtypeStructs (nothing read but metadata)."""
    tree = _stored_tree(step_dir(path, step) / "state")["params"]
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def _restore(state_dir: epath.Path, params_target: dict, subtree: tuple[str, ...] = ()) -> dict:
    """A partial restore of state/params (or a subtree of it) onto `params_target`'s ShapeDtypeStruct leaves: with a
    `.sharding`, each host reads its shards; without, every array is read to host memory (numpy)."""
    item = params_target
    for key in reversed(subtree):
        item = {key: item}
    item = {"params": item}

    def restore_arg(leaf):
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            return ocp.ArrayRestoreArgs(sharding=sharding, global_shape=leaf.shape, dtype=leaf.dtype)
        return ocp.RestoreArgs(restore_type=np.ndarray)

    restore_args = jax.tree.map(restore_arg, item)
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
    out = restored["params"]
    for key in subtree:
        out = out[key]
    return out


def read_params(path: str, step: int | None = None, *, target: Any = None, subtree: tuple[str, ...] = ()
                ) -> tuple[dict, str, int]:
    """(params, step directory, step) from a workdir, its checkpoints/ or a step dir; only the parameters are
    read, never the optimizer state.

    target: the params' abstract tree in the stored layout with shardings (ShapeDtypeStruct(..., sharding=...)):
      restored straight onto them. None: numpy arrays on this host (notebooks, export).
    subtree: read params[subtree[0]][subtree[1]]... only (e.g. ('backbone',) of a text-to-text run).
    """
    folder = step_dir(path, step)
    state_dir = folder / "state"
    lora_config = lora.LoraConfig.from_dict((read_config(os.fspath(folder)) or {}).get("lora"))
    if lora_config.enabled:  # a LoRA run: its adapters merged into the base here, for every reader
        return _read_lora_params(folder, lora_config, target, subtree), os.fspath(folder), int(folder.name)
    if target is None:  # shapes without shardings: every array read to this host
        target = _stored_tree(state_dir)["params"]
        for key in subtree:
            target = target[key]
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), target)
    params = _restore(state_dir, target, subtree)
    if not any(isinstance(x, jax.Array) for x in jax.tree.leaves(params)):
        params = jax.tree.map(np.asarray, params)
    return params, os.fspath(folder), int(folder.name)


def _read_lora_params(folder: epath.Path, config: lora.LoraConfig, target: Any, subtree: tuple[str, ...]) -> dict:
    """A LoRA run's task-model params (or their `subtree`): the stored trainable tree (head + adapters) and the
    run's frozen base (jaxlm.train.lora), merged; onto `target`'s shardings if given, else numpy."""
    if subtree not in ((), (lora.FROZEN_KEY,)):
        raise ValueError(f"{folder}: a LoRA run's params are read whole or as {lora.FROZEN_KEY!r}, not {subtree}")
    state_dir = folder / "state"
    stored = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), _stored_tree(state_dir)["params"])
    full_target = target if not subtree or target is None else {subtree[0]: target}
    if full_target is None:
        trainable = jax.tree.map(np.asarray, _restore(state_dir, stored))
        params = lora.merged_params(trainable, lora.read_base(run_dir(os.fspath(folder))), config)
    else:
        frozen_target = full_target[lora.FROZEN_KEY]
        mesh = jax.tree.leaves(frozen_target)[0].sharding.mesh
        replicated = NamedSharding(mesh, P())
        trainable_target = {k: full_target[k] if k in full_target and k != lora.FROZEN_KEY else
                            jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), v)
                            for k, v in stored.items()}
        trainable = _restore(state_dir, trainable_target)
        frozen = lora.read_base(run_dir(os.fspath(folder)), frozen_target)
        shardings = jax.tree.map(lambda a: a.sharding, {**{k: v for k, v in trainable_target.items()
                                                           if k != lora.FROZEN_KEY}, lora.FROZEN_KEY: frozen_target})
        params = lora.merged_params(trainable, frozen, config, shardings)
    for key in subtree:
        params = params[key]
    return params


def read_state(path: str, step: int | None = None, *, sharding: Any = None) -> dict:
    """The whole stored train state (params, optimizer state, step, rng) as a dict tree, with no target needed,
    every array on `sharding` (default: this process's first device): a checkpoint written on 8 devices or several
    hosts opens in a notebook on one CPU."""
    folder = step_dir(path, step)
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(folder / "state").item_metadata
        target = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                                        metadata)
        return checkpointer.restore(folder / "state", target)


def abstract_params(model, init_inputs: dict, mesh=None, rules=shd.DEFAULT_RULES) -> Any:
    """The model's params as ShapeDtypeStructs, with the mesh's shardings from their logical axes if given."""
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **init_inputs))["params"]
    shapes = unbox(boxed)
    if mesh is None:
        return shapes
    shardings = shd.logical_to_mesh_shardings(boxed, mesh, rules)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def restore_backbone(init_params: dict, checkpoint_path: str, *, step: int | None = None,
                     verbose: bool = True) -> tuple[dict, BackboneReport]:
    """Task-model params with the backbone read from `checkpoint_path`; the head stays as initialised.

    init_params: the task model's (unboxed) params, e.g. `state.params`: sharded jax arrays (each restored
      parameter is read straight onto the sharding of the leaf it replaces, only this host's shards) or numpy.
      Either layer layout, whatever the checkpoint's: a stacked `layers` leaf is read with a replicated layers
      axis and sliced on device, unrolled layers are stacked on device.
    Returns (params, report); the report is logged (and printed on process 0 with verbose=True).
    """
    folder = step_dir(checkpoint_path, step)
    stored = stored_param_shapes(checkpoint_path, step)
    plan = plan_backbone(init_params, stored)
    src_bb, _, _ = split_source(stored)
    target_bb = init_params["backbone"]
    target_layers = num_stacked_layers(target_bb)
    target_flat = flatten_dict(target_bb, sep="/")
    src_flat = flatten_dict(src_bb, sep="/")

    def target_leaf(path):  # the target leaf an unrolled path lives in, and its layer index if stacked
        if target_layers:
            stacked = scanned_name(path)
            if stacked != path:
                return target_flat[stacked], int(path.split("layers_", 1)[1].split("/", 1)[0])
        return target_flat[path], None

    # The stored leaves to read, each with the sharding it is read onto.
    reads: dict[str, Any] = {}
    for path, (source_path, source_layer) in plan.sources.items():
        leaf, target_layer = target_leaf(path)
        spec = leaf.sharding.spec if isinstance(getattr(leaf, "sharding", None), NamedSharding) else None
        if spec is not None and target_layer is not None:
            spec = P(*tuple(spec)[1:])  # one layer of a stacked target
        shape = src_flat[source_path]
        if spec is not None and source_layer is not None:
            spec = P(None, *spec)  # the whole stacked source leaf, its layers axis replicated
        sharding = NamedSharding(leaf.sharding.mesh, spec) if spec is not None else None
        reads[source_path] = jax.ShapeDtypeStruct(shape.shape, shape.dtype, sharding=sharding)
    restored = _restore(folder / "state", unflatten_dict(reads, sep="/"), (plan.source_key,) if plan.source_key else ())
    restored_flat = flatten_dict(restored, sep="/")

    # The target backbone, unrolled, from the stored leaves (a slice of a stacked one where needed).
    filled = {}
    for path, (source_path, source_layer) in plan.sources.items():
        value = restored_flat[source_path]
        filled[path] = value[source_layer] if source_layer is not None else value
    filled_tree = unflatten_dict(filled, sep="/")
    if target_layers:  # every layer parameter is filled (only the pooler may be new), so the stack is complete
        filled_tree = stack_layers(filled_tree, target_layers)
    filled_flat = flatten_dict(filled_tree, sep="/")
    backbone = {}
    for path, leaf in target_flat.items():
        if path not in filled_flat:
            backbone[path] = leaf
            continue
        value = filled_flat[path]
        if isinstance(leaf, jax.Array):
            value = jax.device_put(jnp.asarray(value, leaf.dtype), leaf.sharding)
        else:
            value = np.asarray(value, dtype=np.asarray(leaf).dtype)
        backbone[path] = value
    params = {**init_params, "backbone": unflatten_dict(backbone, sep="/")}
    report = BackboneReport(source=os.fspath(folder), step=int(folder.name), loaded=plan.loaded, new=plan.new,
                            unused=plan.unused)
    log.info("%s", report.summary())
    if verbose and jax.process_index() == 0:
        print(report.summary(), flush=True)
    return params, report


# ---------------------------------------------------------------------------------------------------------
# A run's language model, on a mesh

@dataclasses.dataclass
class Run:
    """A run's model, ready to use: its config, parameters on `mesh` and tokenizer."""
    path: str
    step: int
    saved: dict
    model_config: Any
    params: Any
    tokenizer: Any
    tokenizer_path: str
    mesh: Any
    rules: Any

    @property
    def family(self):
        return family_of(self.model_config)

    @property
    def model(self):
        return self.family.build(self.model_config)


def lm_subtree(saved: dict) -> tuple[str, ...]:
    """Where a run keeps its language model's params: a text-to-text fine-tuning run under 'backbone'."""
    return ("backbone",) if (saved.get("task_spec") or {}).get("task") == "seq2seq" else ()


def read_lm(path: str, step: int | None = None) -> tuple[Any, dict, dict, int]:
    """(model config, params as numpy, saved config, step) of a run's language model, on this host: for a
    notebook or an export. On a mesh, use open_run."""
    model_config, saved = read_model_config(path, step)
    params, _, step = read_params(path, step, subtree=lm_subtree(saved))
    return model_config, params, saved, step


def open_run(path: str, step: int | None = None, *, mesh=None, rules=shd.DEFAULT_RULES, tokenizer: str = "",
             model_overrides: dict | None = None) -> Run:
    """The pretrained model (with its LM head) of a pretraining run, an import or a text-to-text fine-tuning run,
    its params restored onto `mesh` (default: every local device on the data axis) and its tokenizer."""
    model_config, saved = read_model_config(path, step)
    if model_overrides:
        model_config = dataclasses.replace(model_config, **model_overrides)
    mesh = mesh or shd.make_mesh()
    family = family_of(model_config)
    target = abstract_params(family.build(model_config), family.init_inputs(model_config), mesh, rules)
    params, folder, step = read_params(path, step, target=target, subtree=lm_subtree(saved))
    tok, tokenizer_path = tokenizer_of(path, saved, family.name, tokenizer)
    return Run(path=os.fspath(path), step=step, saved=saved, model_config=model_config, params=params,
               tokenizer=tok, tokenizer_path=tokenizer_path, mesh=mesh, rules=rules)


def host_params(params) -> Any:
    """numpy copies of (possibly sharded) params, e.g. for export."""
    return jax.tree.map(np.asarray, params)


