"""Fine-tuning starts from a pretrained backbone: `restore_backbone` (DESIGN.md section 5).

    params, report = restore_backbone(state.params, "runs/pretrain")   # a workdir, checkpoints/ or one step dir
    print(report.summary())

The source may be a pretraining run (BertForPreTraining: {'bert', 'mlm_head', 'nsp_head'}; GPT-2: the whole
tree), an imported Hugging Face workdir (`python -m jaxlm.convert from-hf`), or an earlier fine-tuning run
({'backbone', 'head'}), written on any mesh and in either layer layout (scanned `layers` or unrolled
`layers_0..N-1`). Only the parameters are read from disk (never the optimizer state). The target is a task
model's params ({'backbone', 'head'}, see jaxlm.models.heads): the backbone is filled from the checkpoint, the
head keeps its fresh initialisation, pretraining heads are dropped, and the report lists loaded / new / unused
paths. A checkpoint of another architecture or size is an error naming the first mismatched parameter and
both shapes (parameters compared in sorted path order, unrolled layout).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.layers import stack_layers, unstack_layers
from jaxlm.train.checkpoint import checkpoint_step_dir, read_config

log = logging.getLogger(__name__)

# Where a checkpoint keeps its backbone, tried in order; without any of them the whole tree is the backbone
# (GPT-2's pretraining params have no wrapper).
BACKBONE_KEYS = ("backbone", "bert")
# Backbone parameters a checkpoint may lack (initialised fresh, reported new) or carry extra (reported unused):
# BERT's pooler is trained by NSP only, so MLM-only and RoBERTa checkpoints may have none.
OPTIONAL_BACKBONE = ("pooler/",)


@dataclasses.dataclass
class BackboneReport:
    """Paths are '/'-joined: `loaded` and `new` in the model's layout, `unused` in the checkpoint's."""
    source: str  # the checkpoint step directory read
    step: int
    loaded: list[str]
    new: list[str]
    unused: list[str]

    def summary(self) -> str:
        def show(names):
            return ", ".join(_collapse(names)) or "-"
        return (f"restored backbone from {self.source} (step {self.step}): loaded {len(self.loaded)} params, "
                f"new {len(self.new)}, unused {len(self.unused)}\n"
                f"  new (initialised fresh): {show(self.new)}\n"
                f"  unused (in the checkpoint, not in the model): {show(self.unused)}")


def _collapse(names: list[str]) -> list[str]:
    """Module-level summary for printing: 'head/classifier/kernel', 'head/classifier/bias' -> 'head/classifier/*'."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rsplit("/", 1)[0], []).append(n)
    return [members[0] if len(members) == 1 else f"{g}/*" for g, members in groups.items()]


def _num_stacked_layers(tree: dict) -> int | None:
    """Leading-axis size of a scanned `layers` stack, or None for an unrolled (or layer-less) tree."""
    for path, leaf in flatten_dict(tree, sep="/").items():
        if "/layers/" in f"/{path}":
            return int(np.shape(leaf)[0])
    return None


def to_unrolled(tree: dict) -> tuple[dict, int | None]:
    """(unrolled tree, number of layers if it was scanned else None)."""
    n = _num_stacked_layers(tree)
    return (unstack_layers(tree, n) if n else tree), n


def read_params(path: str, step: int | None = None) -> tuple[dict, str, int]:
    """(params as numpy nested dict, step directory, step) from a workdir, its checkpoints/ or a step dir.

    Reads only `state/params` (partial restore), onto the host, whatever mesh wrote it.
    """
    step_dir = checkpoint_step_dir(path, step)
    state_dir = step_dir / "state"
    with ocp.PyTreeCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(state_dir)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        if not isinstance(tree, dict) or "params" not in tree:
            raise ValueError(f"{state_dir}: no 'params' in the stored state (keys: {list(tree)[:10]})")
        target = {"params": tree["params"]}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
        restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=target, restore_args=restore_args, partial_restore=True))
    return jax.tree.map(np.asarray, restored["params"]), str(step_dir), int(step_dir.name)


