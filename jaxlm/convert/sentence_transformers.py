"""sentence-transformers model directories in and out: the whole embedding pipeline, not only its transformer.

A sentence-transformers (ST) directory lists its modules in modules.json, each in its own folder ("" = the root):

    Transformer   config.json + weights + tokenizer files (an HF model directory), sentence_bert_config.json
                  (ST 2.x / 3.x: max_seq_length, do_lower_case; ST >= 5: transformer_task, modality_config)
    Pooling       config.json: pooling_mode ("mean", ["cls", "max"], ...), or ST 2.x / 3.x's pooling_mode_*_tokens
                  booleans (several true: concatenated in ST's fixed order cls, max, mean, mean_sqrt_len)
    Dense         config.json (in_features, out_features, bias, activation_function: a torch.nn class path) and
                  model.safetensors / pytorch_model.bin with linear.weight [out, in], linear.bias [out]
    Normalize     nothing but its name (L2 normalisation)

Import (`import_sentence_transformers`, `from-hf` on a directory with modules.json) maps that chain onto jaxlm's
embedding model (jaxlm.tasks.embedding.EmbeddingHead on the family's backbone): the transformer through the HF
import (jaxlm.convert.hf), Pooling / Dense / Normalize onto the task spec's pooling / embedding_dim /
dense_activation / normalize, and the Dense layer onto `head/dense`. The workdir it writes is a "retrieval" run
at step 0 (params {'backbone', 'head'}), so `jaxlm.embed`, evaluate and predict read it as a retrieval run jaxlm
trained, and fine-tuning (config.init_checkpoint) starts from its backbone. Anything the chain computes that
jaxlm's head does not (another module, weighted-mean pooling, a Dense before pooling, two Dense layers, an
activation outside DENSE_ACTIVATIONS) is an error naming the module, so an import never embeds differently from
the original.

ST's tokenization is kept: texts are cut to ST's max_seq_length (ST's own rule: sentence_bert_config.json's
max_seq_length, else tokenizer_config.json's model_max_length capped by the position table), and ST's
do_lower_case (lowercase before the tokenizer) is written into the workdir's tokenizer.json as ST applies it.

Export (`export_sentence_transformers`, `to-st`) writes the layout sentence-transformers 6 itself saves, with
the transformer as its bare backbone (BertModel / RobertaModel / GPT2Model: config.json + model.safetensors, no
pretraining heads), from an import or from a retrieval / similarity run fine-tuned in jaxlm.

Transformers: BERT, RoBERTa and GPT-2 (the families whose embeddings tests/test_sentence_transformers.py checks
against sentence-transformers); any other is an error naming them.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax.traverse_util import flatten_dict

from jaxlm import workdir as wd
from jaxlm.convert import hf, hf_io, hf_registry
from jaxlm.data.hf_tokenizer import copy_tokenizer_files, load_hf_tokenizer
from jaxlm.data.tokenizer_io import find_run_tokenizer
from jaxlm.layers import stack_layers
from jaxlm.layers.pooling import parse_pooling
from jaxlm.models import family_of
from jaxlm.paths import open_text
from jaxlm.tasks.base import TaskSpec
from jaxlm.tasks.embedding import check_embedding_spec
from jaxlm.tasks.finetuning import best_step
from jaxlm.tasks.registry import TASKS
from jaxlm.train import checkpoint
from jaxlm.train.backbone import split_source, to_unrolled
from jaxlm.train.state import TrainState

log = logging.getLogger(__name__)

MODULES_FILE = "modules.json"
MODEL_CONFIG_FILE = "config_sentence_transformers.json"
# The Transformer module's config, under the names ST has used for it (it tries them in this order).
TRANSFORMER_CONFIG_FILES = ("sentence_bert_config.json", "sentence_roberta_config.json",
                            "sentence_distilbert_config.json", "sentence_camembert_config.json",
                            "sentence_albert_config.json", "sentence_xlm-roberta_config.json",
                            "sentence_xlnet_config.json")
MODULE_CONFIG_FILE = "config.json"  # Pooling / Dense / Normalize
SUPPORTED_MODULES = ("Transformer", "Pooling", "Dense", "Normalize")
# modules.json `type` as sentence-transformers 6 writes it (older names, sentence_transformers.models.X, still load).
MODULE_TYPES = {
    "Transformer": "sentence_transformers.base.modules.transformer.Transformer",
    "Pooling": "sentence_transformers.sentence_transformer.modules.pooling.Pooling",
    "Dense": "sentence_transformers.base.modules.dense.Dense",
    "Normalize": "sentence_transformers.base.modules.normalize.Normalize",
}
# ST's pooling modes <-> jaxlm's (jaxlm.layers.pooling.POOLING_MODES); weightedmean has no jaxlm equivalent.
POOLING_FROM_ST = {"cls": "cls", "max": "max", "mean": "mean", "mean_sqrt_len_tokens": "mean_sqrt_len",
                   "lasttoken": "last"}
POOLING_TO_ST = {v: k for k, v in POOLING_FROM_ST.items()}
# ST 2.x / 3.x pooling booleans, in the order ST concatenates the modes they switch on.
LEGACY_POOLING_KEYS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                       ("pooling_mode_mean_tokens", "mean"),
                       ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
                       ("pooling_mode_weightedmean_tokens", "weightedmean"), ("pooling_mode_lasttoken", "lasttoken"))
# Dense activation_function (a torch.nn class; its module path varies by torch version) <-> jaxlm's names.
ACTIVATIONS_FROM_TORCH = {"Tanh": "tanh", "Identity": "identity", "ReLU": "relu", "GELU": "gelu", "Sigmoid": "sigmoid"}
ACTIVATIONS_TO_TORCH = {"tanh": "torch.nn.modules.activation.Tanh", "identity": "torch.nn.modules.linear.Identity",
                        "relu": "torch.nn.modules.activation.ReLU", "gelu": "torch.nn.modules.activation.GELU",
                        "sigmoid": "torch.nn.modules.activation.Sigmoid"}
# The HF class each family's bare backbone is saved as (what ST's Transformer loads with AutoModel): the families
# whose embeddings are checked against sentence-transformers (tests/test_sentence_transformers.py).
BACKBONE_ARCHITECTURES = {"bert": "BertModel", "roberta": "RobertaModel", "gpt2": "GPT2Model"}
EMBEDDING_TASKS = ("retrieval", "similarity")
TOKENIZER_JSON = "tokenizer.json"


def is_sentence_transformers_dir(path: str) -> bool:
    """A sentence-transformers model directory (it lists its modules in modules.json)."""
    return os.path.isfile(os.path.join(path, MODULES_FILE))


# ---------------------------------------------------------------------------------------------------------
# Reading the module chain

@dataclasses.dataclass
class Pipeline:
    """What an ST directory's module chain computes, in jaxlm's terms, and the files it came from."""
    model_dir: str
    transformer_dir: str  # the Transformer module's folder: an HF model directory
    transformer_config: dict  # its sentence_bert_config.json ({} if none)
    max_seq_length: int | None  # ST's own limit (before jaxlm caps it by the position table); None: no limit
    do_lower_case: bool
    pooling: str  # jaxlm modes joined by '+'
    pooling_config: dict
    include_prompt: bool
    dense: dict | None  # {"in_features", "out_features", "bias", "activation", "kernel" [in, out], "bias_values"}
    normalize: bool
    modules: list[dict]  # modules.json as read
    model_config: dict  # config_sentence_transformers.json ({} if none): prompts, similarity_fn_name

    def describe(self) -> str:
        parts = ["Transformer", f"Pooling({self.pooling})"]
        if self.dense:
            parts.append(f"Dense({self.dense['in_features']} -> {self.dense['out_features']}, "
                         f"{self.dense['activation']})")
        if self.normalize:
            parts.append("Normalize")
        return " -> ".join(parts)


def _read_json(path: str, what: str) -> dict | list:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); {what}") from e


def _module_name(module: dict) -> str | None:
    """'Pooling' for sentence_transformers.models.Pooling or ...sentence_transformer.modules.pooling.Pooling; None
    for a class outside sentence-transformers (custom code)."""
    kind = module.get("type")
    if not isinstance(kind, str) or not kind.startswith("sentence_transformers."):
        return None
    return kind.rsplit(".", 1)[-1]


def _unsupported(model_dir: str, module: dict, why: str) -> ValueError:
    return ValueError(f"{os.path.join(model_dir, MODULES_FILE)}: module {module.get('idx', '?')} "
                      f"{module.get('type')!r} (path {module.get('path')!r}) {why}; jaxlm imports the chain "
                      "Transformer -> Pooling -> [Dense] -> [Normalize]")


def _module_dir(model_dir: str, module: dict) -> str:
    path = module.get("path", "")
    if not isinstance(path, str) or os.path.isabs(path) or ".." in path.split("/"):
        raise ValueError(f"{os.path.join(model_dir, MODULES_FILE)}: module path {path!r} is not a folder inside "
                         f"{model_dir}")
    return os.path.join(model_dir, path)


def _transformer_config(folder: str) -> dict:
    for name in TRANSFORMER_CONFIG_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return _read_json(path, "the Transformer module's config")
    return {}


def _check_transformer(model_dir: str, module: dict, config: dict) -> None:
    """Only the text feature-extraction Transformer (token states out) is jaxlm's backbone."""
    task = config.get("transformer_task", "feature-extraction")
    if task != "feature-extraction":
        raise _unsupported(model_dir, module, f"has transformer_task={task!r} (jaxlm embeds with the "
                           "'feature-extraction' backbone)")
    if config.get("processing_kwargs"):
        raise _unsupported(model_dir, module, f"calls its tokenizer with processing_kwargs="
                           f"{config['processing_kwargs']} (jaxlm tokenizes as the tokenizer files say)")
    output = config.get("module_output_name", "token_embeddings")
    if output != "token_embeddings":
        raise _unsupported(model_dir, module, f"outputs {output!r}, not token embeddings")
    modalities = config.get("modality_config") or {"text": {"method": "forward",
                                                            "method_output_name": "last_hidden_state"}}
    text = modalities.get("text")
    if set(modalities) != {"text"} or text.get("method") != "forward" or \
            text.get("method_output_name") != "last_hidden_state":
        raise _unsupported(model_dir, module, f"has modality_config={modalities} (jaxlm reads text through the "
                           "model's forward, last_hidden_state)")


