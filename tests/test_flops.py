"""The analytic training FLOPs that MFU is computed from (each objective's `train_flops_per_example`, built from the
family's `backbone_train_flops` / `lm_head_train_flops`) against XLA's own count of the compiled training step.

For every pretraining objective on its model family: a small model (2 layers, hidden 256, vocabulary 4096,
unrolled layers, float32, no dropout), a realistic batch of B = 4 rows of 128 tokens, and the FLOPs of
`jit(value_and_grad(loss))` as XLA's cost analysis reports them for the optimised program. Layers are unrolled
because the cost analysis counts a while loop's body once, not times its trip count. Both counts make a
multiply-add 2 FLOPs; XLA also counts elementwise work (softmax, layer norm, activations, the loss), which the
analytic count leaves out, so XLA is a little higher (the ratio analytic / XLA sits near 0.98). Only the
parameters' shapes are needed: the program is lowered against abstract params and never run.
"""
import functools

import jax
import numpy as np
import pytest
from synthetic import clm_batch

from jaxlm.models import family_of, get_model_config
from jaxlm.objectives import get_objective
from jaxlm.objectives.mlm import mask_batch
from jaxlm.objectives.plm import plm_features, plm_stream_features
from jaxlm.objectives.span_corruption import noise_span_counts, span_corruption_example
from jaxlm.workdir import abstract_params

BATCH, SEQ_LEN, VOCAB = 4, 128, 4096
LOW, HIGH = 0.9, 1.1  # analytic / XLA must land in this band
# The HLO passes (and so the cost analysis) are unchanged; only the CPU code generation is cheaper.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

SHAPE = dict(num_layers=2, num_heads=4)
BERT_LIKE = dict(vocab_size=VOCAB, hidden_size=256, intermediate_size=1024, **SHAPE)
T5_LIKE = dict(vocab_size=VOCAB, d_model=256, d_kv=64, d_ff=1024, dropout_rate=0.0, **SHAPE)

# family, objective, model overrides, objective settings
CASES = {
    "bert/mlm_nsp": ("bert", "mlm_nsp", dict(BERT_LIKE, hidden_dropout=0.0, attention_dropout=0.0),
                     dict(max_predictions=20)),
    "roberta/mlm": ("roberta", "mlm", dict(BERT_LIKE, hidden_dropout=0.0, attention_dropout=0.0),
                    dict(max_predictions=20)),
    "gpt2/clm": ("gpt2", "clm", dict(BERT_LIKE, dropout=0.0, attention_dropout=0.0, bos_token_id=VOCAB - 1,
                                     eos_token_id=VOCAB - 1), {}),
    "t5/span_corruption": ("t5", "span_corruption", T5_LIKE, {}),
    "t5_v1_1/span_corruption": ("t5_v1_1", "span_corruption", T5_LIKE, {}),
    "xlnet/plm": ("xlnet", "plm", dict(BERT_LIKE, dropout=0.0, pad_token_id=0), {}),
    # the recurrent layout: a 128-token memory of the previous segment's first 64 tokens' states
    "xlnet/plm+memory": ("xlnet", "plm", dict(BERT_LIKE, dropout=0.0, pad_token_id=0, mem_len=128, reuse_len=64), {}),
}

def _model(case: str):
    family_name, objective_name, overrides, settings = CASES[case]
    config = get_model_config(family_name, scan_layers=False, **overrides)
    return family_of(config), config, get_objective(objective_name)(seq_len=SEQ_LEN, **settings).for_model(config)


def _specials(pad: int) -> tuple[int, int, int]:
    """(cls, sep, mask) ids: the first small ids that are not the padding id."""
    cls_id, sep_id, mask_id = [i for i in range(5) if i != pad][:3]
    return cls_id, sep_id, mask_id


