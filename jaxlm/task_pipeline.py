"""What `finetune`, `evaluate` and `predict` share: a fine-tuning config -> task spec, tokenizer, task model,
examples and features; a sharded predict pass; outputs -> predictions and task metrics; a fine-tuned run
loaded back from its workdir.

The readers, features, postprocessing and metrics themselves live in jaxlm.tasks; the model in
jaxlm.models.heads; the losses in jaxlm.objectives.finetuning. This module only wires them to a config.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Iterator, Sequence

import jax
import numpy as np

from jaxlm import sharding as shd
from jaxlm import tasks
from jaxlm.objectives.finetuning import (MODEL_INPUT_KEYS, SEQ2SEQ_KEYS, TARGET_KEYS, TASK_LOSSES, apply_model,
                                         make_finetuning_loss)
from jaxlm.tasks import text_to_text

log = logging.getLogger(__name__)

GLUE_TASKS = tuple(tasks.GLUE_LAYOUTS)
GENERIC_FORMATS = ("tsv", "csv", "jsonl")
TOKEN_FORMATS = ("conll2003", "conll")
SEQ2SEQ_FORMATS = ("parallel",) + GENERIC_FORMATS  # parallel: line-aligned FILE.<source_field> + FILE.<target_field>
# GLUE tasks and SQuAD in T5's text-to-text form (jaxlm.tasks.text_to_text), scored by their own metrics.
TEXT_TO_TEXT_FORMATS = text_to_text.TEXT_TO_TEXT_FORMATS
FORMATS = GLUE_TASKS + GENERIC_FORMATS + TOKEN_FORMATS + ("squad", "parallel")
ENCODER_DECODER_FAMILIES = ("t5", "t5_v1_1")
TEXT_WRITING_FAMILIES = ENCODER_DECODER_FAMILIES + ("gpt2",)
# The dev metric that picks the best checkpoint, by format (GLUE: the task's first official metric, except F1
# for the imbalanced paraphrase tasks).
BEST_METRIC = {"cola": "matthews_corrcoef", "mrpc": "f1", "qqp": "f1", "stsb": "pearson", "conll2003": "f1",
               "conll": "f1", "squad": "f1"}
LOWER_IS_BETTER = ("loss", "mse", "perplexity")
SPEC_FILE = "task_spec.json"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """Everything about the task a fine-tuned model needs again at evaluate / predict time."""
    task: str
    format: str
    labels: tuple[str, ...] | None  # class / tag names (model output order); None for regression and QA
    pair: bool  # classification inputs are (text, text_b)
    style: str  # special-token wrapping (jaxlm.tasks.features.STYLES)
    max_len: int
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

    @property
    def num_labels(self) -> int:
        fixed = {"regression": 1, "question_answering": 2, "seq2seq": 0}
        return fixed[self.task] if self.task in fixed else len(self.labels)

    @property
    def row_len(self) -> int:
        """Tokens per model row: a decoder-only seq2seq row holds the prompt and the target."""
        if self.task == "seq2seq" and not self.encoder_decoder:
            return self.max_len + self.max_target_len - 1
        return self.max_len

    @property
    def metric_names(self) -> tuple[str, ...]:
        if self.task == "seq2seq":
            return self.text_metrics
        if self.format in tasks.GLUE_METRICS:
            return tasks.GLUE_METRICS[self.format]
        if self.task == "classification":
            return ("accuracy", "macro_f1")
        return {"regression": ("pearson", "spearman"), "token_classification": ("f1", "precision", "recall"),
                "question_answering": ("exact_match", "f1")}[self.task]

    def best_metric(self, override: str = "") -> str:
        return override or BEST_METRIC.get(self.format, "accuracy" if self.task == "classification" else
                                           self.metric_names[0])

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        d = dict(d)
        for key in ("labels", "text_metrics"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def _column(value: str):
    """Config column: a header name, a 0-based index written as digits, or '' (none) -> None."""
    if value == "" or value is None:
        return None
    return int(value) if isinstance(value, str) and value.isdigit() else value


def text_layout(data_config) -> tasks.TextLayout:
    """The generic tsv/csv/jsonl layout described by config.data."""
    labels = tuple(str(x) for x in data_config.labels) if data_config.labels else None
    return tasks.TextLayout(_column(data_config.text_column), _column(data_config.label_column),
                            _column(data_config.text_b_column), labels=labels, regression=labels is None,
                            header=data_config.header, format=data_config.format)


def task_spec(config, family: str) -> TaskSpec:
    """The task spec of a fine-tuning config; checks that config.task fits config.data.format."""
    d = config.data
    fmt = d.format.lower().replace("-", "")  # SST-2 -> sst2, STS-B -> stsb
    if fmt not in FORMATS:
        raise ValueError(f"config.data.format={d.format!r}; choose one of {FORMATS}")
    if config.task == "seq2seq" or fmt == "parallel":
        return _seq2seq_spec(config, fmt, family)
    if fmt in GLUE_TASKS:
        layout = tasks.glue_layout(fmt)
        task = "regression" if layout.regression else "classification"
        labels, pair = (None if layout.regression else tuple(layout.labels)), layout.text_b_column is not None
    elif fmt in GENERIC_FORMATS:
        labels = tuple(str(x) for x in d.labels) if d.labels else None
        task = "classification" if labels else "regression"
        pair = bool(d.text_b_column)
    elif fmt in TOKEN_FORMATS:
        task, pair = "token_classification", False
        labels = tasks.CONLL2003_BIO_LABELS if fmt == "conll2003" else tuple(str(x) for x in d.labels)
    else:
        task, labels, pair = "question_answering", None, True
    if config.task != task:
        raise ValueError(f"config.task={config.task!r} does not fit config.data.format={d.format!r}, which is a "
                         f"{task} task (set --config.task={task})")
    if task == "classification" and (not labels or len(labels) < 2):
        raise ValueError(f"config.data.labels={d.labels!r}: classification needs at least two labels")
    if d.tfds_name and task in ("classification", "token_classification"):
        names = tasks.tfds_label_names(d.tfds_name, d.train_split, d.tfds_data_dir or None)
        # The dataset's own ClassLabel order, which its integer labels index; except where tfds_examples maps a
        # GLUE task's labels by name onto the files' order (mnli), which the spec must then name.
        remapped = fmt in GLUE_TASKS and labels is not None and names and set(names) == set(labels)
        if names and not remapped:
            labels = tuple(names)
    style = d.style or {"roberta": "roberta", "gpt2": "gpt2"}.get(family, "bert")
    return TaskSpec(task=task, format=fmt, labels=labels, pair=pair, style=style, max_len=d.max_len,
                    doc_stride=d.doc_stride, max_query_len=d.max_query_len, n_best=d.n_best,
                    max_answer_length=d.max_answer_length)


def _seq2seq_spec(config, fmt: str, family: str) -> TaskSpec:
    d, g = config.data, config.generation
    if config.task != "seq2seq":
        raise ValueError(f"config.data.format={d.format!r} holds text pairs: set --config.task=seq2seq")
    if fmt not in SEQ2SEQ_FORMATS + TEXT_TO_TEXT_FORMATS:
        raise ValueError(f"config.task='seq2seq' reads config.data.format in {SEQ2SEQ_FORMATS} (text pairs) or "
                         f"{TEXT_TO_TEXT_FORMATS} (T5's text-to-text GLUE / SQuAD), got {d.format!r}")
    if family not in TEXT_WRITING_FAMILIES:
        raise ValueError(f"config.task='seq2seq' needs a model that writes text ({TEXT_WRITING_FAMILIES}); the "
                         f"checkpoint is a {family!r} model")
    if d.max_target_len < 2:
        raise ValueError(f"config.data.max_target_len={d.max_target_len} must be >= 2 (a token and EOS)")
    common = dict(task="seq2seq", format=fmt, labels=None, pair=False, style=d.style or "bert", max_len=d.max_len,
                  max_target_len=d.max_target_len, prompt=d.prompt,
                  encoder_decoder=family in ENCODER_DECODER_FAMILIES, num_beams=g.num_beams,
                  length_penalty=g.length_penalty)
    if fmt in TEXT_TO_TEXT_FORMATS:  # the inputs and targets are T5's; the metrics the task's own
        return TaskSpec(**common, text_metrics=text_to_text.metric_names(fmt))
    for key in ("source_field", "target_field"):
        if not d[key]:
            raise ValueError(f"config.data.{key} is empty: name the source / target (parallel files: the language "
                             "suffix such as 'en' / 'de'; tsv/csv/jsonl: the column; TFDS: the feature key)")
    unknown = [m for m in d.metrics if m not in tasks.TEXT_METRICS]
    if not d.metrics or unknown:
        raise ValueError(f"config.data.metrics={tuple(d.metrics)!r}: choose one or more of {tasks.TEXT_METRICS}")
    return TaskSpec(**common, source_field=d.source_field, target_field=d.target_field,
                    text_metrics=tuple(d.metrics))


# ----------------------------------------------------------------------------------------------------------------
# Examples and features

def read_examples(spec: TaskSpec, data_config, path: str = "", *, split: str = "", labelled: bool = True,
                  limit: int = 0) -> list:
    """Examples of one split: from `path` (a task file), or from the TFDS dataset config.data.tfds_name[split].
    Bad lines are errors naming file:line (or skipped and counted with config.data.skip_bad_lines). A GLUE / SQuAD
    format with task seq2seq reads the task's examples and returns their text pairs (jaxlm.tasks.text_to_text)."""
    skip = data_config.skip_bad_lines
    text_to_text_form = spec.task == "seq2seq" and spec.format in TEXT_TO_TEXT_FORMATS
    seq2seq = spec.task == "seq2seq" and not text_to_text_form
    target = spec.target_field if labelled else None
    if not path:
        if not data_config.tfds_name:
            raise ValueError("no data file given (config.data.train_file / eval_file) and no config.data.tfds_name")
        examples, stats = tasks.tfds_examples(data_config.tfds_name, split, data_config.tfds_data_dir or None,
                                              seq2seq_fields=(spec.source_field, spec.target_field) if seq2seq
                                              else None)
    elif seq2seq and spec.format == "parallel":
        examples, stats = tasks.read_parallel(*tasks.parallel_paths(path, spec.source_field, target),
                                              skip_bad_lines=skip)
    elif seq2seq:
        examples, stats = tasks.read_seq2seq(path, _column(spec.source_field), _column(target) if target else None,
                                             header=data_config.header, format=spec.format, skip_bad_lines=skip)
    elif spec.format in GLUE_TASKS:
        examples, stats = tasks.read_glue(path, spec.format, skip_bad_lines=skip, labelled=labelled)
    elif spec.format in GENERIC_FORMATS:
        layout = text_layout(data_config)
        if not labelled:
            layout = dataclasses.replace(layout, label_column=None)
        examples, stats = tasks.read_text_classification(path, layout, skip_bad_lines=skip)
    elif spec.format in TOKEN_FORMATS:
        examples, stats = tasks.read_conll(path, scheme="iob1" if spec.format == "conll2003" else "bio",
                                           labels=spec.labels, labelled=labelled, skip_bad_lines=skip)
    else:
        examples, stats = tasks.read_squad(path, skip_bad_lines=skip)
    if stats.num_skipped:
        log.warning("%s: skipped %d bad lines %s; first: %s", stats.path, stats.num_skipped, stats.skipped,
                    stats.first_errors[:2])
    if not examples:
        raise ValueError(f"{stats.path}: no examples")
    examples = examples[:limit] if limit else examples
    return text_to_text.to_text_pairs(spec.format, examples) if text_to_text_form else examples