def _st_max_seq_length(config: dict, transformer_dir: str, hf_config: dict) -> int | None:
    """ST's own limit: model_max_length in the module's processor / tokenizer kwargs, else its max_seq_length,
    else tokenizer_config.json's model_max_length capped by config.json's max_position_embeddings."""
    kwargs = config.get("processor_kwargs") or config.get("tokenizer_args") or {}
    explicit = kwargs.get("model_max_length", config.get("max_seq_length"))
    if explicit is not None:
        return int(explicit)
    tokenizer_config = os.path.join(transformer_dir, "tokenizer_config.json")
    length = None
    if os.path.isfile(tokenizer_config):
        length = _read_json(tokenizer_config, "the tokenizer's config").get("model_max_length")
    table = hf_config.get("max_position_embeddings", hf_config.get("n_positions"))
    if table is not None and table != -1:
        length = table if length is None else min(int(length), int(table))
    return None if length is None else int(length)


def _pooling_modes(model_dir: str, module: dict, config: dict) -> tuple[str, ...]:
    """ST's mode names: pooling_mode (a name or a list), else the legacy booleans (none true: mean, as ST)."""
    mode = config.get("pooling_mode")
    if mode is None:
        modes = tuple(st for key, st in LEGACY_POOLING_KEYS if config.get(key))
        modes = modes or ("mean",)
    else:
        modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in POOLING_FROM_ST]
    if bad:
        raise _unsupported(model_dir, module, f"pools with {bad} (jaxlm pools with {sorted(POOLING_FROM_ST)})")
    return modes


