"""Sequence classification and regression: GLUE tasks (their TSV layouts or TFDS glue/<task>) and any TSV / CSV /
JSONL file with text, optional text_b and label columns; one label per example (or one score: regression).

The head reads the backbone's output the way its family's Hugging Face *ForSequenceClassification does
(ModelFamily.summary), so a fine-tuned model means what theirs means:
    pooler            BERT: the pretrained pooler (dense + tanh on [CLS], trained by NSP) -> dropout -> dense
    first_token       RoBERTa (and any BERT built with pooler=False): RobertaClassificationHead, a new dense + tanh
                      on the first token -> dropout -> dense
    last_token        GPT-2: the last non-padding token's hidden state -> dense without bias
    last_token_dense  XLNet: the last non-padding token -> dense + tanh (sequence summary) -> dropout -> dense
Outputs: {'logits': [B, num_labels]} ([B] for regression). Loss: cross-entropy, or the mean squared error for
regression (HF's loss for num_labels == 1).
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxlm.models import family_of
from jaxlm.tasks import metrics as task_metrics
from jaxlm.tasks import readers
from jaxlm.tasks.base import (
    Task,
    TaskSpec,
    ce_metrics,
    column,
    dense,
    dropout_rate,
    logged,
    normalized_format,
    record_field,
    softmax,
    weights_of,
)
from jaxlm.tasks.features import MODEL_INPUT_KEYS, classification_features

GLUE_TASKS = tuple(readers.GLUE_LAYOUTS)
GENERIC_FORMATS = ("tsv", "csv", "jsonl")
# GLUE's best-checkpoint metric where it is not accuracy: F1 for the imbalanced paraphrase tasks.
BEST_METRIC = {"cola": "matthews_corrcoef", "mrpc": "f1", "qqp": "f1", "stsb": "pearson"}


def last_token_index(segment_ids_BxL):
    """Index of each row's last non-padding token (0 for an all-padding row)."""
    positions = jnp.arange(segment_ids_BxL.shape[1])[None, :]
    return jnp.max(jnp.where(segment_ids_BxL > 0, positions, 0), axis=1)


def summarize(config, hidden_BxLxD, pooled_BxD, segment_ids_BxL, drop, deterministic):
    """The [B, D] vector a sequence-level head reads, as the backbone's family summarises a sequence."""
    kind = family_of(config).summary(config)
    if kind == "pooler":
        return drop(pooled_BxD, deterministic=deterministic)
    if kind == "first_token":
        x_BxD = drop(hidden_BxLxD[:, 0], deterministic=deterministic)
        x_BxD = jnp.tanh(dense(config, config.hidden_size, "dense", axes=("embed", "mlp"))(x_BxD))
        return drop(x_BxD, deterministic=deterministic)
    last_B = last_token_index(segment_ids_BxL)
    x_BxD = jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]
    if kind == "last_token":
        return x_BxD
    if kind == "last_token_dense":
        x_BxD = jnp.tanh(dense(config, config.hidden_size, "summary", axes=("embed", "mlp"))(x_BxD))
        return drop(x_BxD, deterministic=deterministic)
    raise ValueError(f"unknown sequence summary {kind!r} of family {config.family!r}")


class SequenceHead(nn.Module):
    """(hidden, pooled, segment_ids) -> {'logits': [B, num_labels] or [B] (regression)}."""
    config: object
    num_labels: int
    regression: bool = False
    dropout: float | None = None

    @nn.compact
    def __call__(self, hidden_BxLxD, pooled_BxD, segment_ids_BxL, *, deterministic=True):
        c = self.config
        drop = nn.Dropout(dropout_rate(c, self.dropout))
        x_BxD = summarize(c, hidden_BxLxD, pooled_BxD, segment_ids_BxL, drop, deterministic)
        kind = family_of(c).summary(c)
        if kind == "last_token":
            logits = dense(c, self.num_labels, "score", use_bias=False)(x_BxD)
        elif kind == "first_token":
            logits = dense(c, self.num_labels, "out_proj", axes=("mlp", None))(x_BxD)
        elif kind == "last_token_dense":
            logits = dense(c, self.num_labels, "logits_proj", axes=("mlp", None))(x_BxD)
        else:
            logits = dense(c, self.num_labels, "classifier")(x_BxD)
        logits = logits.astype(jnp.float32)
        return {"logits": logits[:, 0] if self.regression else logits}


def text_layout(data) -> readers.TextLayout:
    """The generic tsv/csv/jsonl layout described by config.data."""
    labels = tuple(str(x) for x in data.labels) if data.labels else None
    return readers.TextLayout(column(data.text_column), column(data.label_column), column(data.text_b_column),
                              labels=labels, regression=labels is None, header=data.header, format=data.format)