def _mlm_batch(objective, config, rng) -> dict:
    """Full rows `[CLS] A [SEP] B [SEP]` (no padding), every one of the max_predictions slots used."""
    cls_id, sep_id, mask_id = _specials(config.pad_token_id)
    specials = (config.pad_token_id, cls_id, sep_id, mask_id)
    ids = rng.integers(5, config.vocab_size, (BATCH, SEQ_LEN))
    middle = rng.integers(SEQ_LEN // 4, 3 * SEQ_LEN // 4, BATCH)
    ids[:, 0], ids[np.arange(BATCH), middle], ids[:, -1] = cls_id, sep_id, sep_id
    columns = np.arange(SEQ_LEN)[None, :]
    token_types = (columns > middle[:, None]).astype(np.int32) if config.type_vocab_size > 1 else 0 * columns
    # a mask rate above the slots' share, so every row fills all max_predictions slots
    batch = mask_batch(ids, rng, mask_id=mask_id, vocab_size=config.vocab_size, special_ids=specials,
                       max_predictions=objective.predictions, mask_rate=0.3)
    batch.update(segment_ids=np.ones((BATCH, SEQ_LEN)), positions=np.broadcast_to(columns, (BATCH, SEQ_LEN)),
                 token_types=np.broadcast_to(token_types, (BATCH, SEQ_LEN)))
    if objective.name == "mlm_nsp":
        batch["nsp_labels"] = rng.integers(0, 2, BATCH)
    return batch


def _clm_batch(objective, config, rng) -> dict:
    """Documents of random lengths packed into full rows (segment ids and positions as the pipeline makes them)."""
    documents, total = [], 0
    while total < BATCH * SEQ_LEN + 1:
        doc = rng.integers(1, config.vocab_size - 1, int(rng.integers(20, 300))).tolist() + [config.eos_token_id]
        documents.append(doc)
        total += len(doc) - 1
    return clm_batch(documents, SEQ_LEN, BATCH)


def _span_corruption_batch(objective, config, rng) -> dict:
    """Full chunks corrupted to exactly seq_len encoder inputs and the targets length (the pipeline's rows)."""
    chunk, targets_length = objective.lengths
    spans = noise_span_counts(chunk, objective.noise_density, objective.mean_noise_span_length)[1]
    sentinels = tuple(range(config.vocab_size - 1, config.vocab_size - 1 - spans, -1))  # T5's: from the top
    rows = [span_corruption_example(rng.integers(2, config.vocab_size - spans, chunk), rng, sentinel_ids=sentinels,
                                    eos_id=config.eos_token_id, inputs_length=SEQ_LEN, targets_length=targets_length,
                                    noise_density=objective.noise_density,
                                    mean_noise_span_length=objective.mean_noise_span_length,
                                    pad_id=config.pad_token_id, decoder_start_id=config.decoder_start_token_id)
            for _ in range(BATCH)]
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    assert batch["segment_ids"].all() and batch["weights"].all(), "full chunks fill inputs and targets exactly"
    return batch


def _plm_batch(objective, config, rng) -> dict:
    """Full rows `A <sep> B <sep> <cls>` through the objective's own row transform (factorisation order,
    perm_mask, target_mapping)."""
    cls_id, sep_id, _ = _specials(config.pad_token_id)
    rows = []
    for _ in range(BATCH):
        tokens = rng.integers(5, config.vocab_size, SEQ_LEN - 3)
        if objective.memory_shape(config, BATCH) is not None:  # `reuse A <sep> B <sep> <cls>`
            reuse, cut = tokens[:objective.reuse_len], int(rng.integers(objective.reuse_len + 1, SEQ_LEN - 4))
            rows.append(plm_stream_features(reuse, tokens[objective.reuse_len:cut], tokens[cut:], rng, seq_len=SEQ_LEN,
                                            num_predict=objective.predictions, sep_id=sep_id, cls_id=cls_id))
            continue
        cut = int(rng.integers(SEQ_LEN // 4, 3 * SEQ_LEN // 4))
        rows.append(plm_features(tokens[:cut], tokens[cut:], rng, seq_len=SEQ_LEN, num_predict=objective.predictions,
                                 sep_id=sep_id, cls_id=cls_id, pad_id=config.pad_token_id,
                                 perm_size=objective.permutation_size, max_span=objective.max_span,
                                 mask_alpha=objective.mask_alpha, mask_beta=objective.mask_beta))
    return {k: np.stack([row[k] for row in rows]) for k in rows[0]}


BATCHES = {"mlm": _mlm_batch, "mlm_nsp": _mlm_batch, "clm": _clm_batch, "span_corruption": _span_corruption_batch,
           "plm": _plm_batch}


def _batch(objective, config) -> dict:
    """A realistic batch, checked against the objective's batch_spec (keys, shapes, dtypes)."""
    spec = objective.batch_spec(BATCH)
    batch = BATCHES[objective.name](objective, config, np.random.default_rng(0))
    assert sorted(batch) == sorted(spec)
    out = {}
    for key, (shape, dtype) in spec.items():
        value = np.asarray(batch[key])
        assert value.shape == tuple(shape), (key, value.shape, shape)
        out[key] = value.astype(dtype)
    return out


def xla_flops(compiled) -> float:
    """'flops' of a compiled program's cost analysis (a dict, or a list of one dict per program in older jax)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        assert len(analysis) == 1, f"expected one program, got {len(analysis)} cost analyses"
        analysis = analysis[0]
    return float(analysis["flops"])


@functools.lru_cache(maxsize=None)
def measure(case: str) -> tuple[float, float]:
    """(analytic FLOPs, XLA's FLOPs) of one training step (forward + backward) on a batch of BATCH rows."""
    family, config, objective = _model(case)
    objective.check_model(family, config)
    model = family.build(config)
    params = abstract_params(model, objective.init_inputs(family, config))
    batch = _batch(objective, config)
    loss_fn = objective.loss_fn(model)
    memory_shape = objective.memory_shape(config, BATCH)
    if memory_shape is not None:  # what the train step runs when the state carries a memory
        memory = jax.ShapeDtypeStruct(memory_shape, np.float32)
        step = jax.jit(jax.value_and_grad(loss_fn.with_memory, has_aux=True))
        compiled = step.lower(params, batch, None, memory).compile(compiler_options=FAST_COMPILE)
    else:
        step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
        compiled = step.lower(params, batch, None).compile(compiler_options=FAST_COMPILE)
    return objective.train_flops_per_example(family, config) * BATCH, xla_flops(compiled)


def check_ratio(analytic: float, xla: float, what: str) -> float:
    ratio = analytic / xla
    print(f"{what}: analytic {analytic / 1e9:.4f} GFLOPs, XLA {xla / 1e9:.4f} GFLOPs, analytic / XLA = {ratio:.4f}")
    assert LOW <= ratio <= HIGH, (f"{what}: analytic training FLOPs {analytic:.4g} vs XLA's {xla:.4g} per step of "
                                  f"{BATCH} rows: ratio {ratio:.4f} is outside [{LOW}, {HIGH}]")
    return ratio


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_train_flops_match_xla(case):
    analytic, xla = measure(case)
    assert xla > 0 and analytic > 0
    check_ratio(analytic, xla, case)


def test_the_check_fails_on_a_wrong_count():
    """The band is tight enough to catch a missing term: GPT-2's count without its vocabulary projection (a third
    of this small model's FLOPs), or half / 1.5x the count, fails."""
    family, config, objective = _model("gpt2/clm")
    analytic, xla = measure("gpt2/clm")
    backbone_only = family.backbone_train_flops(config, tokens=objective.seq_len) * BATCH
    assert backbone_only < analytic
    for wrong, what in ((backbone_only, "without the LM head"), (0.5 * analytic, "halved"),
                        (1.5 * analytic, "x1.5")):
        with pytest.raises(AssertionError, match="outside"):
            check_ratio(wrong, xla, f"gpt2/clm {what}")
    assert analytic != xla  # two independent counts (XLA's includes elementwise work), not one number twice


# ----------------------------------------------------------------------------------------------------------------
# Fine-tuning: each task's train_flops_per_example (the backbone's matmuls + the head's; the embedding lookups are
# gathers and not counted) against XLA's count of the task's compiled forward + backward, at the full row length
# and at a length-bucketed one (config.data.length_buckets: the count follows the batch's row length).

FINETUNE_CASES = {  # family, task, row length
    "bert/classification": ("bert", "classification", SEQ_LEN),  # pooler head
    "bert/classification@32": ("bert", "classification", 32),  # a length bucket
    "roberta/token_classification": ("roberta", "token_classification", SEQ_LEN),
    "bert/question_answering": ("bert", "question_answering", SEQ_LEN),
}


def _finetune_model(case: str):
    from jaxlm.tasks import TaskSpec, get_task

    family_name, task_name, length = FINETUNE_CASES[case]
    config = get_model_config(family_name, scan_layers=False, **BERT_LIKE, hidden_dropout=0.0, attention_dropout=0.0)
    labels = tuple("OBIEX") if task_name == "token_classification" else ("0", "1", "2")
    spec = TaskSpec(task=task_name, format="", labels=None if task_name == "question_answering" else labels,
                    pair=task_name == "question_answering", style="bert", max_len=length)
    return config, get_task(task_name), spec


@functools.lru_cache(maxsize=None)
def measure_finetune(case: str) -> tuple[float, float]:
    config, task, spec = _finetune_model(case)
    model = task.model(spec, config)
    params = abstract_params(model, task.init_batch(spec))
    rng, L = np.random.default_rng(0), spec.max_len
    labels_shape = (BATCH, L) if spec.task == "token_classification" else BATCH
    batch = {"inputs": rng.integers(5, VOCAB, (BATCH, L)).astype(np.int32),
             "segment_ids": np.ones((BATCH, L), np.int32),
             "positions": np.broadcast_to(np.arange(L, dtype=np.int32), (BATCH, L)),
             "token_types": np.zeros((BATCH, L), np.int32), "example_weights": np.ones(BATCH, np.float32),
             "labels": rng.integers(0, 3, labels_shape).astype(np.int32),
             "label_weights": np.ones((BATCH, L), np.float32), "start_positions": np.full(BATCH, 3, np.int32),
             "end_positions": np.full(BATCH, 5, np.int32)}
    batch = {k: batch[k] for k in task.device_keys(spec)}
    step = jax.jit(jax.value_and_grad(task.loss_fn(spec, model), has_aux=True))
    compiled = step.lower(params, batch, None).compile(compiler_options=FAST_COMPILE)
    return task.train_flops_per_example(spec, config) * BATCH, xla_flops(compiled)


@pytest.mark.parametrize("case", list(FINETUNE_CASES))
def test_finetuning_train_flops_match_xla(case):
    analytic, xla = measure_finetune(case)
    check_ratio(analytic, xla, case)


def test_finetuning_flops_leave_the_embedding_table_out():
    """Counting the token-embedding table as a matmul (6 x vocab x hidden per token: it is a gather) lands
    outside the band."""
    config, task, spec = _finetune_model("bert/classification")
    analytic, xla = measure_finetune("bert/classification")
    embedding = 6.0 * config.vocab_size * config.hidden_size * spec.max_len * BATCH
    with pytest.raises(AssertionError, match="outside"):
        check_ratio(analytic + embedding, xla, "bert/classification with the embedding table as a matmul")
