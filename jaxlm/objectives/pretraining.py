"""Pretraining losses for each model family, all behind one interface:

    loss_fn(params, batch, rng) -> (loss, metrics)

`train` knows objectives only through this function; adding an objective is adding a loss here and a data
transform in jaxlm.data, never a new training loop. Batch keys are documented in jaxlm/data.
"""
import dataclasses
from typing import Callable

import jax.numpy as jnp

from jaxlm.objectives import losses

OBJECTIVES = ("mlm", "mlm_nsp", "clm", "span_corruption")


@dataclasses.dataclass(frozen=True)
class LossConfig:
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    # CLM: project onto the vocabulary in chunks of this many tokens so [B,L,V] logits never exist at once
    # (0 = the plain full-logits loss). A large lever for small models, whose step the vocab projection dominates.
    logits_chunk_size: int = 0


def _ce_mean(logits, targets, weights, config: LossConfig):
    loss_sum, z_sum, weight_sum = losses.cross_entropy_with_logits(
        logits, targets, weights, label_smoothing=config.label_smoothing, z_loss=config.z_loss)
    correct, _ = losses.weighted_accuracy(logits, targets, weights)
    denom = jnp.maximum(weight_sum, 1e-8)
    return (loss_sum + z_sum) / denom, loss_sum / denom, correct / denom, weight_sum


def make_mlm_loss(model, *, with_nsp: bool, config: LossConfig = LossConfig()) -> Callable:
    """BERT / RoBERTa: MLM on the masked positions only (+ NSP on [CLS]); loss = mean MLM CE + mean NSP CE."""

    def loss_fn(params, batch, rng):
        out = model.apply(
            {"params": params}, batch["inputs"], segment_ids=batch.get("segment_ids"),
            token_types=batch.get("token_types"), positions=batch.get("positions"),
            masked_positions=batch["masked_positions"], deterministic=rng is None,
            rngs=None if rng is None else {"dropout": rng})
        loss, mlm_loss, mlm_acc, num_masked = _ce_mean(
            out["mlm_logits"], batch["masked_targets"], batch["masked_weights"], config)
        metrics = {"mlm_loss": mlm_loss, "mlm_accuracy": mlm_acc, "mlm_perplexity": jnp.exp(mlm_loss),
                   "num_tokens": num_masked}
        if with_nsp:
            real_rows = batch["segment_ids"][:, 0] > 0 if "segment_ids" in batch else batch["inputs"][:, 0] >= 0
            nsp_weights = real_rows.astype(jnp.float32)  # all-padding rows (eval's last batch) count 0
            nsp_loss, _, nsp_acc, _ = _ce_mean(out["nsp_logits"], batch["nsp_labels"], nsp_weights,
                                               LossConfig())
            loss = loss + nsp_loss
            metrics.update(nsp_loss=nsp_loss, nsp_accuracy=nsp_acc)
        metrics["loss"] = loss
        metrics["accuracy"] = mlm_acc
        return loss, metrics

    return loss_fn


def make_clm_loss(model, config: LossConfig = LossConfig()) -> Callable:
    """GPT-2: next-token CE over `targets` weighted by `weights` (0 on padding and document ends)."""

    def loss_fn(params, batch, rng):
        kwargs = dict(segment_ids=batch.get("segment_ids"), positions=batch.get("positions"),
                      deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})
        if config.logits_chunk_size and not config.label_smoothing and not config.z_loss:
            hidden = model.apply({"params": params}, batch["inputs"], return_hidden=True, **kwargs)
            embedding = params["token_embeddings"]["embedding"]
            loss_sum, weight_sum, correct = losses.chunked_cross_entropy(
                hidden, embedding, batch["targets"], batch["weights"], chunk_size=config.logits_chunk_size)
            denom = jnp.maximum(weight_sum, 1e-8)
            loss, acc = loss_sum / denom, correct / denom
            ce = loss
        else:
            logits = model.apply({"params": params}, batch["inputs"], **kwargs)
            loss, ce, acc, weight_sum = _ce_mean(logits, batch["targets"], batch["weights"], config)
        return loss, {"loss": loss, "accuracy": acc, "perplexity": jnp.exp(ce), "num_tokens": weight_sum}

    return loss_fn


def make_seq2seq_loss(model, config: LossConfig = LossConfig()) -> Callable:
    """Encoder-decoder (T5): CE of the decoder's predictions of `targets` given `inputs` (encoder) and
    `decoder_inputs` (targets shifted right), weighted by `weights`. Span corruption and seq2seq fine-tuning
    share it. Optional keys: segment_ids (encoder, 0 = padding), decoder_segment_ids, positions, decoder_positions.
    """

    def loss_fn(params, batch, rng):
        kwargs = dict(encoder_segment_ids=batch.get("segment_ids"),
                      decoder_segment_ids=batch.get("decoder_segment_ids"),
                      encoder_positions=batch.get("positions"), decoder_positions=batch.get("decoder_positions"),
                      deterministic=rng is None, rngs=None if rng is None else {"dropout": rng})
        if config.logits_chunk_size and not config.label_smoothing and not config.z_loss:
            hidden = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"], return_hidden=True,
                                 **kwargs)
            loss_sum, weight_sum, correct = losses.chunked_cross_entropy(
                hidden, model.output_embedding(params), batch["targets"], batch["weights"],
                chunk_size=config.logits_chunk_size)
            denom = jnp.maximum(weight_sum, 1e-8)
            loss, acc = loss_sum / denom, correct / denom
            ce = loss
        else:
            logits = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"], **kwargs)
            loss, ce, acc, weight_sum = _ce_mean(logits, batch["targets"], batch["weights"], config)
        return loss, {"loss": loss, "accuracy": acc, "perplexity": jnp.exp(ce), "num_tokens": weight_sum}

    return loss_fn


def make_pretraining_loss(objective: str, model, config: LossConfig = LossConfig()) -> Callable:
    if objective == "clm":
        return make_clm_loss(model, config)
    if objective == "span_corruption":
        if not hasattr(model, "encode"):
            raise ValueError(f"objective 'span_corruption' needs an encoder-decoder (model.family 't5' or 't5_v1_1'),"
                             f" got {type(model).__name__}")
        return make_seq2seq_loss(model, config)
    if objective in ("mlm", "mlm_nsp"):
        if objective == "mlm_nsp" and not model.config.nsp_head:
            raise ValueError("objective 'mlm_nsp' needs a model with nsp_head=True (RoBERTa configs have none)")
        return make_mlm_loss(model, with_nsp=objective == "mlm_nsp", config=config)
    raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
