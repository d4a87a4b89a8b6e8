"""Hugging Face checkpoints in and out: BERT, RoBERTa, GPT-2 and T5 (v1.0 and v1.1).

Import (`import_hf`, `load_hf`): config.json -> jaxlm config; every tensor is matched against the family's
table (jaxlm.convert.hf_tables). Buffers and tied copies are ignored, known heads the jaxlm model lacks are
reported unused, anything else is an error naming the tensors. jaxlm parameters the checkpoint lacks are an
error for the backbone; heads (MLM, NSP, pooler) are initialised fresh and reported new.

Export (`save_hf`): the same table backwards, writing config.json + model.safetensors. Tied copies are
omitted, as transformers >= 5 does itself; from_pretrained re-ties them.

Workdirs (`write_workdir`): the Orbax layout of jaxlm.train.checkpoint, so that fine-tuning and `to-hf` read an
imported model and a pretraining run the same way (through jaxlm.workdir).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxlm import workdir as wd
from jaxlm.convert import hf_io, hf_registry, hf_tables
from jaxlm.data.hf_tokenizer import copy_tokenizer_files, load_hf_tokenizer
from jaxlm.layers import stack_layers, unstack_layers
from jaxlm.models import family_of, get_model_config
from jaxlm.paths import open_text
from jaxlm.train import checkpoint
from jaxlm.train.state import TrainState

log = logging.getLogger(__name__)

TOKENIZER_SUBDIR = "tokenizer"
CONFIG_FILE = wd.CONFIG_FILE
# Parameters the checkpoint may lack: initialised fresh and reported. Anything else missing is an error.
HEAD_PARAMS = ("mlm_head/", "nsp_head/", "bert/pooler/", "lm_bias")  # XLNetModel has no lm_bias


@dataclasses.dataclass
class ConversionReport:
    """What happened to each tensor. jaxlm paths are '/'-joined (unrolled layout); HF names as in the files."""
    loaded: list[str]  # jaxlm params filled from the checkpoint
    new: list[str]  # jaxlm params initialised fresh (heads absent from the checkpoint)
    unused: list[str]  # checkpoint tensors the jaxlm model has no place for (e.g. RoBERTa's pooler)
    ignored: list[str]  # buffers (position_ids, attn.bias) and tied copies (decoder.weight == embeddings)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} jaxlm params; new {len(self.new)}; unused {len(self.unused)} "
                 f"checkpoint tensors; ignored {len(self.ignored)} (buffers, tied copies)"]
        if self.new:
            lines.append("  new (initialised fresh): " + ", ".join(self.new))
        if self.unused:
            lines.append("  unused: " + ", ".join(self.unused))
        return "\n".join(lines)


@dataclasses.dataclass
class Imported:
    family: str
    config: object  # BertConfig | GPT2Config
    params: dict
    tokenizer: object | None
    report: ConversionReport
    hf_config: dict
    files: list[str]


def _shape_of(x) -> tuple:
    return tuple(np.shape(x))


def _unrolled_model(config):
    return family_of(config).build(dataclasses.replace(config, scan_layers=False))


def _abstract_params(config) -> dict:
    """Flat {path: ShapeDtypeStruct} of the unrolled model, without allocating anything."""
    boxed = jax.eval_shape(lambda: _unrolled_model(config).init(jax.random.key(0), **family_of(config).init_inputs(
        config)))["params"]
    return flatten_dict(nn.unbox(boxed), sep="/")


def _init_params(config, seed: int) -> dict:
    params = jax.jit(_unrolled_model(config).init)(jax.random.key(seed), **family_of(config).init_inputs(config))
    return flatten_dict(jax.tree.map(np.asarray, nn.unbox(params["params"])), sep="/")


def canonical_name(name: str, table: hf_tables.Table) -> str:
    """A tensor name as the table spells it: backbone prefix added where the file omits it (BertModel,
    RobertaModel, GPT2Model and old GPT-2 files), TF-era LayerNorm.gamma/beta renamed to weight/bias."""
    if name.endswith("LayerNorm.gamma"):
        name = name[:-len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
        name = name[:-len("beta")] + "bias"
    if table.prefix and not name.startswith(table.prefix + ".") and not name.startswith(table.head_prefixes):
        name = f"{table.prefix}.{name}"
    return name


def hf_to_jaxlm_params(tensors: dict, family: str, config, *, seed: int = 0, source: str = "checkpoint",
                       ) -> tuple[dict, ConversionReport]:
    """HF state dict (name -> numpy) -> unrolled jaxlm params (nested dict of float32 numpy) and the report."""
    spec = hf_registry.hf_family(family)
    table, d = spec.table(family, config), spec.dims(config)
    named: dict[str, tuple[str, np.ndarray]] = {}  # canonical -> (original name, array)
    for name, value in tensors.items():
        canon = canonical_name(name, table)
        if canon in named:
            raise ValueError(f"{source}: tensors {named[canon][0]!r} and {name!r} are the same parameter")
        named[canon] = (name, value)

    ignored = []
    for canon in list(named):
        if any(p.search(canon) for p in hf_tables.IGNORED_BUFFERS):
            ignored.append(named.pop(canon)[0])
    for alias, target in table.tied.items():
        if alias not in named:
            continue
        alias_name, alias_value = named.pop(alias)
        if target not in named:  # only the tied copy was saved: it is the parameter
            named[target] = (alias_name, alias_value)
            continue
        target_name, target_value = named[target]
        if _shape_of(alias_value) != _shape_of(target_value) or not np.array_equal(alias_value, target_value):
            raise ValueError(f"{source}: {alias_name!r} differs from {target_name!r}, but jaxlm ties them "
                             "(an untied output layer is not supported)")
        ignored.append(alias_name)
    unused = [named.pop(n)[0] for n in table.droppable if n in named]

    abstract = _abstract_params(config)
    flat, missing = {}, []
    for row in table.rows:
        if row.hf not in named:
            missing.append(row)
            continue
        name, value = named.pop(row.hf)
        arrays = row.transform.to_jax(np.asarray(value), d)
        for path, array in zip(row.jax, arrays):
            expected = abstract[path].shape
            if array.shape != expected:
                raise ValueError(f"{source}: {name!r} {_shape_of(value)} gives jaxlm {path} shape {array.shape} "
                                 f"(transform {row.transform.name}) but the model from config.json has {expected}")
            flat[path] = np.asarray(array, dtype=np.float32)  # float16/bfloat16 -> float32 is exact
    if named:
        unexpected = sorted(original for original, _ in named.values())
        raise ValueError(f"{source}: unexpected tensors not in the {family} table: {unexpected} (a different "
                         "architecture, or a model class jaxlm does not import)")
    lm_head = [r for r in missing if r.jax == ("lm_head/kernel",)]
    if lm_head and "token_embeddings/embedding" in flat:
        # T5 v1.1 without lm_head.weight (T5Model, or a file transformers >= 5 wrote with the head tied): the
        # output layer is the shared embedding, as transformers ties it on load.
        flat["lm_head/kernel"] = np.ascontiguousarray(flat["token_embeddings/embedding"].T)
        missing.remove(lm_head[0])
        log.info("%s: no lm_head.weight; the output layer is the shared embedding (shared.weight)", source)
    bad_missing = [r.hf for r in missing if not any(p.startswith(HEAD_PARAMS) for p in r.jax)]
    if bad_missing:
        raise ValueError(f"{source}: missing tensors {bad_missing}")
    new = sorted(p for r in missing for p in r.jax)
    if new:
        fresh = _init_params(config, seed)
        flat.update({p: fresh[p] for p in new})
    extra = sorted(set(abstract) - set(flat))
    if extra:  # the table does not cover a jaxlm parameter: a bug in the table, not in the checkpoint
        raise AssertionError(f"jaxlm params {extra} have no row in the {family} table")
    report = ConversionReport(loaded=sorted(p for p in flat if p not in new), new=new, unused=unused,
                              ignored=sorted(ignored))
    return unflatten_dict(flat, sep="/"), report


def jaxlm_to_hf_tensors(params: dict, family: str, config, dtype: str = "float32") -> tuple[dict, list[str]]:
    """jaxlm params (either layout) -> HF tensors (canonical names, tied copies omitted) and the jaxlm params
    the HF architecture has no place for (e.g. a pooler when exporting BERT without NSP as BertForMaskedLM)."""
    params = jax.tree.map(np.asarray, params)
    if _is_scanned(params):
        params = unstack_layers(params, None)
    flat = flatten_dict(params, sep="/")
    spec = hf_registry.hf_family(family)
    export_config, _ = spec.export(config)
    table, d = spec.table(family, export_config), spec.dims(config)
    np_dtype = {"float32": np.float32, "float16": np.float16}.get(dtype)
    if np_dtype is None and dtype == "bfloat16":
        import ml_dtypes

        np_dtype = ml_dtypes.bfloat16
    if np_dtype is None:
        raise ValueError(f"dtype={dtype!r}; choose float32, bfloat16 or float16")
    tensors, used = {}, set()
    for row in table.rows:
        missing = [p for p in row.jax if p not in flat]
        if missing:
            raise ValueError(f"jaxlm params {missing} (for HF {row.hf!r}) are not in the params")
        tensors[row.hf] = np.ascontiguousarray(row.transform.to_hf([flat[p] for p in row.jax], d).astype(np_dtype))
        used.update(row.jax)
    return tensors, sorted(set(flat) - used)


def _is_scanned(params: dict) -> bool:
    """Scanned params have a `layers` entry (stacked); unrolled ones have `layers_0..N-1`."""
    return any("/layers/" in path for path in flatten_dict(params, sep="/"))


def make_config(family: str, fields: dict, *, scan_layers: bool = False):
    return get_model_config(family, None, **{**fields, "scan_layers": scan_layers})


def import_hf(model_dir: str, *, scan_layers: bool = False, seed: int = 0) -> Imported:
    """Everything an import produces: family, config, params, tokenizer, report, config.json, files read."""
    hf_config = hf_io.read_config(model_dir)
    family, fields = hf_registry.jaxlm_fields_from_hf(hf_config)
    config = make_config(family, fields)
    tensors, files = hf_io.read_tensors(model_dir)
    params, report = hf_to_jaxlm_params(tensors, family, config, seed=seed, source=model_dir)
    if scan_layers:
        config = dataclasses.replace(config, scan_layers=True)
        params = stack_layers(params, None)
    if report.new:
        log.warning("%s: heads absent from the checkpoint were initialised fresh (seed %d): %s",
                    model_dir, seed, report.new)
    return Imported(family, config, params, load_hf_tokenizer(model_dir, family), report, hf_config, files)


def load_hf(model_dir: str, *, scan_layers: bool = False, seed: int = 0):
    """Notebook entry point: `config, params, tokenizer = load_hf(dir)`; params are float32 numpy in
    jaxlm's unrolled layout (scanned with scan_layers=True); tokenizer is None if the directory has none."""
    imported = import_hf(model_dir, scan_layers=scan_layers, seed=seed)
    return imported.config, imported.params, imported.tokenizer


