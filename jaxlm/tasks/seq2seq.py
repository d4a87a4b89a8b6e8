"""Text to text (`task='seq2seq'`): translation, summarisation and T5's text-to-text GLUE / SQuAD, with a model that
writes text: an encoder-decoder (T5) or a decoder (GPT-2 writing the target after a prompt).

The model is the whole pretrained LM under `backbone` (`TextToTextModel`): every parameter comes from the
checkpoint, the LM head is the task head, and training uses the backbone's own pretraining loss on its batch
format (jaxlm.tasks.features.seq2seq_features: T5's span-corruption layout, GPT-2's CLM rows whose weights cover
the target tokens only). Dev evaluation generates with jaxlm.decoding (greedy or beam) and scores BLEU / ROUGE,
or for a GLUE / SQuAD format the task's own metrics on the generated words (jaxlm.tasks.text_to_text).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax
import numpy as np

from jaxlm import sharding as shd
from jaxlm.decoding import GenerationConfig, adapter_for, generate
from jaxlm.models import family_of
from jaxlm.objectives.clm import causal_lm_loss
from jaxlm.objectives.span_corruption import seq2seq_lm_loss
from jaxlm.tasks import metrics as task_metrics
from jaxlm.tasks import readers, text_to_text
from jaxlm.tasks.base import Task, TaskSpec, column, logged, record_field, sharded_pass
from jaxlm.tasks.classification import ClassificationTask
from jaxlm.tasks.features import seq2seq_features
from jaxlm.tasks.question_answering import QuestionAnsweringTask

PAIR_FORMATS = ("parallel", "tsv", "csv", "jsonl")  # parallel: line-aligned FILE.<source_field> + FILE.<target_field>
TEXT_TO_TEXT_FORMATS = text_to_text.TEXT_TO_TEXT_FORMATS
ENCODER_DECODER_KEYS = ("inputs", "segment_ids", "positions", "decoder_inputs", "targets", "weights",
                        "decoder_segment_ids", "decoder_positions")
DECODER_KEYS = ("inputs", "targets", "weights", "segment_ids", "positions")


class TextToTextModel(nn.Module):
    """The whole pretrained LM under `backbone`, like the task models, so that restore_backbone, checkpoints and the
    loaded / new / unused report treat it the same way."""
    config: Any

    def setup(self):
        self.backbone = family_of(self.config).build(self.config)

    @property
    def encoder_decoder(self) -> bool:
        return family_of(self.config).kind == "encoder_decoder"

    def __call__(self, inputs, decoder_inputs=None, *, deterministic=True):
        """Logits: an encoder-decoder's [B,T,V] given the encoder's `inputs`; a decoder's [B,L,V] over `inputs`."""
        if self.encoder_decoder:
            return self.backbone(inputs, decoder_inputs, deterministic=deterministic)
        return self.backbone(inputs, deterministic=deterministic)


def backbone_loss(model: TextToTextModel):
    """loss_fn over a TextToTextModel's params ({'backbone': ...}): the backbone's own pretraining loss."""
    backbone = family_of(model.config).build(model.config)
    inner = seq2seq_lm_loss(backbone) if model.encoder_decoder else causal_lm_loss(backbone)

    def loss_fn(params, batch, rng):
        return inner(params["backbone"], batch, rng)

    return loss_fn