def workdir_of(path: str) -> str:
    """The run directory of a workdir / checkpoints dir / step dir (where the tokenizer lives)."""
    step_dir = checkpoint_step_dir(path)
    if str(step_dir.name).isdigit() and step_dir.parent.name == "checkpoints":
        return str(step_dir.parent.parent)
    return os.fspath(path)


def read_backbone_config(path: str, step: int | None = None):
    """(model config, saved run config) of the checkpoint at `path`: the model to build for fine-tuning."""
    from etils import epath

    from jaxlm.convert.hf import config_from_saved
    from jaxlm.paths import open_text

    saved = read_config(path, step)
    if saved is None:
        config_file = os.path.join(workdir_of(path), "jaxlm_config.json")
        if not epath.Path(config_file).is_file():
            raise FileNotFoundError(f"{checkpoint_step_dir(path, step)}: the checkpoint has no config item (and "
                                    f"{config_file} is absent); cannot tell which model it holds")
        import json
        with open_text(config_file) as f:
            saved = json.load(f)
    _, model_config = config_from_saved(saved)
    return model_config, saved


def _split_source(source: dict) -> tuple[dict, str, dict]:
    """(backbone subtree, its key ('' = the whole tree), everything else)."""
    for key in BACKBONE_KEYS:
        if key in source and isinstance(source[key], dict):
            return source[key], key, {k: v for k, v in source.items() if k != key}
    return source, "", {}


def _is_optional(path: str) -> bool:
    return path.startswith(OPTIONAL_BACKBONE)


def _scanned_name(path: str) -> str:
    return re.sub(r"(^|/)layers_\d+(/|$)", r"\1layers\2", path)


def _unique(names):
    return list(dict.fromkeys(names))


def _place(value: np.ndarray, like: Any):
    """`value` laid out as `like` (a sharded jax.Array: same sharding, multi-host safe; else numpy)."""
    if isinstance(like, jax.Array):
        return jax.make_array_from_callback(value.shape, like.sharding, lambda index: value[index])
    return value


def match_backbone(init_params: dict, source: dict) -> tuple[dict, list[str], list[str], list[str]]:
    """The backbone re-keyed and checked: (unrolled flat {path: array} for the target's backbone paths that the
    checkpoint fills, loaded, new, unused). Raises on the first mismatched parameter."""
    if "backbone" not in init_params:
        raise ValueError(f"restore_backbone: the model params have no 'backbone' entry (top-level keys "
                         f"{sorted(init_params)}); build the model with jaxlm.models.heads.build_task_model")
    # Shapes only: unstacking a sharded scanned target would copy every layer for nothing.
    abstract_bb = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), init_params["backbone"])
    target_layers = _num_stacked_layers(abstract_bb)
    target_bb = (jax.eval_shape(lambda t: unstack_layers(t, target_layers), abstract_bb) if target_layers
                 else abstract_bb)
    src_bb, src_key, rest = _split_source(source)
    src_bb, src_layers = to_unrolled(src_bb)
    target_flat = flatten_dict(target_bb, sep="/")
    src_flat = flatten_dict(src_bb, sep="/")
    prefix = f"{src_key}/" if src_key else ""
    filled, new = {}, []
    for path in sorted(target_flat):
        want = tuple(np.shape(target_flat[path]))
        if path not in src_flat:
            if _is_optional(path):
                new.append(f"backbone/{path}")
                continue
            raise ValueError(
                f"checkpoint has no parameter {prefix}{path} for the model's backbone/{path} (shape {want}); "
                f"it holds a different architecture (backbone parameters such as "
                f"{', '.join(sorted(src_flat)[:3])})")
        have = tuple(np.shape(src_flat[path]))
        if have != want:
            raise ValueError(f"shape mismatch at backbone/{path}: checkpoint {prefix}{path} has shape {have}, "
                             f"the model has {want} (a checkpoint of another size or architecture)")
        filled[path] = np.asarray(src_flat[path], dtype=target_flat[path].dtype)
    extra = sorted(p for p in src_flat if p not in target_flat)
    bad = [p for p in extra if not _is_optional(p)]
    if bad:
        first = bad[0]
        raise ValueError(f"checkpoint parameter {prefix}{first} (shape {tuple(np.shape(src_flat[first]))}) has no "
                         f"place in the model's backbone ({len(bad)} such parameters"
                         f"{f'; the checkpoint has {src_layers} stacked layers' if src_layers else ''}): "
                         f"a checkpoint of another depth or architecture")
    unused = [f"{prefix}{p}" for p in extra]
    unused += sorted(flatten_dict(rest, sep="/")) if rest else []
    loaded = [f"backbone/{p}" for p in sorted(filled)]
    return filled, loaded, new, unused