class ClassificationTask(Task):
    names: ClassVar[tuple[str, ...]] = ("classification", "regression")
    formats: ClassVar[tuple[str, ...]] = GLUE_TASKS + GENERIC_FORMATS
    target_keys: ClassVar[tuple[str, ...]] = ("labels", "example_weights")
    kinds: ClassVar[tuple[str, ...]] = ("encoder", "decoder")

    def spec(self, config, family):
        d, fmt = config.data, normalized_format(config.data.format)
        if fmt in GLUE_TASKS:
            layout = readers.glue_layout(fmt)
            task = "regression" if layout.regression else "classification"
            labels, pair = (None if layout.regression else tuple(layout.labels)), layout.text_b_column is not None
        else:
            labels = tuple(str(x) for x in d.labels) if d.labels else None
            task = "classification" if labels else "regression"
            pair = bool(d.text_b_column)
        if config.task != task:
            raise ValueError(f"config.task={config.task!r} does not fit config.data.format={d.format!r}, which is a "
                             f"{task} task (set --config.task={task})")
        if task == "classification" and (not labels or len(labels) < 2):
            raise ValueError(f"config.data.labels={d.labels!r}: classification needs at least two labels")
        if d.tfds_name and task == "classification":
            names = readers.tfds_label_names(d.tfds_name, d.train_split, d.tfds_data_dir or None)
            # The dataset's own ClassLabel order, which its integer labels index; except where tfds_examples maps a
            # GLUE task's labels by name onto the files' order (mnli), which the spec must then name.
            remapped = fmt in GLUE_TASKS and labels is not None and names and set(names) == set(labels)
            if names and not remapped:
                labels = tuple(names)
        self.check_family(task, family)
        return TaskSpec(task=task, format=fmt, labels=labels, pair=pair,
                        style=d.style or family.text_style, max_len=d.max_len,
                        head_dropout=None if config.head.dropout < 0 else config.head.dropout)

    def metric_names(self, spec):
        if spec.format in task_metrics.GLUE_METRICS:
            return task_metrics.GLUE_METRICS[spec.format]
        return ("accuracy", "macro_f1") if spec.task == "classification" else ("pearson", "spearman")

    def best_metric(self, spec, override=""):
        return override or BEST_METRIC.get(spec.format, "accuracy" if spec.task == "classification" else "pearson")

    def read_file(self, spec, data, path, *, labelled):
        if spec.format in GLUE_TASKS:
            return logged(readers.read_glue(path, spec.format, skip_bad_lines=data.skip_bad_lines, labelled=labelled))
        layout = text_layout(data)
        if not labelled:
            layout = dataclasses.replace(layout, label_column=None)
        return logged(readers.read_text_classification(path, layout, skip_bad_lines=data.skip_bad_lines))

    def examples_from_records(self, spec, records, source):
        out = []
        for number, r in enumerate(records, 1):
            need = record_field(spec, r, f"{source}:{number}")
            out.append(readers.TextExample(f"{source}:{number}", need("text").strip(),
                                           need("text_b").strip() if spec.pair else None))
        return out

    def features(self, spec, examples, tokenizer):
        return classification_features(examples, tokenizer, spec.max_len, regression=spec.task == "regression",
                                       style=spec.style)

    def length_bucket_keys(self, spec):
        return MODEL_INPUT_KEYS  # the head reads the first / last real token or the pooler; labels are per row

    def head(self, spec, model_config):
        return SequenceHead(model_config, spec.num_labels, regression=spec.task == "regression",
                            dropout=spec.head_dropout)

    def loss(self, spec, outputs, batch):
        labels = batch["labels"]
        w = weights_of(batch, labels.shape)
        if spec.task == "classification":
            loss, acc, n = ce_metrics(outputs["logits"], labels, w)
            return loss, {"loss": loss, "accuracy": acc, "num_tokens": n}
        predictions, labels = outputs["logits"].astype(jnp.float32), labels.astype(jnp.float32)
        n = jnp.sum(w)
        loss = jnp.sum(jnp.where(w != 0, jnp.square(predictions - labels) * w, 0.0)) / jnp.maximum(n, 1e-8)
        return loss, {"loss": loss, "mse": loss, "num_tokens": n}

    def predictions(self, spec, examples, features, outputs):
        if spec.task == "regression":
            return [{"score": float(x)} for x in outputs["logits"]]
        return [{"label": spec.labels[int(p.argmax())],
                 "probabilities": {name: float(x) for name, x in zip(spec.labels, p)}}
                for p in softmax(outputs["logits"])]

    def metrics(self, spec, examples, features, outputs):
        if any(e.label is None for e in examples):
            raise ValueError("task metrics: the examples have no labels")
        y_true = np.array([e.label for e in examples])
        logits = outputs["logits"]
        y_pred = logits.argmax(-1) if spec.task == "classification" else logits
        names = [m for m in self.metric_names(spec) if m in ("accuracy", "f1", "macro_f1", "matthews_corrcoef",
                                                             "pearson", "spearman")]
        if spec.task == "classification" and len(spec.labels) == 2 and "f1" not in names:
            names.append("f1")
        out = task_metrics.compute_metrics(names, y_true, y_pred)
        if spec.task == "regression":
            out["mse"] = float(np.mean((y_pred - y_true) ** 2))
        return out

    def head_train_flops(self, spec, model_config):
        d = model_config.hidden_size
        summary = family_of(model_config).summary(model_config)
        extra = d * d if summary in ("first_token", "last_token_dense") else 0
        return 6.0 * (extra + d * spec.num_labels)