def make_features(spec: TaskSpec, examples: Sequence, tokenizer) -> dict[str, np.ndarray]:
    if spec.task == "seq2seq":
        return tasks.seq2seq_features(examples, tokenizer, spec.max_len, spec.max_target_len,
                                      encoder_decoder=spec.encoder_decoder, prompt=spec.prompt,
                                      decoder_start_id=spec.decoder_start_id, pad_id=spec.pad_id)
    if spec.task in ("classification", "regression"):
        return tasks.classification_features(examples, tokenizer, spec.max_len, regression=spec.task == "regression",
                                             style=spec.style)
    if spec.task == "token_classification":
        return tasks.token_classification_features(examples, tokenizer, spec.max_len, spec.labels, style=spec.style)
    return tasks.qa_features(examples, tokenizer, spec.max_len, spec.doc_stride, spec.max_query_len,
                             style=spec.style)


def device_keys(spec: TaskSpec) -> tuple[str, ...]:
    """The feature keys the jitted step reads (the rest is host-side bookkeeping)."""
    if spec.task == "seq2seq":
        return SEQ2SEQ_KEYS["encoder_decoder" if spec.encoder_decoder else "decoder_only"]
    return MODEL_INPUT_KEYS + TARGET_KEYS[spec.task]


class EpochBatches:
    """Training batches epoch after epoch, reshuffled by (seed, epoch); the short last batch of an epoch is
    padded with weight-0 rows. `get_state` / `set_state` let a checkpoint resume at the exact batch."""

    def __init__(self, features: dict, batch_size: int, keys: Sequence[str], *, seed: int = 0,
                 process_index: int = 0, process_count: int = 1):
        self.features, self.batch_size, self.keys = features, batch_size, tuple(keys)
        self.seed, self.process_index, self.process_count = seed, process_index, process_count
        self.epoch, self.batch = 0, 0
        self._it: Iterator | None = None
        self.steps_per_epoch = tasks.num_batches(tasks.num_rows(features), batch_size)

    def _start(self):
        self._it = tasks.iterate_batches(self.features, self.batch_size, shuffle=True, seed=self.seed,
                                         epoch=self.epoch, process_index=self.process_index,
                                         process_count=self.process_count)
        for _ in range(self.batch):
            next(self._it)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.batch = self.epoch + 1, 0
            self._start()
            batch = next(self._it)
        self.batch += 1
        return {k: batch[k] for k in self.keys}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def set_state(self, state: dict):
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._it = None