def restore_backbone(init_params: dict, checkpoint_path: str, *, step: int | None = None,
                     verbose: bool = True) -> tuple[dict, BackboneReport]:
    """Task-model params with the backbone read from `checkpoint_path`; the head stays as initialised.

    init_params: the task model's (unboxed) params, e.g. `state.params` from create_train_state: numpy or
      sharded jax arrays; every restored leaf gets the sharding of the leaf it replaces, so the result is on
      the mesh exactly as the state expects. Either layer layout, whatever the checkpoint's.
    Returns (params, report); the report is logged (and printed with verbose=True).
    """
    source, step_dir, step = read_params(checkpoint_path, step)
    filled, loaded, new, unused = match_backbone(init_params, source)

    target_layers = _num_stacked_layers(init_params["backbone"])
    restored = unflatten_dict(filled, sep="/")
    if target_layers:  # every layer parameter is filled (only the pooler may be new), so the stack is complete
        restored = stack_layers(restored, target_layers)
    restored_flat = flatten_dict(restored, sep="/")
    backbone = unflatten_dict({path: _place(restored_flat[path], leaf) if path in restored_flat else leaf
                               for path, leaf in flatten_dict(init_params["backbone"], sep="/").items()}, sep="/")
    params = {**init_params, "backbone": backbone}
    new = new + sorted(f"{k}/{p}" for k, v in init_params.items() if k != "backbone" for p in flatten_dict(v, sep="/"))
    if target_layers:
        loaded, new = _unique(map(_scanned_name, loaded)), _unique(map(_scanned_name, new))
    report = BackboneReport(source=step_dir, step=step, loaded=loaded, new=new, unused=unused)
    log.info("%s", report.summary())
    if verbose and jax.process_index() == 0:
        print(report.summary(), flush=True)
    return params, report


# ---------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020; also used for BERT fine-tuning by Sun et al. 2019)

_LAYER = re.compile(r"^layers_(\d+)$")


def layerwise_lr_scales(params: dict, decay: float) -> dict:
    """Per-parameter learning-rate multipliers decay ** (num_layers + 1 - depth): the head, pooler and final norm
    (depth L+1) get 1, layer i (0-based) gets decay ** (L - i), the embeddings decay ** (L + 1).

    A scanned stack gets an array [L, 1, ...] so each layer slice has its own multiplier.
    """
    flat = flatten_dict(params)
    num_layers = _num_stacked_layers(params.get("backbone", params))
    if num_layers is None:
        num_layers = len({m.group(1) for path in flat for k in path if (m := _LAYER.match(str(k)))})

    def scale(path, leaf):
        names = [str(k) for k in path]
        if names[0] != "backbone":
            return np.float32(1.0)
        for k in names:
            if (m := _LAYER.match(k)):
                return np.float32(decay ** (num_layers - int(m.group(1))))
        if "layers" in names:
            per_layer = np.array([decay ** (num_layers - i) for i in range(num_layers)], np.float32)
            return per_layer.reshape((num_layers,) + (1,) * (len(leaf.shape) - 1))
        if any("embedding" in k for k in names):
            return np.float32(decay ** (num_layers + 1))
        return np.float32(1.0)

    return unflatten_dict({path: scale(path, leaf) for path, leaf in flat.items()})


def scale_updates(scales: dict):
    """optax transform multiplying each update by its constant multiplier (e.g. `layerwise_lr_scales`)."""
    import optax

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)
