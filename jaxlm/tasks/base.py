"""What a fine-tuning task is to the rest of jaxlm: one class per kind, one module each in jaxlm/tasks/.

A task owns everything about its kind: which data formats it reads (`formats`) and how (`read_examples`), the
fixed-shape features it builds (`features`), its head and model (`model`), its loss (`loss_fn`), how model
outputs become predictions and the task's official metrics (`predictions`, `metrics`), and its FLOPs. The
`TaskSpec` is everything about one task run that evaluate / predict need again (saved with the checkpoints).

    classification.py        sequence classification and regression (GLUE, TSV / CSV / JSONL)
    token_classification.py  NER (CoNLL)
    question_answering.py    extractive QA (SQuAD)
    seq2seq.py               text to text (translation, summarisation, T5's GLUE / SQuAD as text)
    retrieval.py             dense retrieval: a dual encoder with in-batch negatives (embedding.py: the head)
    similarity.py            sentence-embedding similarity (STS-B by the cosine of two embeddings)

Registered by `config.task` name in jaxlm/tasks/registry.py.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding as shd
from jaxlm.models import family_of
from jaxlm.models.common import to_dtype
from jaxlm.objectives import losses
from jaxlm.tasks import readers
from jaxlm.tasks.batches import iterate_batches, num_rows
from jaxlm.tasks.features import MODEL_INPUT_KEYS

log = logging.getLogger(__name__)

INPUT_KEYS = ("segment_ids", "token_types", "positions")
LOWER_IS_BETTER = ("loss", "mse", "perplexity")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything about the task a fine-tuned model needs again at evaluate / predict time (saved as JSON)."""
    task: str
    format: str
    labels: tuple[str, ...] | None  # class / tag names (model output order); None for regression and QA
    pair: bool  # classification inputs are (text, text_b)
    style: str  # special-token wrapping (jaxlm.tasks.features.STYLES)
    max_len: int
    head_dropout: float | None = None  # None: the backbone's hidden dropout (HF's default)
    doc_stride: int = 128
    max_query_len: int = 64
    n_best: int = 20
    max_answer_length: int = 30
    # seq2seq: max_len bounds the source (prompt included), max_target_len the target; see seq2seq_features.
    max_target_len: int = 0
    prompt: str = "{source}"
    source_field: str = ""
    target_field: str = ""
    text_metrics: tuple[str, ...] = ()
    encoder_decoder: bool = False
    pad_id: int = 0
    decoder_start_id: int = 0
    num_beams: int = 1  # dev-set and predict generation: 1 = greedy
    length_penalty: float = 0.6
    # Sentence embeddings (retrieval / similarity): sentence-transformers' Pooling -> Dense -> Normalize modules;
    # passages / texts are cut to max_len, retrieval queries to max_query_len.
    pooling: str = "mean"  # jaxlm.layers.pooling.POOLING_MODES, several joined by '+'
    embedding_dim: int = 0  # > 0: a dense projection to this size after pooling
    dense_activation: str = "tanh"  # sentence-transformers' Dense default
    normalize: bool = False  # L2-normalise the embeddings (the Normalize module)
    similarity_scale: float = 20.0  # MultipleNegativesRankingLoss: cosine x scale are the logits
    symmetric_loss: bool = False  # add the passage -> query direction (MultipleNegativesSymmetricRankingLoss)
    top_k: int = 10  # retrieval: passages returned per query by predict
    hard_negatives: bool = False  # retrieval: each training row carries one hard negative
    score_max: float = 5.0  # similarity: gold scores are divided by this to compare with a cosine (STS-B: 0-5)

    @property
    def num_labels(self) -> int:
        fixed = {"regression": 1, "question_answering": 2, "seq2seq": 0, "retrieval": 0, "similarity": 0}
        return fixed[self.task] if self.task in fixed else len(self.labels)

    @property
    def row_len(self) -> int:
        """Tokens per model row: a decoder-only seq2seq row holds the prompt and the target."""
        if self.task == "seq2seq" and not self.encoder_decoder:
            return self.max_len + self.max_target_len - 1
        return self.max_len

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        d = dict(d)
        for key in ("labels", "text_metrics"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def column(value):
    """Config column: a header name, a 0-based index written as digits, or '' (none) -> None."""
    if value == "" or value is None:
        return None
    return int(value) if isinstance(value, str) and value.isdigit() else value


def normalized_format(name: str) -> str:
    """config.data.format as the tasks spell it: SST-2 -> sst2, STS-B -> stsb."""
    return name.lower().replace("-", "")


def record_field(spec: TaskSpec, record, where: str):
    """need(key, kind=str): record[key] of a predict input record, or a BadInputError naming `where` (file:line)
    and what was expected."""
    def need(key, kind=str):
        if not isinstance(record, dict) or key not in record or not isinstance(record[key], kind) or not record[key]:
            raise readers.BadInputError(f"{where}: expected a non-empty {kind.__name__} {key!r} (a {spec.task} "
                                        f"model); got {json.dumps(record)[:200]}")
        return record[key]
    return need


def logged(examples_and_stats) -> list:
    """The examples of a reader, with its skipped bad lines logged; no examples at all is an error."""
    examples, stats = examples_and_stats
    if stats.num_skipped:
        log.warning("%s: skipped %d bad lines %s; first: %s", stats.path, stats.num_skipped, stats.skipped,
                    stats.first_errors[:2])
    if not examples:
        raise ValueError(f"{stats.path}: no examples")
    return examples


def ce_metrics(logits, labels, weights):
    """(mean CE, accuracy, weight sum) over weighted rows / tokens."""
    loss_sum, _, weight_sum = losses.cross_entropy_with_logits(logits, labels, weights)
    correct, _ = losses.weighted_accuracy(logits, labels, weights)
    denom = jnp.maximum(weight_sum, 1e-8)
    return loss_sum / denom, correct / denom, weight_sum


def weights_of(batch, shape, key="example_weights"):
    w = batch.get(key)
    return jnp.ones(shape, jnp.float32) if w is None else w.astype(jnp.float32)


# ----------------------------------------------------------------------------------------------------------------
# The task model: a family's backbone + a task head

def dense(config, features: int, name: str, *, axes=("embed", None), use_bias: bool = True) -> nn.Dense:
    """A head layer created with HF's initialiser (normal(initializer_range), zero bias)."""
    init = nn.initializers.normal(config.initializer_range)
    return nn.Dense(features, use_bias=use_bias, dtype=to_dtype(config.dtype), param_dtype=to_dtype(config.param_dtype),
                    kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]), name=name)