# ----------------------------------------------------------------------------------------------------------------
# Predict pass, predictions, metrics

def _sharded_pass(jitted, params, features: dict, keys, batch_size: int, mesh, rules, batch_sharding) -> list:
    """jitted(params, batch) over every row of `features` in global batches (this process's slice of each, padded
    with weight-0 rows), dispatched back to back, then gathered on the host: one result per batch."""
    pending = []
    for batch in tasks.iterate_batches({k: features[k] for k in keys}, batch_size,
                                       process_index=jax.process_index(), process_count=jax.process_count()):
        with shd.mesh_context(mesh, rules):
            pending.append(jitted(params, shd.host_local_to_global(batch, mesh, batch_sharding)))
    return jax.device_get(pending)


class Predictor:
    """Outputs of the task model over every feature row (sharded step, outputs gathered on each host), plus the
    mean loss over the rows' weights."""

    def __init__(self, model, spec: TaskSpec, mesh, param_shardings, batch_size: int, rules=shd.DEFAULT_RULES):
        self.task, self.mesh, self.batch_size, self.rules = spec.task, mesh, batch_size, rules
        self.keys = device_keys(spec)
        task_loss = TASK_LOSSES[spec.task]

        def predict(params, batch):
            outputs = apply_model(model, params, batch, None)
            loss, metrics = task_loss(outputs, batch)
            return outputs, loss * metrics["num_tokens"], metrics["num_tokens"]

        self.batch_sharding = shd.batch_sharding(mesh)
        self.jitted = jax.jit(predict, in_shardings=(param_shardings, self.batch_sharding),
                              out_shardings=shd.replicated(mesh))

    def __call__(self, params, features: dict) -> tuple[dict[str, np.ndarray], float]:
        n = tasks.num_rows(features)
        chunks, loss_sum, weight_sum = [], 0.0, 0.0
        for outputs, loss, weight in _sharded_pass(self.jitted, params, features, self.keys, self.batch_size,
                                                   self.mesh, self.rules, self.batch_sharding):
            chunks.append(outputs)
            loss_sum += float(loss)
            weight_sum += float(weight)
        outputs = {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}
        return outputs, loss_sum / max(weight_sum, 1e-8)