def _dense(model_dir: str, module: dict, folder: str, pooled_dim: int) -> dict:
    config = _read_json(os.path.join(folder, MODULE_CONFIG_FILE), "the Dense module's config")
    for key, expected in (("module_input_name", "sentence_embedding"), ("module_output_name", "sentence_embedding"),
                          ("use_residual", False)):
        if config.get(key, expected) != expected:
            raise _unsupported(model_dir, module, f"has {key}={config[key]!r} (jaxlm's dense layer maps the pooled "
                               "sentence embedding, with no residual)")
    torch_class = config.get("activation_function", "torch.nn.modules.activation.Tanh")
    name = torch_class.rsplit(".", 1)[-1] if isinstance(torch_class, str) and torch_class.startswith("torch.") else None
    if name not in ACTIVATIONS_FROM_TORCH:
        raise _unsupported(model_dir, module, f"has activation_function={torch_class!r}; jaxlm's are "
                           f"{sorted(ACTIVATIONS_TO_TORCH.values())}")
    missing = [k for k in ("in_features", "out_features") if not isinstance(config.get(k), int)]
    if missing:
        raise _unsupported(model_dir, module, f"has no integer {missing} in {MODULE_CONFIG_FILE}")
    tensors, _ = hf_io.read_tensors(folder)
    in_features, out_features = config["in_features"], config["out_features"]
    use_bias = bool(config.get("bias", True))
    extra = sorted(set(tensors) - {"linear.weight", "linear.bias"})
    if extra or "linear.weight" not in tensors or (use_bias and "linear.bias" not in tensors):
        raise _unsupported(model_dir, module, f"holds tensors {sorted(tensors)}; expected linear.weight"
                           f"{' and linear.bias' if use_bias else ''}")
    weight = np.asarray(tensors["linear.weight"], np.float32)
    if weight.shape != (out_features, in_features) or in_features != pooled_dim:
        raise _unsupported(model_dir, module, f"maps {in_features} -> {out_features} features with linear.weight "
                           f"{weight.shape}, but the pooling gives {pooled_dim} features")
    bias = np.asarray(tensors["linear.bias"], np.float32) if use_bias else np.zeros((out_features,), np.float32)
    return {"in_features": in_features, "out_features": out_features, "bias": use_bias,
            "activation": ACTIVATIONS_FROM_TORCH[name], "kernel": np.ascontiguousarray(weight.T), "bias_values": bias}


