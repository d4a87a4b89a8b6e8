"""Task heads over a pretrained backbone: sequence classification / regression, token classification, extractive QA;
and text-to-text fine-tuning, where the pretrained LM's own output layer is the head (TextToTextModel).

Every task model holds the backbone under `backbone` and the new layers under `head`:

    {'backbone': <BertModel params, exactly BertForPreTraining's ['bert'] subtree (or GPT-2's whole tree)>,
     'head': {...}}

so fine-tuning from a pretraining checkpoint is a re-keying (`jaxlm.train.backbone.restore_backbone`). The head
layers follow Hugging Face's (Bert/Roberta/GPT2)For* classes, so a fine-tuned model means what theirs means:

- BERT classification: the backbone's pooler (dense + tanh on [CLS], trained by NSP) -> dropout -> dense.
- RoBERTa (and any BERT config built with `pooler=False`): RobertaClassificationHead, a new dense + tanh on
  the first token -> dropout -> dense (the MLM checkpoint has no pooler to reuse).
- GPT-2 classification: the last non-padding token's hidden state -> dense (no bias), as GPT2ForSequenceClassification.
- Token classification: hidden -> dropout -> dense per token. QA: hidden -> dense(2) -> start / end logits.

Every model returns a dict: {'logits'} ([B, num_labels], [B] squeezed for regression, or [B, L, num_labels]),
or {'start_logits', 'end_logits'} ([B, L]) for QA.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from jaxlm.models.bert import BertConfig, BertModel
from jaxlm.models.common import to_dtype
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.t5 import T5Config, T5ForConditionalGeneration

TASKS = ("classification", "regression", "token_classification", "question_answering", "seq2seq")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """What sits on top of the backbone. `dropout` None = the backbone's hidden dropout (HF's default)."""
    task: str = "classification"
    num_labels: int = 2
    dropout: float | None = None

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}; choose one of {TASKS}")
        if self.task == "seq2seq":  # the LM head writes tokens: no labels
            return
        if self.task == "regression" and self.num_labels != 1:
            raise ValueError(f"task 'regression' predicts one number: num_labels must be 1, got {self.num_labels}")
        if self.task == "question_answering" and self.num_labels != 2:
            raise ValueError(f"task 'question_answering' has two outputs (start, end): num_labels must be 2, "
                             f"got {self.num_labels}")
        if self.num_labels < 1:
            raise ValueError(f"num_labels={self.num_labels} must be >= 1")


def _dense(config, features, name, *, axes=("embed", None), use_bias=True):
    """A head layer created with HF's initialiser (normal(initializer_range), zero bias)."""
    init = nn.initializers.normal(config.initializer_range)
    return nn.Dense(features, use_bias=use_bias, dtype=to_dtype(config.dtype), param_dtype=to_dtype(config.param_dtype),
                    kernel_init=nn.with_logical_partitioning(init, axes),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, axes[1:]), name=name)


def _dropout_rate(backbone_config, head: HeadConfig) -> float:
    if head.dropout is not None:
        return head.dropout
    return getattr(backbone_config, "hidden_dropout", getattr(backbone_config, "dropout", 0.1))


def last_token_index(segment_ids_BxL):
    """Index of each row's last non-padding token (0 for an all-padding row)."""
    length = segment_ids_BxL.shape[1]
    positions = jnp.arange(length)[None, :]
    return jnp.max(jnp.where(segment_ids_BxL > 0, positions, 0), axis=1)


class Head(nn.Module):
    """The task layers alone: (hidden [B,L,D], pooled [B,D] or None, segment_ids [B,L]) -> outputs dict."""
    config: BertConfig | GPT2Config
    head: HeadConfig

    @nn.compact
    def __call__(self, hidden_BxLxD, pooled_BxD, segment_ids_BxL, *, deterministic=True):
        c, h = self.config, self.head
        drop = nn.Dropout(_dropout_rate(c, h))
        if h.task == "question_answering":
            logits_BxLx2 = _dense(c, 2, "qa_outputs")(hidden_BxLxD).astype(jnp.float32)
            return {"start_logits": logits_BxLx2[..., 0], "end_logits": logits_BxLx2[..., 1]}
        if h.task == "token_classification":
            x = drop(hidden_BxLxD, deterministic=deterministic)
            return {"logits": _dense(c, h.num_labels, "classifier")(x).astype(jnp.float32)}
        # Sequence classification / regression.
        if isinstance(c, GPT2Config):
            last_B = last_token_index(segment_ids_BxL)
            x_BxD = jnp.take_along_axis(hidden_BxLxD, last_B[:, None, None], axis=1)[:, 0]
            logits = _dense(c, h.num_labels, "score", use_bias=False)(x_BxD)
        elif pooled_BxD is not None:  # BERT: the pretrained pooler
            logits = _dense(c, h.num_labels, "classifier")(drop(pooled_BxD, deterministic=deterministic))
        else:  # RoBERTa: RobertaClassificationHead
            x_BxD = drop(hidden_BxLxD[:, 0], deterministic=deterministic)
            x_BxD = jnp.tanh(_dense(c, c.hidden_size, "dense", axes=("embed", "mlp"))(x_BxD))
            x_BxD = drop(x_BxD, deterministic=deterministic)
            logits = _dense(c, h.num_labels, "out_proj", axes=("mlp", None))(x_BxD)
        logits = logits.astype(jnp.float32)
        return {"logits": logits[:, 0] if h.task == "regression" else logits}