def save_hf(config, params, out_dir: str, *, hf_config: dict | None = None, tokenizer_dir: str | None = None,
            dtype: str = "float32", max_shard_bytes: int | None = None) -> dict:
    """Writes config.json + model.safetensors (sharded above max_shard_bytes) for from_pretrained, and copies
    the HF tokenizer files from `tokenizer_dir`. `hf_config`: the imported model's config.json, whose fields
    jaxlm does not model are kept. Returns {'files', 'architecture', 'not_exported'}."""
    family = config.family
    tensors, not_exported = jaxlm_to_hf_tensors(params, family, config, dtype)
    _, architecture = hf_registry.hf_family(family).export(config)
    if not_exported:
        log.warning("%s: jaxlm params with no place in %s, not exported: %s", out_dir, architecture, not_exported)
    files = hf_io.write_safetensors(tensors, out_dir, max_shard_bytes)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_registry.hf_config_from_jaxlm(config, architecture, hf_config, dtype), f, indent=2, sort_keys=True)
    files.append(os.path.join(out_dir, "config.json"))
    if tokenizer_dir and os.path.isdir(tokenizer_dir):
        files += [os.path.join(out_dir, n) for n in copy_tokenizer_files(tokenizer_dir, out_dir)]
    return {"files": files, "architecture": architecture, "not_exported": not_exported}