class TextGenerator:
    """The seq2seq counterpart of Predictor: the teacher-forced loss over every feature row, and each row's
    generated text (jaxlm.decoding: greedy, or beam search with spec.num_beams and spec.length_penalty, up to
    max_target_len tokens, stopping at EOS). Outputs: {'texts': [str] per row}, mean loss.

    Generation starts from prompt_inputs (the encoder input for T5, the prompt up to the separating EOS for
    GPT-2), right-padded; each batch is padded to `batch_size` rows so one program is compiled.
    """

    def __init__(self, model, spec: TaskSpec, mesh, param_shardings, batch_size: int, tokenizer,
                 rules=shd.DEFAULT_RULES):
        from jaxlm.decoding import GenerationConfig, adapter_for

        self.spec, self.mesh, self.batch_size, self.rules, self.tokenizer = spec, mesh, batch_size, rules, tokenizer
        self.keys = device_keys(spec)
        loss_fn = make_finetuning_loss("seq2seq", model)

        def loss(params, batch):
            _, metrics = loss_fn(params, batch, None)
            return metrics["loss"] * metrics["num_tokens"], metrics["num_tokens"]

        self.batch_sharding = shd.batch_sharding(mesh)
        self.jitted_loss = jax.jit(loss, in_shardings=(param_shardings, self.batch_sharding),
                                   out_shardings=shd.replicated(mesh))
        self.adapter = adapter_for(model.config)
        self.eos_id = tokenizer.eos_id
        self.generation = GenerationConfig(
            max_new_tokens=spec.max_target_len, strategy="beam" if spec.num_beams > 1 else "greedy",
            num_beams=spec.num_beams, length_penalty=spec.length_penalty, eos_id=self.eos_id, pad_id=spec.pad_id)

    def generate(self, params, features: dict) -> list[list[int]]:
        """Generated token ids per row, EOS removed."""
        from jaxlm.decoding import generate

        tokens, lengths = features["prompt_inputs"], features["prompt_lengths"]
        out = []
        for start in range(0, len(tokens), self.batch_size):
            rows = min(self.batch_size, len(tokens) - start)
            batch = np.zeros((self.batch_size, tokens.shape[1]), np.int32)
            batch[:rows] = tokens[start:start + rows]
            batch_lengths = np.ones(self.batch_size, np.int32)  # padding rows: one (ignored) token
            batch_lengths[:rows] = lengths[start:start + rows]
            mask = np.arange(tokens.shape[1])[None, :] < batch_lengths[:, None]
            with shd.mesh_context(self.mesh, self.rules):
                result = generate(self.adapter, params["backbone"], batch, mask, config=self.generation)
            new_tokens, new_lengths = jax.device_get((result.tokens, result.lengths))
            for i in range(rows):
                ids = [int(t) for t in new_tokens[i, :new_lengths[i]]]
                out.append(ids[:-1] if ids and ids[-1] == self.eos_id else ids)
        return out

    def loss(self, params, features: dict) -> float:
        """The teacher-forced loss, mean over the target tokens of every row."""
        sums = np.sum(np.asarray(_sharded_pass(self.jitted_loss, params, features, self.keys, self.batch_size,
                                               self.mesh, self.rules, self.batch_sharding), np.float64), axis=0)
        return float(sums[0] / max(sums[1], 1e-8))

    def __call__(self, params, features: dict) -> tuple[dict, float]:
        texts = [self.tokenizer.decode(ids) for ids in self.generate(params, features)]
        labelled = bool(np.any(features["weights"]))
        return {"texts": texts}, (self.loss(params, features) if labelled else float("nan"))


