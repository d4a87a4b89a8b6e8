"""Token classification (NER): CoNLL column files (CoNLL-2003's IOB1 tags -> BIO, or BIO files with their tag list
in config.data.labels), one label per word on its first sub-token; entity F1 as conlleval counts it.

Head: hidden -> dropout -> dense per token (HF's *ForTokenClassification); outputs {'logits': [B, L, num_labels]}.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.tasks import metrics as task_metrics
from jaxlm.tasks import readers
from jaxlm.tasks.base import (
    Task,
    TaskSpec,
    ce_metrics,
    dense,
    dropout_rate,
    logged,
    normalized_format,
    record_field,
    weights_of,
)
from jaxlm.tasks.features import MODEL_INPUT_KEYS, token_classification_features
from jaxlm.tasks.postprocess import ner_word_predictions

FORMATS = ("conll2003", "conll")


class TokenHead(nn.Module):
    config: object
    num_labels: int
    dropout: float | None = None

    @nn.compact
    def __call__(self, hidden_BxLxD, pooled_BxD, segment_ids_BxL, *, deterministic=True):
        x = nn.Dropout(dropout_rate(self.config, self.dropout))(hidden_BxLxD, deterministic=deterministic)
        return {"logits": dense(self.config, self.num_labels, "classifier")(x).astype(jnp.float32)}


class TokenClassificationTask(Task):
    names: ClassVar[tuple[str, ...]] = ("token_classification",)
    formats: ClassVar[tuple[str, ...]] = FORMATS
    target_keys: ClassVar[tuple[str, ...]] = ("labels", "label_weights")

    def spec(self, config, family):
        d, fmt = config.data, normalized_format(config.data.format)
        labels = readers.CONLL2003_BIO_LABELS if fmt == "conll2003" else tuple(str(x) for x in d.labels)
        if d.tfds_name:
            labels = tuple(readers.tfds_label_names(d.tfds_name, d.train_split, d.tfds_data_dir or None) or labels)
        self.check_family(config.task, family)
        return TaskSpec(task="token_classification", format=fmt, labels=labels, pair=False,
                        style=d.style or family.text_style, max_len=d.max_len,
                        head_dropout=None if config.head.dropout < 0 else config.head.dropout)

    def metric_names(self, spec):
        return ("f1", "precision", "recall")

    def read_file(self, spec, data, path, *, labelled):
        return logged(readers.read_conll(path, scheme="iob1" if spec.format == "conll2003" else "bio",
                                         labels=spec.labels, labelled=labelled, skip_bad_lines=data.skip_bad_lines))

    def examples_from_records(self, spec, records, source):
        out = []
        for number, r in enumerate(records, 1):
            where = f"{source}:{number}"
            need = record_field(spec, r, where)
            words = r.get("tokens") if isinstance(r, dict) and "tokens" in r else need("text").split()
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
                raise readers.BadInputError(f"{where}: 'tokens' must be a non-empty list of non-empty strings")
            out.append(readers.TokenExample(where, tuple(words)))
        return out

    def features(self, spec, examples, tokenizer):
        return token_classification_features(examples, tokenizer, spec.max_len, spec.labels, style=spec.style)

    def length_bucket_keys(self, spec):
        return MODEL_INPUT_KEYS + ("labels", "label_weights")  # padding positions carry label weight 0

    def head(self, spec, model_config):
        return TokenHead(model_config, spec.num_labels, dropout=spec.head_dropout)

    def loss(self, spec, outputs, batch):
        labels = batch["labels"]
        loss, acc, n = ce_metrics(outputs["logits"], labels, weights_of(batch, labels.shape, "label_weights"))
        return loss, {"loss": loss, "accuracy": acc, "num_tokens": n}

    def predictions(self, spec, examples, features, outputs):
        tags = ner_word_predictions(examples, features, outputs["logits"], spec.labels)
        return [{"tokens": list(e.words), "tags": t} for e, t in zip(examples, tags)]

    def metrics(self, spec, examples, features, outputs):
        predicted = ner_word_predictions(examples, features, outputs["logits"], spec.labels)
        scores = task_metrics.conll_entity_scores([e.tags for e in examples], predicted)
        return {k: float(scores[k]) for k in ("f1", "precision", "recall", "accuracy")}

    def head_train_flops(self, spec: TaskSpec, model_config):
        return 6.0 * model_config.hidden_size * spec.num_labels * spec.max_len
