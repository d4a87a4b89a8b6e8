"""Semantic textual similarity with sentence embeddings (a bi-encoder, unlike the cross-encoder `regression` task
on the same STS-B files): each sentence is embedded alone and the pair is scored by the cosine of the two.

Loss: sentence-transformers' CosineSimilarityLoss, the mean squared error between cosine(a, b) and the gold score
divided by config.data.score_max (STS-B: 0-5 -> 0-1). Dev metrics: Spearman and Pearson correlation of the cosine
with the gold score, as sentence-transformers' EmbeddingSimilarityEvaluator reports them (spearman_cosine is the
number SBERT-style papers print x 100). With config.train.num_epochs=0 the run only scores the initial model:
the zero-shot STS-B of a pretrained or imported encoder.
"""
from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding as shd
from jaxlm.models import family_of
from jaxlm.tasks import metrics as task_metrics
from jaxlm.tasks import readers
from jaxlm.tasks.base import TaskSpec, column, logged, normalized_format, record_field, weights_of
from jaxlm.tasks.embedding import (
    EmbeddingTask,
    Encoder,
    check_embedding_spec,
    cosine,
    embed_batch,
    l2_normalize,
    prefixed,
    rows_of,
    text_rows,
)
from jaxlm.tasks.features import MODEL_INPUT_KEYS


class SimilarityPredictor:
    """predictor(params, features) -> ({'cosine': [N]}, the mean CosineSimilarityLoss over labelled rows)."""

    def __init__(self, spec: TaskSpec, model, mesh, param_shardings, batch_size: int, rules=shd.DEFAULT_RULES):
        self.spec = spec
        self.encode = Encoder(model, mesh, param_shardings, batch_size, rules)

    def __call__(self, params, features):
        cos = cosine(self.encode(params, rows_of(features, "a")), self.encode(params, rows_of(features, "b")))
        w = features["example_weights"]
        err = (cos - features["labels"] / self.spec.score_max) ** 2
        return {"cosine": cos}, float(np.sum(err * w) / max(np.sum(w), 1e-8))


class SimilarityTask(EmbeddingTask):
    names: ClassVar[tuple[str, ...]] = ("similarity",)
    formats: ClassVar[tuple[str, ...]] = ("stsb", "sts")

    def spec(self, config, family):
        d, e = config.data, config.embedding
        self.check_family(config.task, family)
        fmt = normalized_format(d.format)
        spec = TaskSpec(task="similarity", format=fmt, labels=None, pair=True, style=d.style or family.text_style,
                        max_len=d.max_len, head_dropout=None, pooling=e.pooling, embedding_dim=e.dim,
                        dense_activation=e.activation, normalize=e.normalize, score_max=d.score_max)
        check_embedding_spec(spec)
        if spec.score_max <= 0:
            raise ValueError(f"config.data.score_max={spec.score_max}: the largest gold score, > 0 (STS-B: 5)")
        return spec

    def metric_names(self, spec):
        return ("spearman_cosine", "pearson_cosine")

    def read_file(self, spec, data, path, *, labelled):
        if spec.format == "stsb":
            return logged(readers.read_glue(path, "stsb", skip_bad_lines=data.skip_bad_lines, labelled=labelled))
        layout = readers.TextLayout(column(data.text_column), column(data.label_column) if labelled else None,
                                    column(data.text_b_column), labels=None, regression=True, header=data.header)
        return logged(readers.read_text_classification(path, layout, skip_bad_lines=data.skip_bad_lines))

    def examples_from_records(self, spec, records, source):
        out = []
        for number, r in enumerate(records, 1):
            need = record_field(spec, r, f"{source}:{number}")
            out.append(readers.TextExample(f"{source}:{number}", need("text").strip(), need("text_b").strip()))
        return out

    def features(self, spec, examples, tokenizer):
        """a_* / b_* rows [N, max_len] (each sentence alone), labels [N] (the gold score), example_weights."""
        features = prefixed(text_rows([e.text_a for e in examples], tokenizer, spec.max_len, spec.style), "a")
        features.update(prefixed(text_rows([e.text_b or "" for e in examples], tokenizer, spec.max_len, spec.style),
                                 "b"))
        features["labels"] = np.array([0.0 if e.label is None else e.label for e in examples], np.float32)
        features["example_weights"] = np.array([0.0 if e.label is None else 1.0 for e in examples], np.float32)
        features["example_index"] = np.arange(len(examples), dtype=np.int32)
        return features

    def device_keys(self, spec):
        return tuple(f"{p}_{k}" for p in ("a", "b") for k in MODEL_INPUT_KEYS) + ("labels", "example_weights")

    def loss_fn(self, spec, model):
        def loss_fn(params, batch, rng):
            rngs = (None, None) if rng is None else tuple(jax.random.split(rng))
            a, b = (l2_normalize(embed_batch(model, params, rows_of(batch, p), r)) for p, r in zip("ab", rngs))
            cos = jnp.sum(a * b, axis=-1)
            w = weights_of(batch, cos.shape)
            n = jnp.maximum(jnp.sum(w), 1e-8)
            loss = jnp.sum(jnp.square(cos - batch["labels"] / spec.score_max) * w) / n
            return loss, {"loss": loss, "mse": loss, "num_tokens": jnp.sum(w)}
        return loss_fn

    def predictor(self, spec, model, mesh, param_shardings, batch_size, tokenizer, rules=shd.DEFAULT_RULES):
        return SimilarityPredictor(spec, model, mesh, param_shardings, batch_size, rules)

    def predictions(self, spec, examples, features, outputs):
        return [{"cosine": float(c), "score": float(c) * spec.score_max} for c in outputs["cosine"]]

    def metrics(self, spec, examples, features, outputs):
        if any(e.label is None for e in examples):
            raise ValueError("similarity metrics: the examples have no gold scores")
        gold = np.array([e.label for e in examples])
        return {"spearman_cosine": task_metrics.spearman(gold, outputs["cosine"]),
                "pearson_cosine": task_metrics.pearson(gold, outputs["cosine"])}

    def train_flops_per_example(self, spec, model_config):
        return 2 * family_of(model_config).backbone_train_flops(model_config, tokens=spec.max_len)