def make_predictor(spec: TaskSpec, model, mesh, param_shardings, batch_size: int, tokenizer):
    """Predictor (heads' outputs), or TextGenerator for seq2seq."""
    if spec.task == "seq2seq":
        return TextGenerator(model, spec, mesh, param_shardings, batch_size, tokenizer)
    return Predictor(model, spec, mesh, param_shardings, batch_size)


def predictions(spec: TaskSpec, examples: Sequence, features: dict, outputs: dict) -> list[dict]:
    """One JSON-able prediction per example."""
    if spec.task == "seq2seq":
        return [{"prediction": text} for text in outputs["texts"]]
    if spec.task == "classification":
        logits = outputs["logits"]
        probs = np.exp(logits - logits.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        return [{"label": spec.labels[int(p.argmax())],
                 "probabilities": {name: float(x) for name, x in zip(spec.labels, p)}} for p in probs]
    if spec.task == "regression":
        return [{"score": float(x)} for x in outputs["logits"]]
    if spec.task == "token_classification":
        tags = tasks.ner_word_predictions(examples, features, outputs["logits"], spec.labels)
        return [{"tokens": list(e.words), "tags": t} for e, t in zip(examples, tags)]
    nbest = tasks.squad_nbest(examples, features, outputs["start_logits"], outputs["end_logits"],
                              n_best=spec.n_best, max_answer_length=spec.max_answer_length)
    return [{"id": e.id, "answer": best[0]["text"], "probability": best[0]["probability"], "start": best[0]["start"],
             "end": best[0]["end"], "nbest": [{k: b[k] for k in ("text", "probability")} for b in best[:5]]}
            for e, best in zip(examples, nbest)]


def task_metrics(spec: TaskSpec, examples: Sequence, features: dict, outputs: dict) -> dict[str, float]:
    """The task's official dev metrics (fractions in [0, 1]; BLEU / ROUGE 0-100) from the model outputs over
    `features`."""
    if spec.task == "seq2seq" and spec.format in TEXT_TO_TEXT_FORMATS:
        return text_to_text.scores(spec.format, [e.example for e in examples], outputs["texts"])
    if spec.task == "seq2seq":
        if any(e.target is None for e in examples):
            raise ValueError("task_metrics: the examples have no targets")
        return tasks.text_metrics(spec.text_metrics, [e.target for e in examples], outputs["texts"])
    if spec.task in ("classification", "regression"):
        y_true = np.array([e.label for e in examples])
        if any(e.label is None for e in examples):
            raise ValueError("task_metrics: the examples have no labels")
        logits = outputs["logits"]
        y_pred = logits.argmax(-1) if spec.task == "classification" else logits
        names = [m for m in spec.metric_names if m in ("accuracy", "f1", "macro_f1", "matthews_corrcoef",
                                                       "pearson", "spearman")]
        if spec.task == "classification" and len(spec.labels) == 2 and "f1" not in names:
            names.append("f1")
        out = tasks.compute_metrics(names, y_true, y_pred)
        if spec.task == "regression":
            out["mse"] = float(np.mean((y_pred - y_true) ** 2))
        return out
    if spec.task == "token_classification":
        predicted = tasks.ner_word_predictions(examples, features, outputs["logits"], spec.labels)
        scores = tasks.conll_entity_scores([e.tags for e in examples], predicted)
        return {k: float(scores[k]) for k in ("f1", "precision", "recall", "accuracy")}
    predicted = tasks.squad_predictions(examples, features, outputs["start_logits"], outputs["end_logits"],
                                        n_best=spec.n_best, max_answer_length=spec.max_answer_length)
    scores = tasks.squad_scores({e.id: [a.text for a in e.answers] for e in examples}, predicted)
    return {k: float(v) for k, v in scores.items()}


class TaskEvaluator:
    """Dev-set task metrics as a `jaxlm.train.loop` eval step.

    The loop sums what the eval step returns over the batches of `eval_iter_fn()` and divides by 'weight'. Task
    metrics (F1, Matthews, Spearman, conlleval, SQuAD) are not sums over batches, so the whole predict pass runs
    inside one call: `eval_iter_fn` yields a single empty batch, and the step returns metric x N with weight N
    (N = dev examples), which the loop's averaging turns back into the metrics. They are logged, written to
    metrics.jsonl / TensorBoard and attached to the checkpoint (best-checkpoint selection) like any eval.
    """

    def __init__(self, spec: TaskSpec, predictor: Predictor, examples: Sequence, features: dict):
        self.spec, self.predictor, self.examples, self.features = spec, predictor, examples, features
        self.history: list[dict] = []

    def evaluate(self, params) -> dict[str, float]:
        outputs, loss = self.predictor(params, self.features)
        metrics = {"loss": loss, **task_metrics(self.spec, self.examples, self.features, outputs)}
        self.history.append(metrics)
        return metrics

    def __call__(self, params, batch=None) -> dict[str, float]:  # the loop's eval-step interface
        n = float(len(self.examples))
        sums = {k: v * n for k, v in self.evaluate(params).items()}
        sums["weight"] = n
        return sums

    @staticmethod
    def iter_fn():
        return iter([{}])


# ----------------------------------------------------------------------------------------------------------------
# Tokenizer and backbone of a checkpoint

def load_tokenizer(path: str, family: str):
    """A sentencepiece .model file or an HF tokenizer directory."""
    from etils import epath

    from jaxlm.convert import load_tokenizer as load_hf_tokenizer
    from jaxlm.data import Tokenizer

    if epath.Path(path).is_dir():
        tokenizer = load_hf_tokenizer(path, family)
        if tokenizer is None:
            raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json, vocab.txt, vocab.json + "
                                    "merges.txt, spiece.model)")
        return tokenizer
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"tokenizer {path} not found (a sentencepiece .model file or an HF tokenizer dir)")
    return Tokenizer(path)