def read_pipeline(model_dir: str) -> Pipeline:
    """modules.json and each module's files -> Pipeline; anything jaxlm's embedding model cannot compute exactly
    is a ValueError naming the module."""
    modules = _read_json(os.path.join(model_dir, MODULES_FILE), "a list of modules")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise ValueError(f"{os.path.join(model_dir, MODULES_FILE)}: expected a list of modules "
                         "({idx, name, path, type}), got " + json.dumps(modules)[:200])
    modules = sorted(modules, key=lambda m: m.get("idx", 0))
    model_config_path = os.path.join(model_dir, MODEL_CONFIG_FILE)
    model_config = _read_json(model_config_path, "the model's config") if os.path.isfile(model_config_path) else {}
    if model_config.get("model_type", "SentenceTransformer") != "SentenceTransformer":
        raise ValueError(f"{model_config_path}: model_type={model_config['model_type']!r}; jaxlm imports dense "
                         "sentence embedders (SentenceTransformer), not cross-, sparse or multi-vector encoders")
    names = [_module_name(m) for m in modules]
    for module, name in zip(modules, names):
        if name not in SUPPORTED_MODULES:
            raise _unsupported(model_dir, module, "is not supported")
    # The one order jaxlm's head computes: exactly one Transformer, one Pooling, then at most one of each.
    expected = ["Transformer", "Pooling"] + [n for n in ("Dense", "Normalize") if n in names[2:]]
    if names != expected:
        position = next(i for i, (a, b) in enumerate(zip(names + [None], expected + [None])) if a != b)
        module = modules[min(position, len(modules) - 1)]
        raise _unsupported(model_dir, module, f"comes where jaxlm's chain cannot place it (modules: {names})")
    transformer, pooling_module = modules[0], modules[1]
    transformer_dir = _module_dir(model_dir, transformer)
    transformer_config = _transformer_config(transformer_dir)
    _check_transformer(model_dir, transformer, transformer_config)
    hf_config = hf_io.read_config(transformer_dir)

    pooling_dir = _module_dir(model_dir, pooling_module)
    pooling_config = _read_json(os.path.join(pooling_dir, MODULE_CONFIG_FILE), "the Pooling module's config")
    modes = _pooling_modes(model_dir, pooling_module, pooling_config)
    width = pooling_config.get("embedding_dimension", pooling_config.get("word_embedding_dimension"))
    hidden = hf_config.get("hidden_size", hf_config.get("n_embd", hf_config.get("d_model")))
    if width is not None and hidden is not None and int(width) != int(hidden):
        raise _unsupported(model_dir, pooling_module, f"pools {width} features but the transformer's hidden size "
                           f"is {hidden}")
    pooled_dim = len(modes) * int(hidden if hidden is not None else width)
    dense = None
    if "Dense" in names:
        index = names.index("Dense")
        dense = _dense(model_dir, modules[index], _module_dir(model_dir, modules[index]), pooled_dim)
    return Pipeline(
        model_dir=model_dir, transformer_dir=transformer_dir, transformer_config=transformer_config,
        max_seq_length=_st_max_seq_length(transformer_config, transformer_dir, hf_config),
        do_lower_case=bool(transformer_config.get("do_lower_case", False)),
        pooling="+".join(POOLING_FROM_ST[m] for m in modes), pooling_config=pooling_config,
        include_prompt=bool(pooling_config.get("include_prompt", True)), dense=dense, normalize="Normalize" in names,
        modules=modules, model_config=model_config)


