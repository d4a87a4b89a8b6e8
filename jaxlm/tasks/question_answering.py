"""Extractive QA (SQuAD v1.1): question + a window of the context per row (windows config.data.doc_stride tokens
apart), start / end logits per token, answers mapped back to the context's characters; EM / F1 as the official
script computes them.

Head: hidden -> dense(2) -> start / end logits (HF's *ForQuestionAnswering); outputs {'start_logits',
'end_logits'}: [B, L]. Loss: (CE(start) + CE(end)) / 2, as BERT's run_squad.py.
"""
from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.tasks import metrics as task_metrics
from jaxlm.tasks import readers
from jaxlm.tasks.base import Task, TaskSpec, ce_metrics, dense, logged, record_field, weights_of
from jaxlm.tasks.features import qa_features
from jaxlm.tasks.postprocess import squad_nbest, squad_predictions


class SpanHead(nn.Module):
    config: object

    @nn.compact
    def __call__(self, hidden_BxLxD, pooled_BxD, segment_ids_BxL, *, deterministic=True):
        logits_BxLx2 = dense(self.config, 2, "qa_outputs")(hidden_BxLxD).astype(jnp.float32)
        return {"start_logits": logits_BxLx2[..., 0], "end_logits": logits_BxLx2[..., 1]}


class QuestionAnsweringTask(Task):
    names: ClassVar[tuple[str, ...]] = ("question_answering",)
    formats: ClassVar[tuple[str, ...]] = ("squad",)
    target_keys: ClassVar[tuple[str, ...]] = ("start_positions", "end_positions", "example_weights")

    def spec(self, config, family):
        d = config.data
        self.check_family(config.task, family)
        return TaskSpec(task="question_answering", format="squad", labels=None, pair=True,
                        style=d.style or family.text_style, max_len=d.max_len,
                        head_dropout=None if config.head.dropout < 0 else config.head.dropout,
                        doc_stride=d.doc_stride, max_query_len=d.max_query_len, n_best=d.n_best,
                        max_answer_length=d.max_answer_length)

    def metric_names(self, spec):
        return ("exact_match", "f1")

    def best_metric(self, spec, override=""):
        return override or "f1"

    def read_file(self, spec, data, path, *, labelled):
        return logged(readers.read_squad(path, skip_bad_lines=data.skip_bad_lines))

    def examples_from_records(self, spec, records, source):
        out = []
        for number, r in enumerate(records, 1):
            where = f"{source}:{number}"
            need = record_field(spec, r, where)
            out.append(readers.QAExample(str(r.get("id", where)), need("question"), need("context")))
        return out

    def features(self, spec, examples, tokenizer):
        return qa_features(examples, tokenizer, spec.max_len, spec.doc_stride, spec.max_query_len, style=spec.style)

    # length_bucket_keys: None (full rows). The start / end cross-entropy runs over every position of the row,
    # padding included (as BERT's run_squad), so a shorter row would change the loss; and the context windows fill
    # max_len by construction except each document's last.

    def head(self, spec, model_config):
        return SpanHead(model_config)

    def loss(self, spec, outputs, batch):
        start, end = batch["start_positions"], batch["end_positions"]
        w = weights_of(batch, start.shape)
        start_loss, start_acc, n = ce_metrics(outputs["start_logits"], start, w)
        end_loss, end_acc, _ = ce_metrics(outputs["end_logits"], end, w)
        both = ((jnp.argmax(outputs["start_logits"], -1) == start) & (jnp.argmax(outputs["end_logits"], -1) == end))
        exact = jnp.sum(jnp.where(both & (w != 0), w, 0.0)) / jnp.maximum(n, 1e-8)
        loss = (start_loss + end_loss) / 2
        return loss, {"loss": loss, "start_accuracy": start_acc, "end_accuracy": end_acc, "accuracy": exact,
                      "num_tokens": n}

    def predictions(self, spec, examples, features, outputs):
        nbest = squad_nbest(examples, features, outputs["start_logits"], outputs["end_logits"], n_best=spec.n_best,
                            max_answer_length=spec.max_answer_length)
        return [{"id": e.id, "answer": best[0]["text"], "probability": best[0]["probability"],
                 "start": best[0]["start"], "end": best[0]["end"],
                 "nbest": [{k: b[k] for k in ("text", "probability")} for b in best[:5]]}
                for e, best in zip(examples, nbest)]

    def metrics(self, spec, examples, features, outputs):
        predicted = squad_predictions(examples, features, outputs["start_logits"], outputs["end_logits"],
                                      n_best=spec.n_best, max_answer_length=spec.max_answer_length)
        scores = task_metrics.squad_scores({e.id: [a.text for a in e.answers] for e in examples}, predicted)
        return {k: float(v) for k, v in scores.items()}

    def head_train_flops(self, spec: TaskSpec, model_config):
        return 6.0 * model_config.hidden_size * 2 * spec.max_len