def checkpoint_tokenizer_path(workdir: str, saved: dict | None) -> str:
    """The tokenizer that came with a checkpoint: WORKDIR/tokenizer.model (pretraining and fine-tuning runs),
    WORKDIR/tokenizer/ (imports), else the file the run's saved config names. Local or remote (gs://...)."""
    from jaxlm.paths import is_nonempty

    candidates = [os.path.join(workdir, "tokenizer.model"), os.path.join(workdir, "tokenizer")]
    saved = saved or {}
    candidates += [p for p in (saved.get("tokenizer_file"), (saved.get("data") or {}).get("tokenizer"))
                   if isinstance(p, str) and p]
    for path in candidates:
        if is_nonempty(path):
            return path
    raise FileNotFoundError(f"no tokenizer found with checkpoint {workdir} (tried {candidates}); pass "
                            "--config.tokenizer=<a .model file or an HF tokenizer directory>")


def save_tokenizer(tokenizer_path: str, workdir: str) -> str:
    """Copies the tokenizer into the fine-tuning workdir so the run is self-contained; returns its new path.
    Either may be local or remote (gs://...)."""
    from etils import epath

    from jaxlm.convert.tokenizers import copy_tokenizer_files
    from jaxlm.paths import absolute

    if epath.Path(tokenizer_path).is_dir():
        target = os.path.join(workdir, "tokenizer")
        if absolute(tokenizer_path) != absolute(target):
            copy_tokenizer_files(tokenizer_path, target)
        return target
    target = os.path.join(workdir, "tokenizer.model")
    if absolute(tokenizer_path) != absolute(target):
        epath.Path(target).write_bytes(epath.Path(tokenizer_path).read_bytes())
    return target