# ---------------------------------------------------------------------------------------------------------
# Import

@dataclasses.dataclass
class EmbeddingImport:
    """An ST directory read into jaxlm: the task model's params ({'backbone', 'head'}), its configs, the report."""
    pipeline: Pipeline
    family: str
    config: object  # the backbone's jaxlm model config
    params: dict
    spec: TaskSpec
    report: hf.ConversionReport  # the transformer's tensors (backbone paths only)
    hf_config: dict
    files: list[str]

    def summary(self) -> str:
        return (f"sentence-transformers pipeline {self.pipeline.describe()}, max_seq_length {self.spec.max_len}"
                f"{', lowercased' if self.pipeline.do_lower_case else ''}\n{self.report.summary()}")


def _max_len(pipeline: Pipeline, config) -> int:
    table = family_of(config).max_length(config)
    length = pipeline.max_seq_length
    if length is None and table is None:
        raise ValueError(f"{pipeline.transformer_dir}: no max_seq_length (sentence_bert_config.json) nor "
                         "model_max_length (tokenizer_config.json), and the model has no position table to cap it")
    if length is None or (table is not None and length > table):
        if length is not None:
            log.warning("%s: max_seq_length %d exceeds the model's %d positions; texts are cut to %d tokens",
                        pipeline.model_dir, length, table, table)
        return table
    return length


def _backbone_report(report: hf.ConversionReport, key: str) -> hf.ConversionReport:
    """The report with paths inside the backbone only (the pretraining heads the HF import adds are dropped)."""
    def inside(paths):
        return [p for p in paths if not key or p.startswith(key + "/")]
    return dataclasses.replace(report, loaded=inside(report.loaded), new=inside(report.new))