class TaskModel(nn.Module):
    """Backbone (BERT / RoBERTa encoder or GPT-2 decoder) + a task head. Call like the backbone:
    `model.apply({'params': p}, inputs, segment_ids=..., token_types=..., positions=..., deterministic=...)`."""
    config: BertConfig | GPT2Config
    head: HeadConfig

    def setup(self):
        if self.head.task == "seq2seq":
            raise ValueError("task 'seq2seq' has no task head: build TextToTextModel (jaxlm.models.heads.task_model)")
        if isinstance(self.config, BertConfig):
            self.backbone = BertModel(self.config)
        elif isinstance(self.config, GPT2Config):
            if self.head.task != "classification" and self.head.task != "regression":
                raise ValueError(f"task {self.head.task!r} is not supported for GPT-2 (a causal decoder sees no "
                                 "right context); use a BERT or RoBERTa checkpoint")
            self.backbone = GPT2LMHeadModel(self.config)
        else:
            raise TypeError(f"no task heads for config of type {type(self.config).__name__}")
        self.task_head = Head(self.config, self.head, name="head")

    def __call__(self, inputs, segment_ids=None, token_types=None, positions=None, *, deterministic=True):
        if segment_ids is None:
            segment_ids = (inputs != self.config.pad_token_id).astype(jnp.int32)
        if isinstance(self.config, GPT2Config):
            hidden = self.backbone(inputs, segment_ids, positions, deterministic=deterministic, return_hidden=True)
            pooled = None
        else:
            hidden, pooled = self.backbone(inputs, segment_ids, token_types, positions, deterministic=deterministic)
        return self.task_head(hidden, pooled, segment_ids, deterministic=deterministic)


def build_task_model(config: BertConfig | GPT2Config, task: str, num_labels: int = 2,
                     dropout: float | None = None) -> TaskModel:
    """`build_task_model(bert_config, 'classification', 3)`; regression forces num_labels=1, QA 2."""
    num_labels = {"regression": 1, "question_answering": 2}.get(task, num_labels)
    return TaskModel(config, HeadConfig(task=task, num_labels=num_labels, dropout=dropout))


class TextToTextModel(nn.Module):
    """Task 'seq2seq': the whole pretrained LM (T5ForConditionalGeneration, or GPT2LMHeadModel writing the target
    after a prompt), kept under `backbone` like the task models so that restore_backbone, checkpoints and the
    loaded / new / unused report treat it the same way. Every parameter comes from the checkpoint; the LM head
    is the task head. Training uses the backbone's pretraining loss on the batch format of
    jaxlm.tasks.seq2seq_features; generation runs jaxlm.decoding on params['backbone']."""
    config: T5Config | GPT2Config
    head: HeadConfig = HeadConfig(task="seq2seq", num_labels=0)

    @property
    def encoder_decoder(self) -> bool:
        return isinstance(self.config, T5Config)

    def setup(self):
        if isinstance(self.config, T5Config):
            self.backbone = T5ForConditionalGeneration(self.config)
        elif isinstance(self.config, GPT2Config):
            self.backbone = GPT2LMHeadModel(self.config)
        else:
            raise TypeError(f"task 'seq2seq' needs a T5 or GPT-2 checkpoint (a model that writes text), got "
                            f"{type(self.config).__name__}")

    def __call__(self, inputs, decoder_inputs=None, *, deterministic=True):
        """Logits: T5 [B,T,V] of the decoder given the encoder's `inputs`; GPT-2 [B,L,V] over `inputs`."""
        if self.encoder_decoder:
            return self.backbone(inputs, decoder_inputs, deterministic=deterministic)
        return self.backbone(inputs, deterministic=deterministic)


def task_model(config, head: HeadConfig) -> TaskModel | TextToTextModel:
    """The fine-tuning model for a backbone config and head config."""
    return TextToTextModel(config, head) if head.task == "seq2seq" else TaskModel(config, head)