def override_model_config(model_config, model_overrides):
    """The backbone config with config.model's run-time fields applied (dropout -1 = keep)."""
    fields = {f.name for f in dataclasses.fields(model_config)}
    changes = {k: model_overrides[k] for k in ("dtype", "scan_layers", "remat_policy", "attention_impl")
               if k in fields}
    for key in ("hidden_dropout", "attention_dropout"):
        value = model_overrides[key]
        if value is not None and value >= 0:
            target = "dropout" if key == "hidden_dropout" and "dropout" in fields else key
            changes[target] = value
    return dataclasses.replace(model_config, **changes)


def dummy_batch(max_len: int) -> dict[str, np.ndarray]:
    ones = np.ones((1, max_len), np.int32)
    return {"inputs": ones, "segment_ids": ones, "positions": np.arange(max_len, dtype=np.int32)[None],
            "token_types": np.zeros_like(ones)}


def init_batch(spec: TaskSpec) -> dict[str, np.ndarray]:
    """What the task model's init is called with (shapes only matter)."""
    if spec.task == "seq2seq" and spec.encoder_decoder:
        return {"inputs": np.ones((1, spec.max_len), np.int32),
                "decoder_inputs": np.ones((1, spec.max_target_len), np.int32)}
    if spec.task == "seq2seq":
        return {"inputs": np.ones((1, spec.row_len), np.int32)}
    return dummy_batch(spec.max_len)