class TextGenerator:
    """The seq2seq counterpart of Predictor: the teacher-forced loss over every feature row, and each row's
    generated text (greedy, or beam search with spec.num_beams and spec.length_penalty, up to max_target_len
    tokens, stopping at EOS), on the mesh. Outputs: {'texts': [str] per row}, mean loss.

    Generation starts from prompt_inputs (the encoder input for T5, the prompt up to the separating EOS for
    GPT-2), right-padded; each batch is padded to `batch_size` rows so one program is compiled.
    """

    def __init__(self, spec: TaskSpec, model: TextToTextModel, mesh, param_shardings, batch_size: int, tokenizer,
                 rules=shd.DEFAULT_RULES):
        self.mesh, self.batch_size, self.rules, self.tokenizer = mesh, batch_size, rules, tokenizer
        self.keys = ENCODER_DECODER_KEYS if spec.encoder_decoder else DECODER_KEYS
        loss_fn = backbone_loss(model)

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
        sums = np.sum(np.asarray(sharded_pass(self.jitted_loss, params, features, self.keys, self.batch_size,
                                              self.mesh, self.rules, self.batch_sharding), np.float64), axis=0)
        return float(sums[0] / max(sums[1], 1e-8))

    def __call__(self, params, features: dict) -> tuple[dict, float]:
        texts = [self.tokenizer.decode(ids) for ids in self.generate(params, features)]
        labelled = bool(np.any(features["weights"]))
        return {"texts": texts}, (self.loss(params, features) if labelled else float("nan"))