def read_sentence_transformers(model_dir: str, *, scan_layers: bool = False, seed: int = 0) -> EmbeddingImport:
    """Reads (and checks) everything an import needs, writing nothing."""
    pipeline = read_pipeline(model_dir)
    source = pipeline.transformer_dir
    hf_config = hf_io.read_config(source)
    family, fields = hf_registry.jaxlm_fields_from_hf(hf_config)
    config = hf.make_config(family, fields)
    model_family = family_of(config)
    if family not in BACKBONE_ARCHITECTURES:
        raise ValueError(f"{source}: a {family!r} transformer; jaxlm imports sentence-transformers models over "
                         f"{sorted(BACKBONE_ARCHITECTURES)}")
    tensors, files = hf_io.read_tensors(source)
    params, report = hf.hf_to_jaxlm_params(tensors, family, config, seed=seed, source=source)
    backbone, key, _ = split_source(params)  # the pretraining heads the import initialised are dropped
    report = _backbone_report(report, key)
    if report.new:
        log.warning("%s: backbone params absent from the checkpoint were initialised fresh (seed %d): %s", source,
                    seed, report.new)
    if scan_layers:
        config = dataclasses.replace(config, scan_layers=True)
        backbone = stack_layers(backbone, None)
    task_params = {"backbone": backbone}
    dense = pipeline.dense
    if dense:
        task_params["head"] = {"dense": {"kernel": dense["kernel"], "bias": dense["bias_values"]}}
    max_len = _max_len(pipeline, config)
    spec = TaskSpec(task="retrieval", format="pairs", labels=None, pair=False, style=model_family.text_style,
                    max_len=max_len, max_query_len=max_len, pooling=pipeline.pooling,
                    embedding_dim=dense["out_features"] if dense else 0,
                    dense_activation=dense["activation"] if dense else "tanh", normalize=pipeline.normalize)
    check_embedding_spec(spec)
    prompts = {k: v for k, v in (pipeline.model_config.get("prompts") or {}).items() if v}
    default_prompt = pipeline.model_config.get("default_prompt_name")
    if default_prompt and prompts.get(default_prompt):
        log.warning("%s: default_prompt_name=%r: sentence-transformers prepends %r to every text it encodes by "
                    "default; jaxlm embeds the texts as given (the prompts are kept in the saved config)", model_dir,
                    default_prompt, prompts[default_prompt])
    return EmbeddingImport(pipeline, family, config, task_params, spec, report, hf_config, files)


def _lowercased_tokenizer(tokenizer_dir: str, family: str) -> None:
    """ST's do_lower_case: a Lowercase normalizer before the tokenizer's own (as sentence-transformers adds it, and
    not when one is there already), saved as the directory's tokenizer.json so every reader of the run applies it."""
    from tokenizers import normalizers

    tokenizer = load_hf_tokenizer(tokenizer_dir, family)
    backend = getattr(tokenizer, "backend", None)
    if backend is None:
        raise ValueError(f"{tokenizer_dir}: do_lower_case needs a tokenizers-library tokenizer (tokenizer.json, "
                         f"vocab.txt or vocab.json + merges.txt), not {type(tokenizer).__name__}")
    current = backend.normalizer
    parts = list(current) if isinstance(current, normalizers.Sequence) else [] if current is None else [current]
    if not any(isinstance(n, normalizers.Lowercase) for n in parts):
        backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), *parts])
    (epath.Path(tokenizer_dir) / TOKENIZER_JSON).write_text(backend.to_str())


def saved_config(imported: EmbeddingImport, model_dir: str, tokenizer_files: list[str]) -> dict:
    """The run config stored beside the params: a retrieval run's keys (model, model_config, task_spec, train)
    plus the import's provenance and the ST files export writes back."""
    fields = dataclasses.asdict(imported.config)
    pipeline = imported.pipeline
    return {
        "model": {"family": imported.family, "size": None, **fields},
        "model_config": fields,
        "task_spec": dataclasses.asdict(imported.spec),
        "tokenizer_dir": hf.TOKENIZER_SUBDIR if tokenizer_files else None,
        "hf_config": imported.hf_config,
        "train": {"eval_batch_size": 32},
        "source": {"model_dir": os.path.abspath(model_dir), "files": [os.path.basename(f) for f in imported.files]},
        "conversion": dataclasses.asdict(imported.report),
        "sentence_transformers": {
            "modules": pipeline.modules, "config": pipeline.model_config,
            "transformer_config": pipeline.transformer_config, "pooling_config": pipeline.pooling_config,
            "max_seq_length": pipeline.max_seq_length, "do_lower_case": pipeline.do_lower_case,
            "include_prompt": pipeline.include_prompt, "dense_bias": pipeline.dense["bias"] if pipeline.dense else None,
        },
    }