def check_fits(spec: TaskSpec, model_config, tokenizer):
    """Config errors before any compile: sequence longer than the position table, tokenizer larger than the
    embedding table."""
    offset = getattr(model_config, "position_offset", 0)
    table = getattr(model_config, "max_position_embeddings", None)  # T5: relative positions, no table
    if table is not None and spec.row_len + offset > table:
        what = (f"config.data.max_len + max_target_len - 1 = {spec.row_len} (a decoder-only row holds the prompt "
                "and the target)" if spec.row_len != spec.max_len else f"config.data.max_len={spec.max_len}")
        raise ValueError(f"{what} exceeds the {table - offset} positions of the model "
                         f"(max_position_embeddings={table}, offset {offset})")
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is "
                         f"{model_config.vocab_size}: config.tokenizer does not belong to this checkpoint")


# ----------------------------------------------------------------------------------------------------------------
# A fine-tuned run, loaded back

@dataclasses.dataclass
class FinetunedRun:
    workdir: str
    step: int
    config: dict  # the run's saved config (finetune_config().to_dict() + model_config, head, task_spec)
    spec: TaskSpec
    model: Any
    params: Any  # on `mesh`, sharded as in training
    tokenizer: Any
    mesh: Any
    param_shardings: Any

    def predictor(self, batch_size: int | None = None) -> Predictor | TextGenerator:
        return make_predictor(self.spec, self.model, self.mesh, self.param_shardings,
                              batch_size or self.config["train"]["eval_batch_size"], self.tokenizer)


def best_step(workdir: str, metric: str) -> int | None:
    """The step whose saved dev metrics are best (None if no checkpoint carries `metric`)."""
    import orbax.checkpoint as ocp

    from jaxlm.paths import resolved
    from jaxlm.train.checkpoint import CHECKPOINT_DIR

    mode = "min" if metric in LOWER_IS_BETTER else "max"
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, best_fn=lambda m: float(m[metric]),
                                           best_mode=mode)
    try:
        with ocp.CheckpointManager(resolved(workdir) / CHECKPOINT_DIR, options=options) as manager:
            return manager.best_step()
    except (KeyError, TypeError):
        return None


def load_finetuned(workdir: str, step: int | None = None, mesh_config: dict | None = None) -> FinetunedRun:
    """A fine-tuning run's model, params (best dev checkpoint unless `step`), tokenizer and task spec."""
    from jaxlm.convert.hf import config_from_saved
    from jaxlm.models.heads import HeadConfig, task_model
    from jaxlm.train.backbone import read_params
    from jaxlm.train.checkpoint import read_config

    saved = read_config(workdir, step)
    if saved is None or "task_spec" not in saved:
        raise ValueError(f"{workdir}: not a fine-tuning run (its checkpoint config has no task_spec)")
    spec = TaskSpec.from_dict(saved["task_spec"])
    if step is None:
        step = best_step(workdir, saved.get("best_metric") or spec.best_metric())
    params, _, step = read_params(workdir, step)
    _, model_config = config_from_saved(saved)
    model = task_model(model_config, HeadConfig(**saved["head"]))
    mesh = shd.make_mesh(**(mesh_config or {"data": -1, "fsdp": 1, "tensor": 1}))
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), **init_batch(spec)))["params"]
    param_shardings = shd.logical_to_mesh_shardings(boxed, mesh)
    params = jax.tree.map(lambda x, s: jax.make_array_from_callback(x.shape, s, lambda i: x[i]), params,
                          param_shardings)
    tokenizer = load_tokenizer(checkpoint_tokenizer_path(workdir, saved), model_config.family)
    return FinetunedRun(workdir, step, saved, spec, model, params, tokenizer, mesh, param_shardings)


def write_json(path: str, obj) -> None:
    """Process 0 writes `obj` to `path` (local or remote)."""
    from jaxlm.paths import open_text

    if jax.process_index() == 0:
        with open_text(path, "w") as f:
            json.dump(obj, f, indent=2)