# ---------------------------------------------------------------------------------------------------------
# Workdirs

def saved_config(imported: Imported, model_dir: str, tokenizer_files: list[str]) -> dict:
    """The JSON stored beside the params: shaped like a pretraining run's saved config (config.model with
    family/size, config.model_config), so the same readers work on both."""
    fields = dataclasses.asdict(imported.config)
    return {
        "model": {"family": imported.family, "size": None, **fields},
        "model_config": fields,
        "hf_config": imported.hf_config,
        "source": {"model_dir": os.path.abspath(model_dir), "files": [os.path.basename(f) for f in imported.files]},
        "tokenizer_dir": TOKENIZER_SUBDIR if tokenizer_files else None,
        "conversion": dataclasses.asdict(imported.report),
    }


def write_workdir(workdir: str, imported: Imported, model_dir: str) -> dict:
    """workdir/checkpoints/0/{state,config} (Orbax), workdir/tokenizer/ (HF files), workdir/jaxlm_config.json.

    state = TrainState(step=0, params, opt_state=None, rng=uint32[2] zeros): params only; a fine-tuning run
    builds its own optimizer state.
    """
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    tokenizer_files = copy_tokenizer_files(model_dir, os.path.join(workdir, TOKENIZER_SUBDIR))
    config_json = saved_config(imported, model_dir, tokenizer_files)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=imported.params, opt_state=None,
                       rng=jnp.zeros((2,), jnp.uint32))
    manager = checkpoint.make_checkpoint_manager(workdir, max_to_keep=None, async_save=False)
    if not checkpoint.save_checkpoint(manager, 0, state, config=config_json):
        manager.close()
        raise FileExistsError(f"{workdir}: a checkpoint at step 0 exists already; use a fresh --workdir")
    manager.wait_until_finished()
    manager.close()
    with open_text(os.path.join(workdir, CONFIG_FILE), "w") as f:
        json.dump(config_json, f, indent=2)
    return config_json


def export_workdir(workdir: str, out_dir: str, *, step: int | None = None, dtype: str = "float32",
                   max_shard_bytes: int | None = None) -> dict:
    """`to-hf`: the language model of a run directory (an import, a pretraining run or a text-to-text fine-tuning
    run) at `step` (default latest) as an HF model directory."""
    model_config, saved = wd.read_model_config(workdir, step)
    params, _, step = wd.read_params(workdir, step, subtree=wd.lm_subtree(saved))
    tokenizer_dir = os.path.join(workdir, saved.get("tokenizer_dir") or TOKENIZER_SUBDIR)
    result = save_hf(model_config, params, out_dir, hf_config=saved.get("hf_config"), tokenizer_dir=tokenizer_dir,
                     dtype=dtype, max_shard_bytes=max_shard_bytes)
    result["step"] = step
    if not os.path.isdir(tokenizer_dir):
        result["tokenizer"] = None
        log.warning("%s has no HF tokenizer files (%s); %s gets weights and config only", workdir, tokenizer_dir,
                    out_dir)
    return result