def dropout_rate(config, head_dropout: float | None) -> float:
    return family_of(config).hidden_dropout(config) if head_dropout is None else head_dropout


class TaskModel(nn.Module):
    """A family's backbone (under `backbone`, the pretraining model's backbone subtree, so that fine-tuning from a
    checkpoint is a re-keying) and a task head (under `head`, built by the task). Called like the backbone:
    `model.apply({'params': p}, inputs, segment_ids=..., token_types=..., positions=..., deterministic=...)`;
    the head gets (hidden [B,L,D], pooled [B,D] or None, segment_ids [B,L]) and returns the outputs dict."""
    config: Any
    head: nn.Module

    def setup(self):
        self.backbone = family_of(self.config).backbone(self.config)

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, *, deterministic=True):
        if segment_ids is None:
            segment_ids = (inputs != self.config.pad_token_id).astype(jnp.int32)
        hidden, pooled = self.backbone(inputs, segment_ids, token_types, positions, deterministic=deterministic)
        return self.head(hidden, pooled, segment_ids, deterministic=deterministic)


def apply_model(model, params, batch, rng):
    """The task model's outputs dict on a batch (dropout on when rng is given)."""
    return model.apply({"params": params}, batch["inputs"], **{k: batch.get(k) for k in INPUT_KEYS},
                       deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})


# ----------------------------------------------------------------------------------------------------------------
# The interface

