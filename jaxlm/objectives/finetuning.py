"""Fine-tuning losses, behind the same interface as pretraining: loss_fn(params, batch, rng) -> (loss, metrics).

The model is a jaxlm.models.heads.TaskModel. Batch keys (fixed-shape numpy from jaxlm.tasks.features):
- every task: `inputs`, `segment_ids`, `token_types` [B,L]; `positions` optional.
- classification: `labels` [B] int32, `example_weights` [B] float32 (0 for padding rows).
- regression: `labels` [B] float32, `example_weights` [B].
- token_classification: `labels` [B,L] int32, `label_weights` [B,L] (1 on each word's first sub-token only).
- question_answering: `start_positions`, `end_positions` [B] int32, `example_weights` [B].
- seq2seq (a TextToTextModel): the pretraining batch of the backbone (jaxlm.tasks.seq2seq_features), and its
  pretraining loss: T5's encoder-decoder CE, GPT-2's CLM CE weighted onto the target tokens.

Losses are weighted means (padding rows weigh 0), `num_tokens` is the weight sum, so microbatches and eval
batches combine exactly (see jaxlm.train.step). rng None = deterministic (no dropout), for eval.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from jaxlm.objectives import losses
from jaxlm.objectives.pretraining import LossConfig, make_clm_loss, make_seq2seq_loss

TASKS = ("classification", "regression", "token_classification", "question_answering", "seq2seq")
INPUT_KEYS = ("segment_ids", "token_types", "positions")
MODEL_INPUT_KEYS = ("inputs",) + INPUT_KEYS
# The batch keys each task's loss reads (everything else in a feature set is host-side bookkeeping).
TARGET_KEYS = {
    "classification": ("labels", "example_weights"),
    "regression": ("labels", "example_weights"),
    "token_classification": ("labels", "label_weights"),
    "question_answering": ("start_positions", "end_positions", "example_weights"),
}
# seq2seq batches: what the backbone's pretraining loss reads, by architecture.
SEQ2SEQ_KEYS = {
    "encoder_decoder": ("inputs", "segment_ids", "positions", "decoder_inputs", "targets", "weights",
                        "decoder_segment_ids", "decoder_positions"),
    "decoder_only": ("inputs", "targets", "weights", "segment_ids", "positions"),
}


def apply_model(model, params, batch, rng):
    """The task model's outputs dict on a batch (dropout on when rng is given)."""
    return model.apply({"params": params}, batch["inputs"], **{k: batch.get(k) for k in INPUT_KEYS},
                       deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})


def _weights(batch, shape, key="example_weights"):
    w = batch.get(key)
    return jnp.ones(shape, jnp.float32) if w is None else w.astype(jnp.float32)


def _ce(logits, labels, weights):
    loss_sum, _, weight_sum = losses.cross_entropy_with_logits(logits, labels, weights)
    correct, _ = losses.weighted_accuracy(logits, labels, weights)
    denom = jnp.maximum(weight_sum, 1e-8)
    return loss_sum / denom, correct / denom, weight_sum


def classification_loss(outputs, batch):
    """Mean cross-entropy over weighted examples; metrics: accuracy."""
    labels = batch["labels"]
    loss, acc, n = _ce(outputs["logits"], labels, _weights(batch, labels.shape))
    return loss, {"loss": loss, "accuracy": acc, "num_tokens": n}


def regression_loss(outputs, batch):
    """Mean squared error over weighted examples (HF's loss for num_labels == 1); metrics: mse."""
    predictions = outputs["logits"].astype(jnp.float32)
    labels = batch["labels"].astype(jnp.float32)
    w = _weights(batch, labels.shape)
    n = jnp.sum(w)
    loss = jnp.sum(jnp.where(w != 0, jnp.square(predictions - labels) * w, 0.0)) / jnp.maximum(n, 1e-8)
    return loss, {"loss": loss, "mse": loss, "num_tokens": n}


def token_classification_loss(outputs, batch):
    """Mean cross-entropy over labelled tokens (weight 0 on padding, specials and non-first sub-tokens)."""
    labels = batch["labels"]
    loss, acc, n = _ce(outputs["logits"], labels, _weights(batch, labels.shape, "label_weights"))
    return loss, {"loss": loss, "accuracy": acc, "num_tokens": n}


def question_answering_loss(outputs, batch):
    """(CE(start) + CE(end)) / 2 over weighted features, as BERT's run_squad.py; accuracy = both ends exact."""
    start, end = batch["start_positions"], batch["end_positions"]
    w = _weights(batch, start.shape)
    start_loss, start_acc, n = _ce(outputs["start_logits"], start, w)
    end_loss, end_acc, _ = _ce(outputs["end_logits"], end, w)
    both = ((jnp.argmax(outputs["start_logits"], -1) == start) & (jnp.argmax(outputs["end_logits"], -1) == end))
    exact = jnp.sum(jnp.where(both & (w != 0), w, 0.0)) / jnp.maximum(n, 1e-8)
    loss = (start_loss + end_loss) / 2
    return loss, {"loss": loss, "start_accuracy": start_acc, "end_accuracy": end_acc, "accuracy": exact,
                  "num_tokens": n}


TASK_LOSSES = {
    "classification": classification_loss,
    "regression": regression_loss,
    "token_classification": token_classification_loss,
    "question_answering": question_answering_loss,
}


def make_seq2seq_finetuning_loss(model, config: LossConfig = LossConfig()) -> Callable:
    """loss_fn over a TextToTextModel's params ({'backbone': ...}): the backbone's own pretraining loss."""
    from jaxlm.models import build_model

    backbone = build_model(model.config)
    inner = make_seq2seq_loss(backbone, config) if model.encoder_decoder else make_clm_loss(backbone, config)

    def loss_fn(params, batch, rng):
        return inner(params["backbone"], batch, rng)

    return loss_fn


def make_finetuning_loss(task: str, model) -> Callable:
    """loss_fn(params, batch, rng) -> (loss, metrics) for `task` on a TaskModel (TextToTextModel for seq2seq)."""
    if task == "seq2seq":
        return make_seq2seq_finetuning_loss(model)
    if task not in TASK_LOSSES:
        raise ValueError(f"unknown fine-tuning task {task!r}; choose one of {TASKS}")
    task_loss = TASK_LOSSES[task]

    def loss_fn(params, batch, rng):
        return task_loss(apply_model(model, params, batch, rng), batch)

    return loss_fn


def predict_fn(model) -> Callable:
    """predict(params, batch) -> the model's outputs dict (deterministic), for jit + a host-side postprocess."""
    def predict(params, batch):
        return jax.tree.map(lambda x: x.astype(jnp.float32), apply_model(model, params, batch, None))
    return predict