def write_embedding_workdir(workdir: str, imported: EmbeddingImport) -> dict:
    """workdir/checkpoints/0/{state,config} (Orbax; params {'backbone', 'head'}), workdir/tokenizer/ (the
    transformer's tokenizer files, lowercasing added where ST's do_lower_case says so), workdir/jaxlm_config.json.
    Returns the saved config."""
    model_dir = imported.pipeline.model_dir
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    tokenizer_dir = os.path.join(workdir, hf.TOKENIZER_SUBDIR)
    tokenizer_files = copy_tokenizer_files(imported.pipeline.transformer_dir, tokenizer_dir)
    if not tokenizer_files:
        raise FileNotFoundError(f"{imported.pipeline.transformer_dir}: no tokenizer files (tokenizer.json, vocab.txt, "
                                "vocab.json + merges.txt); an embedding model needs its tokenizer")
    if imported.pipeline.do_lower_case:
        _lowercased_tokenizer(tokenizer_dir, imported.family)
    config_json = saved_config(imported, model_dir, tokenizer_files)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=imported.params, opt_state=None,
                       rng=jnp.zeros((2,), jnp.uint32))
    manager = checkpoint.make_checkpoint_manager(workdir, max_to_keep=None, async_save=False)
    if not checkpoint.save_checkpoint(manager, 0, state, config=config_json):
        manager.close()
        raise FileExistsError(f"{workdir}: a checkpoint at step 0 exists already; use a fresh --workdir")
    manager.wait_until_finished()
    manager.close()
    with open_text(os.path.join(workdir, hf.CONFIG_FILE), "w") as f:
        json.dump(config_json, f, indent=2)
    return config_json


def import_sentence_transformers(model_dir: str, workdir: str, *, scan_layers: bool = False,
                                 seed: int = 0) -> EmbeddingImport:
    """An ST model directory -> a jaxlm embedding workdir (a retrieval run at step 0). The caller decides about a
    non-empty workdir (the CLI's --overwrite)."""
    imported = read_sentence_transformers(model_dir, scan_layers=scan_layers, seed=seed)
    write_embedding_workdir(workdir, imported)
    return imported


# ---------------------------------------------------------------------------------------------------------
# Export

def backbone_tensors(config, backbone: dict) -> tuple[dict[str, np.ndarray], object]:
    """A task model's backbone params (either layout) -> the HF tensors of the family's bare model (BertModel's
    names: no 'bert.' prefix, no heads) and the jaxlm config those tensors describe."""
    family = family_of(config)
    backbone, _ = to_unrolled(jax.tree.map(np.asarray, backbone))
    flat = flatten_dict({family.backbone_key: backbone} if family.backbone_key else backbone, sep="/")
    export_config = config
    if config.family in ("bert", "roberta"):  # the pooler where the backbone has one; no NSP head
        export_config = dataclasses.replace(config, pooler=f"{family.backbone_key}/pooler/kernel" in flat,
                                            nsp_head=False)
    spec = hf_registry.hf_family(config.family)
    table, d = spec.table(config.family, export_config), spec.dims(config)
    prefix = table.prefix + "."
    tensors, used = {}, set()
    for row in table.rows:
        if not row.hf.startswith(prefix):  # a pretraining head (cls.*, lm_head.*)
            continue
        missing = [p for p in row.jax if p not in flat]
        if missing:
            raise ValueError(f"backbone params {missing} (for HF {row.hf!r}) are not in the run's params")
        array = row.transform.to_hf([flat[p] for p in row.jax], d)
        tensors[row.hf[len(prefix):]] = np.ascontiguousarray(np.asarray(array, np.float32))
        used.update(row.jax)
    left = sorted(set(flat) - used)
    if left:
        raise ValueError(f"backbone params {left} have no place in {BACKBONE_ARCHITECTURES.get(config.family)}")
    return tensors, export_config


def _write_json(path: str, obj, indent: int = 4) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent)
    return path


def _export_step(workdir: str, saved: dict, spec: TaskSpec, step: int | None) -> int | None:
    """The step to export: `step`, else the run's best dev checkpoint (as load_finetuned picks it), else the latest."""
    if step is not None:
        return step
    metric = saved.get("best_metric") or (TASKS[spec.task].best_metric(spec) if spec.task in TASKS else None)
    return best_step(workdir, metric) if metric else None