class Task:
    """Base class of the fine-tuning kinds; subclasses set the class attributes and implement the methods that
    raise NotImplementedError."""
    names: ClassVar[tuple[str, ...]] = ()  # the config.task values this class serves
    formats: ClassVar[tuple[str, ...]] = ()  # the config.data.format values it reads
    target_keys: ClassVar[tuple[str, ...]] = ()  # batch keys its loss reads besides the model inputs
    # Family kinds whose backbone can do this task (a causal decoder sees no right context: no NER / QA).
    kinds: ClassVar[tuple[str, ...]] = ("encoder",)

    # ------------------------------------------------------------------ spec
    def spec(self, config, family) -> TaskSpec:
        """The task spec of a fine-tuning config for a backbone of `family`; errors name the config key."""
        raise NotImplementedError

    def with_model(self, spec: TaskSpec, model_config) -> TaskSpec:
        """The spec with what it takes from the backbone's config (text to text: the pad and decoder start ids)."""
        return spec

    def with_init_checkpoint(self, spec: TaskSpec, config, saved: dict | None) -> TaskSpec:
        """The spec with what it keeps of the init checkpoint's own task (`saved`: its saved config, or None)."""
        return spec

    def restore_head(self, spec: TaskSpec, params: dict, init: str, step: int | None) -> dict:
        """Params with the head read from the init checkpoint where this task keeps it (default: a new head)."""
        return params

    def check_family(self, task: str, family) -> None:
        if family.kind not in self.kinds:
            raise ValueError(f"task {task!r} is not supported for a {family.name!r} model ({family.kind}); it needs "
                             f"a backbone of kind {self.kinds}")

    def check_fits(self, spec: TaskSpec, model_config, tokenizer) -> None:
        """Config errors before any compile: a row longer than the position table, a tokenizer larger than the
        embedding table."""
        table = family_of(model_config).max_length(model_config)
        if table is not None and spec.row_len > table:
            what = (f"config.data.max_len + max_target_len - 1 = {spec.row_len} (a decoder-only row holds the prompt "
                    "and the target)" if spec.row_len != spec.max_len else f"config.data.max_len={spec.max_len}")
            raise ValueError(f"{what} exceeds the {table} positions of the model")
        if tokenizer.vocab_size > model_config.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                             f"{model_config.vocab_size}: config.tokenizer does not belong to this checkpoint")

    def metric_names(self, spec: TaskSpec) -> tuple[str, ...]:
        raise NotImplementedError

    def best_metric(self, spec: TaskSpec, override: str = "") -> str:
        """The dev metric that picks the kept checkpoint."""
        return override or self.metric_names(spec)[0]

    # ------------------------------------------------------------------ data
    def read_examples(self, spec: TaskSpec, data, path: str = "", *, split: str = "", labelled: bool = True,
                      limit: int = 0) -> list:
        """Examples of one split: from `path` (a task file), or from the TFDS dataset config.data.tfds_name[split].
        Bad lines are errors naming file:line (or skipped and counted with config.data.skip_bad_lines)."""
        if path:
            examples = self.read_file(spec, data, path, labelled=labelled)
        elif data.tfds_name:
            examples = logged(readers.tfds_examples(data.tfds_name, split, data.tfds_data_dir or None,
                                                    **self.tfds_options(spec)))
        else:
            raise ValueError("no data file given (config.data.train_file / eval_file) and no config.data.tfds_name")
        return examples[:limit] if limit else examples

    def read_file(self, spec: TaskSpec, data, path: str, *, labelled: bool) -> list:
        raise NotImplementedError

    def tfds_options(self, spec: TaskSpec) -> dict:
        return {}

    def examples_from_records(self, spec: TaskSpec, records: Sequence[dict], source: str) -> list:
        """Examples from predict's input records; a missing field is a BadInputError naming source:line."""
        raise NotImplementedError

    def features(self, spec: TaskSpec, examples: Sequence, tokenizer) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def device_keys(self, spec: TaskSpec) -> tuple[str, ...]:
        """The feature keys the jitted step reads (the rest is host-side bookkeeping)."""
        return MODEL_INPUT_KEYS + self.target_keys

    def length_bucket_keys(self, spec: TaskSpec) -> tuple[str, ...] | None:
        """The device keys with a token axis (axis 1) that a length-bucketed training batch is cut to its bucket's
        length (config.data.length_buckets; jaxlm.tasks.batches.EpochBatches), or None: this task always trains on
        full max_len rows. Only a task whose model outputs on real tokens do not depend on padding after them
        (attention masks padding keys) and whose loss never reads a padding position may bucket."""
        return None

    def init_batch(self, spec: TaskSpec) -> dict[str, np.ndarray]:
        """What the task model's init is called with (shapes only matter)."""
        ones = np.ones((1, spec.max_len), np.int32)
        return {"inputs": ones, "segment_ids": ones, "positions": np.arange(spec.max_len, dtype=np.int32)[None],
                "token_types": np.zeros_like(ones)}

    # ------------------------------------------------------------------ model
    def head(self, spec: TaskSpec, model_config) -> nn.Module:
        raise NotImplementedError

    def model(self, spec: TaskSpec, model_config) -> nn.Module:
        return TaskModel(model_config, self.head(spec, model_config))

    def loss(self, spec: TaskSpec, outputs: dict, batch: dict):
        """(loss, metrics) of the model outputs on a batch; metrics carry num_tokens (the weight sum)."""
        raise NotImplementedError

    def loss_fn(self, spec: TaskSpec, model):
        def loss_fn(params, batch, rng):
            return self.loss(spec, apply_model(model, params, batch, rng), batch)
        return loss_fn

    def predictor(self, spec: TaskSpec, model, mesh, param_shardings, batch_size: int, tokenizer,
                  rules=shd.DEFAULT_RULES):
        """predictor(params, features) -> (outputs dict of numpy arrays per feature row, mean loss)."""
        return Predictor(self, spec, model, mesh, param_shardings, batch_size, rules)

    def predictions(self, spec: TaskSpec, examples: Sequence, features: dict, outputs: dict) -> list[dict]:
        """One JSON-able prediction per example."""
        raise NotImplementedError

    def metrics(self, spec: TaskSpec, examples: Sequence, features: dict, outputs: dict) -> dict[str, float]:
        """The task's official dev metrics (fractions in [0, 1]; BLEU / ROUGE 0-100)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ FLOPs
    def head_train_flops(self, spec: TaskSpec, model_config) -> float:
        """Training FLOPs of the head per example (the backbone's are the family's)."""
        return 0.0

    def train_flops_per_example(self, spec: TaskSpec, model_config) -> float:
        """Training FLOPs (forward + backward) of one row of spec.row_len tokens: the matmuls the step runs (the
        embedding lookups are gathers, not counted; tests/test_flops.py checks the count against XLA's)."""
        family = family_of(model_config)
        return (family.backbone_train_flops(model_config, tokens=spec.row_len)
                + self.head_train_flops(spec, model_config))


# ----------------------------------------------------------------------------------------------------------------
# A sharded pass over every feature row

def sharded_pass(jitted, params, features: dict, keys, batch_size: int, mesh, rules, batch_sharding) -> list:
    """jitted(params, batch) over every row of `features` in global batches (this process's slice of each, padded
    with weight-0 rows), dispatched back to back, then gathered on the host: one result per batch."""
    pending = []
    for batch in iterate_batches({k: features[k] for k in keys}, batch_size, process_index=jax.process_index(),
                                 process_count=jax.process_count()):
        with shd.mesh_context(mesh, rules):
            pending.append(jitted(params, shd.host_local_to_global(batch, mesh, batch_sharding)))
    return jax.device_get(pending)


class Predictor:
    """Outputs of the task model over every feature row (sharded step, outputs gathered on each host), plus the
    mean loss over the rows' weights."""

    def __init__(self, task: Task, spec: TaskSpec, model, mesh, param_shardings, batch_size: int,
                 rules=shd.DEFAULT_RULES):
        self.mesh, self.batch_size, self.rules = mesh, batch_size, rules
        self.keys = task.device_keys(spec)

        def predict(params, batch):
            outputs = apply_model(model, params, batch, None)
            loss, metrics = task.loss(spec, outputs, batch)
            return float32_outputs(outputs), loss * metrics["num_tokens"], metrics["num_tokens"]

        self.batch_sharding = shd.batch_sharding(mesh)
        self.jitted = jax.jit(predict, in_shardings=(param_shardings, self.batch_sharding),
                              out_shardings=shd.replicated(mesh))

    def __call__(self, params, features: dict) -> tuple[dict[str, np.ndarray], float]:
        n = num_rows(features)
        chunks, loss_sum, weight_sum = [], 0.0, 0.0
        for outputs, loss, weight in sharded_pass(self.jitted, params, features, self.keys, self.batch_size,
                                                  self.mesh, self.rules, self.batch_sharding):
            chunks.append(outputs)
            loss_sum += float(loss)
            weight_sum += float(weight)
        outputs = {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}
        return outputs, loss_sum / max(weight_sum, 1e-8)


def softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return probs / probs.sum(-1, keepdims=True)


def float32_outputs(outputs):
    return jax.tree.map(lambda x: x.astype(jnp.float32), outputs)