class Seq2SeqTask(Task):
    names: ClassVar[tuple[str, ...]] = ("seq2seq",)
    formats: ClassVar[tuple[str, ...]] = PAIR_FORMATS + TEXT_TO_TEXT_FORMATS
    kinds: ClassVar[tuple[str, ...]] = ("decoder", "encoder_decoder")

    def spec(self, config, family):
        d, g, fmt = config.data, config.generation, config.data.format.lower().replace("-", "")
        if family.kind not in self.kinds:
            writers = ", ".join(self.kinds)
            raise ValueError(f"config.task='seq2seq' needs a model that writes text (a {writers}); the checkpoint is "
                             f"a {family.name!r} model ({family.kind})")
        if d.max_target_len < 2:
            raise ValueError(f"config.data.max_target_len={d.max_target_len} must be >= 2 (a token and EOS)")
        common = dict(task="seq2seq", format=fmt, labels=None, pair=False, style=d.style or "bert", max_len=d.max_len,
                      max_target_len=d.max_target_len, prompt=d.prompt,
                      encoder_decoder=family.kind == "encoder_decoder", num_beams=g.num_beams,
                      length_penalty=g.length_penalty)
        if fmt in TEXT_TO_TEXT_FORMATS:  # the inputs and targets are T5's; the metrics the task's own
            return TaskSpec(**common, text_metrics=text_to_text.metric_names(fmt))
        for key in ("source_field", "target_field"):
            if not d[key]:
                raise ValueError(f"config.data.{key} is empty: name the source / target (parallel files: the "
                                 "language suffix such as 'en' / 'de'; tsv/csv/jsonl: the column; TFDS: the feature "
                                 "key)")
        unknown = [m for m in d.metrics if m not in task_metrics.TEXT_METRICS]
        if not d.metrics or unknown:
            raise ValueError(f"config.data.metrics={tuple(d.metrics)!r}: choose one or more of "
                             f"{task_metrics.TEXT_METRICS}")
        return TaskSpec(**common, source_field=d.source_field, target_field=d.target_field,
                        text_metrics=tuple(d.metrics))

    def with_model(self, spec: TaskSpec, model_config) -> TaskSpec:
        return dataclasses.replace(spec, pad_id=model_config.pad_token_id,
                                   decoder_start_id=getattr(model_config, "decoder_start_token_id", 0))

    def metric_names(self, spec):
        return spec.text_metrics

    def best_metric(self, spec, override=""):
        """Text-to-text GLUE / SQuAD keeps the checkpoint the classification / QA task would (MRPC by F1)."""
        if not override and spec.format in TEXT_TO_TEXT_FORMATS:
            task, source_spec = self._source_task(spec)
            return task.best_metric(source_spec)
        return super().best_metric(spec, override)

    def _source_task(self, spec: TaskSpec) -> tuple[Task, TaskSpec]:
        """A text-to-text GLUE / SQuAD run reads its examples as the classification / QA task does."""
        if spec.format == "squad":
            return QuestionAnsweringTask(), dataclasses.replace(spec, task="question_answering", pair=True)
        pair = readers.glue_layout(spec.format).text_b_column is not None
        return ClassificationTask(), dataclasses.replace(spec, task="classification", pair=pair)

    def read_examples(self, spec, data, path="", *, split="", labelled=True, limit=0):
        if spec.format in TEXT_TO_TEXT_FORMATS:
            task, source_spec = self._source_task(spec)
            examples = task.read_examples(source_spec, data, path, split=split, labelled=labelled, limit=limit)
            return text_to_text.to_text_pairs(spec.format, examples)
        return super().read_examples(spec, data, path, split=split, labelled=labelled, limit=limit)

    def tfds_options(self, spec):
        return {"seq2seq_fields": (spec.source_field, spec.target_field)}

    def read_file(self, spec, data, path, *, labelled):
        target = spec.target_field if labelled else None
        if spec.format == "parallel":
            return logged(readers.read_parallel(*readers.parallel_paths(path, spec.source_field, target),
                                                skip_bad_lines=data.skip_bad_lines))
        return logged(readers.read_seq2seq(path, column(spec.source_field), column(target) if target else None,
                                           header=data.header, format=spec.format, skip_bad_lines=data.skip_bad_lines))

    def examples_from_records(self, spec, records, source):
        if spec.format in TEXT_TO_TEXT_FORMATS:  # T5's GLUE / SQuAD: the task's own fields
            task, source_spec = self._source_task(spec)
            return text_to_text.to_text_pairs(spec.format, task.examples_from_records(source_spec, records, source))
        return [readers.Seq2SeqExample(f"{source}:{n}", record_field(spec, r, f"{source}:{n}")("source").strip())
                for n, r in enumerate(records, 1)]

    def features(self, spec, examples, tokenizer):
        return seq2seq_features(examples, tokenizer, spec.max_len, spec.max_target_len,
                                encoder_decoder=spec.encoder_decoder, prompt=spec.prompt,
                                decoder_start_id=spec.decoder_start_id, pad_id=spec.pad_id)

    def device_keys(self, spec):
        return ENCODER_DECODER_KEYS if spec.encoder_decoder else DECODER_KEYS

    def init_batch(self, spec):
        if spec.encoder_decoder:
            return {"inputs": np.ones((1, spec.max_len), np.int32),
                    "decoder_inputs": np.ones((1, spec.max_target_len), np.int32)}
        return {"inputs": np.ones((1, spec.row_len), np.int32)}

    def model(self, spec, model_config):
        return TextToTextModel(model_config)

    def loss_fn(self, spec, model):
        return backbone_loss(model)

    def predictor(self, spec, model, mesh, param_shardings, batch_size, tokenizer, rules=shd.DEFAULT_RULES):
        return TextGenerator(spec, model, mesh, param_shardings, batch_size, tokenizer, rules)

    def predictions(self, spec, examples, features, outputs):
        return [{"prediction": text} for text in outputs["texts"]]

    def metrics(self, spec, examples, features, outputs):
        if spec.format in TEXT_TO_TEXT_FORMATS:
            return text_to_text.scores(spec.format, [e.example for e in examples], outputs["texts"])
        if any(e.target is None for e in examples):
            raise ValueError("task metrics: the examples have no targets")
        return task_metrics.text_metrics(spec.text_metrics, [e.target for e in examples], outputs["texts"])

    def train_flops_per_example(self, spec, model_config):
        family = family_of(model_config)
        if spec.encoder_decoder:
            return (family.backbone_train_flops(model_config, tokens=spec.max_len, targets=spec.max_target_len)
                    + family.lm_head_train_flops(model_config, spec.max_target_len))
        return (family.backbone_train_flops(model_config, tokens=spec.row_len)
                + family.lm_head_train_flops(model_config, spec.row_len))