def export_sentence_transformers(workdir: str, out_dir: str, step: int | None = None) -> dict:
    """An embedding run (an ST import, or a retrieval / similarity run fine-tuned in jaxlm) at `step` (default: its
    best dev checkpoint, else the latest) -> a directory `SentenceTransformer(out_dir)` loads. Returns {'files',
    'step', 'modules'}."""
    saved = wd.read_config(workdir, step)
    if saved is None or "task_spec" not in saved:
        raise ValueError(f"{workdir}: not an embedding run (its saved config has no task_spec); to-st exports "
                         f"{EMBEDDING_TASKS} runs and sentence-transformers imports (to-hf exports language models)")
    spec = TaskSpec.from_dict(saved["task_spec"])
    if spec.task not in EMBEDDING_TASKS:
        raise ValueError(f"{workdir}: a {spec.task!r} run; to-st exports embedding runs ({EMBEDDING_TASKS})")
    model_config = wd.model_config_from_saved(saved)
    step = _export_step(workdir, saved, spec, step)
    params, _, step = wd.read_params(workdir, step)
    tokenizer_path = find_run_tokenizer(wd.run_dir(workdir), saved)
    if not os.path.isdir(tokenizer_path):
        raise ValueError(f"{workdir}: its tokenizer {tokenizer_path} is not a Hugging Face tokenizer directory, which "
                         "sentence-transformers needs")
    original = saved.get("sentence_transformers") or {}

    tensors, export_config = backbone_tensors(model_config, params["backbone"])
    architecture = BACKBONE_ARCHITECTURES[model_config.family]
    files = hf_io.write_safetensors(tensors, out_dir)
    config_json = hf_registry.hf_config_from_jaxlm(export_config, architecture, saved.get("hf_config"))
    files.append(_write_json(os.path.join(out_dir, "config.json"), config_json, indent=2))
    files += [os.path.join(out_dir, n) for n in copy_tokenizer_files(tokenizer_path, out_dir)]
    # The Transformer module: ST >= 5's keys, plus max_seq_length / do_lower_case, which every ST version reads.
    files.append(_write_json(os.path.join(out_dir, "sentence_bert_config.json"), {
        "max_seq_length": spec.max_len, "do_lower_case": bool(original.get("do_lower_case", False)),
        "transformer_task": "feature-extraction",
        "modality_config": {"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        "module_output_name": "token_embeddings"}))

    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES["Transformer"]}]

    def add(kind: str) -> str:
        idx = len(modules)
        modules.append({"idx": idx, "name": str(idx), "path": f"{idx}_{kind}", "type": MODULE_TYPES[kind]})
        return os.path.join(out_dir, f"{idx}_{kind}")

    hidden = getattr(model_config, "hidden_size", None) or model_config.d_model
    modes = [POOLING_TO_ST[m] for m in parse_pooling(spec.pooling)]
    files.append(_write_json(os.path.join(add("Pooling"), MODULE_CONFIG_FILE), {
        "embedding_dimension": hidden, "pooling_mode": modes[0] if len(modes) == 1 else modes,
        "include_prompt": bool(original.get("include_prompt", True))}))
    if spec.embedding_dim:
        folder = add("Dense")
        dense = params["head"]["dense"]
        kernel, bias = np.asarray(dense["kernel"], np.float32), np.asarray(dense["bias"], np.float32)
        use_bias = original.get("dense_bias") is not False or bool(np.any(bias))
        weights = {"linear.weight": np.ascontiguousarray(kernel.T)}
        if use_bias:
            weights["linear.bias"] = bias
        files.append(_write_json(os.path.join(folder, MODULE_CONFIG_FILE), {
            "in_features": int(kernel.shape[0]), "out_features": int(kernel.shape[1]), "bias": use_bias,
            "activation_function": ACTIVATIONS_TO_TORCH[spec.dense_activation],
            "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}))
        files += hf_io.write_safetensors(weights, folder)
    if spec.normalize:
        files.append(_write_json(os.path.join(add("Normalize"), MODULE_CONFIG_FILE), {
            "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}))
    model_config_json = {"model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
                         "similarity_fn_name": "cosine", **(original.get("config") or {})}
    files.append(_write_json(os.path.join(out_dir, MODEL_CONFIG_FILE), model_config_json, indent=2))
    files.append(_write_json(os.path.join(out_dir, MODULES_FILE), modules, indent=2))
    return {"files": files, "step": step, "modules": [m["type"].rsplit(".", 1)[-1] for m in modules],
            "architecture": architecture}

