"""A pretrained backbone inside a task model's params: which stored parameter fills which, and how it is laid out
(DESIGN.md section 5). Pure tree logic; reading the checkpoint is jaxlm.workdir.restore_backbone's job.

The source may be a pretraining run (BertForPreTraining: {'bert', 'mlm_head', 'nsp_head'}; GPT-2: the whole
tree), an imported Hugging Face workdir, or an earlier fine-tuning run ({'backbone', 'head'}), in either layer
layout (scanned `layers` or unrolled `layers_0..N-1`). The target is a task model's params ({'backbone', 'head'}):
the backbone is filled from the checkpoint, the head keeps its fresh initialisation, pretraining heads are
dropped, and the report lists loaded / new / unused paths. A checkpoint of another architecture or size is an
error naming the first mismatched parameter and both shapes (parameters compared in sorted path order, unrolled
layout).

Also here: layer-wise learning-rate decay, which reads the same layer structure.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm.layers import unstack_layers
from jaxlm.models import FAMILIES

# Where a checkpoint keeps its backbone, tried in order: a task model's `backbone`, then each family's pretraining
# subtree (BERT's `bert`, XLNet's `xlnet`); without any of them the whole tree is the backbone (GPT-2's).
BACKBONE_KEYS = ("backbone",) + tuple(dict.fromkeys(f.backbone_key for f in FAMILIES.values() if f.backbone_key))
# Backbone parameters a checkpoint may lack (initialised fresh, reported new) or carry extra (reported unused):
# BERT's pooler is trained by NSP only, so MLM-only and RoBERTa checkpoints may have none.
OPTIONAL_BACKBONE = ("pooler/",)
_LAYER_ITEM = re.compile(r"(^|/)layers_(\d+)(/|$)")


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


def num_stacked_layers(tree: dict) -> int | None:
    """Leading-axis size of a scanned `layers` stack, or None for an unrolled (or layer-less) tree."""
    for path, leaf in flatten_dict(tree, sep="/").items():
        if "/layers/" in f"/{path}":
            return int(np.shape(leaf)[0])
    return None


def to_unrolled(tree: dict) -> tuple[dict, int | None]:
    """(unrolled tree, number of layers if it was scanned else None)."""
    n = num_stacked_layers(tree)
    return (unstack_layers(tree, n) if n else tree), n


def split_source(source: dict) -> tuple[dict, str, dict]:
    """(backbone subtree, its key ('' = the whole tree), everything else)."""
    for key in BACKBONE_KEYS:
        if key in source and isinstance(source[key], dict):
            return source[key], key, {k: v for k, v in source.items() if k != key}
    return source, "", {}


def _is_optional(path: str) -> bool:
    return path.startswith(OPTIONAL_BACKBONE)


def scanned_name(path: str) -> str:
    return re.sub(r"(^|/)layers_\d+(/|$)", r"\1layers\2", path)


def _unique(names):
    return list(dict.fromkeys(names))


def shapes_of(tree: Any) -> Any:
    """The same tree with ShapeDtypeStruct leaves (arrays, Orbax metadata or ShapeDtypeStructs)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype), tree)


@dataclasses.dataclass
class BackbonePlan:
    """Which stored parameter fills which target backbone parameter, in the unrolled layout.

    `sources` maps each filled target path (unrolled, '/'-joined, relative to 'backbone') to (stored path relative
    to the source tree, layer index into a stacked source leaf or None)."""
    source_key: str
    sources: dict[str, tuple[str, int | None]]
    loaded: list[str]
    new: list[str]
    unused: list[str]


def plan_backbone(init_params: dict, source: dict) -> BackbonePlan:
    """Matches a checkpoint's params (arrays or shapes) against a task model's params, or raises on the first
    mismatched parameter (naming it and both shapes)."""
    if "backbone" not in init_params:
        raise ValueError(f"restore_backbone: the model params have no 'backbone' entry (top-level keys "
                         f"{sorted(init_params)}); build the model with jaxlm.tasks.TaskModel")
    abstract_bb = shapes_of(init_params["backbone"])
    target_layers = num_stacked_layers(abstract_bb)
    target_bb = (jax.eval_shape(lambda t: unstack_layers(t, target_layers), abstract_bb) if target_layers
                 else abstract_bb)
    src_bb, src_key, rest = split_source(shapes_of(source))
    src_layers = num_stacked_layers(src_bb)
    src_unrolled = jax.eval_shape(lambda t: unstack_layers(t, src_layers), src_bb) if src_layers else src_bb
    target_flat = flatten_dict(target_bb, sep="/")
    src_flat = flatten_dict(src_unrolled, sep="/")
    prefix = f"{src_key}/" if src_key else ""
    sources, new = {}, []
    for path in sorted(target_flat):
        want = tuple(target_flat[path].shape)
        if path not in src_flat:
            if _is_optional(path):
                new.append(f"backbone/{path}")
                continue
            raise ValueError(
                f"checkpoint has no parameter {prefix}{path} for the model's backbone/{path} (shape {want}); "
                f"it holds a different architecture (backbone parameters such as "
                f"{', '.join(sorted(src_flat)[:3])})")
        have = tuple(src_flat[path].shape)
        if have != want:
            raise ValueError(f"shape mismatch at backbone/{path}: checkpoint {prefix}{path} has shape {have}, "
                             f"the model has {want} (a checkpoint of another size or architecture)")
        layer = _LAYER_ITEM.search(path)
        if src_layers and layer:  # stored stacked: the layer's slice of the `layers` leaf
            sources[path] = (_LAYER_ITEM.sub(r"\1layers\3", path), int(layer.group(2)))
        else:
            sources[path] = (path, None)
    extra = sorted(p for p in src_flat if p not in target_flat)
    bad = [p for p in extra if not _is_optional(p)]
    if bad:
        first = bad[0]
        raise ValueError(f"checkpoint parameter {prefix}{first} (shape {tuple(src_flat[first].shape)}) has no "
                         f"place in the model's backbone ({len(bad)} such parameters"
                         f"{f'; the checkpoint has {src_layers} stacked layers' if src_layers else ''}): "
                         f"a checkpoint of another depth or architecture")
    unused = [f"{prefix}{p}" for p in extra] + (sorted(flatten_dict(rest, sep="/")) if rest else [])
    new += sorted(f"{k}/{p}" for k, v in init_params.items() if k != "backbone" for p in flatten_dict(v, sep="/"))
    loaded = [f"backbone/{p}" for p in sorted(sources)]
    if target_layers:
        loaded, new = _unique(map(scanned_name, loaded)), _unique(map(scanned_name, new))
    return BackbonePlan(src_key, sources, loaded, new, unused)


# ---------------------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay (ELECTRA, Clark et al. 2020; also used for BERT fine-tuning by Sun et al. 2019)

_LAYER = re.compile(r"^layers_(\d+)$")


def layerwise_lr_scales(params: dict, decay: float) -> dict:
    """Per-parameter learning-rate multipliers decay ** (num_layers + 1 - depth): the head, pooler and final norm
    (depth L+1) get 1, layer i (0-based) gets decay ** (L - i), the embeddings decay ** (L + 1).

    A scanned stack gets an array [L, 1, ...] so each layer slice has its own multiplier.
    """
    flat = flatten_dict(params)
    num_layers = num_stacked_layers(params.get("backbone", params))
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


def scale_updates(scales: dict) -> optax.GradientTransformation:
    """optax transform multiplying each update by its constant multiplier (e.g. `layerwise_lr_scales`)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)
