"""Hugging Face <-> jaxlm: the parameter-name tables and the config translation, one section per family.

A table row reads `HF tensor name -> (jaxlm parameter path(s), transform)`. HF names are the canonical names
that transformers' `save_pretrained` writes for BertForPreTraining / RobertaForMaskedLM / GPT2LMHeadModel
(backbone prefix included); `{i}` is the layer index. jaxlm paths are '/'-joined keys of the unrolled param
tree (`layers_{i}`; the scanned layout is derived with `jaxlm.layers.stack_layers`).

Shapes: torch `nn.Linear.weight` is [out, in], flax kernels are [in, out]; jaxlm attention kernels keep the
heads axis apart ([D, H, K] in, [H, K, D] out). GPT-2's `Conv1D.weight` is already [in, out] and its
`c_attn` holds query, key and value side by side ([D, 3D]).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import numpy as np

from jaxlm.layers.mlp import ACTIVATIONS

# ---------------------------------------------------------------------------------------------------------
# Transforms: HF tensor <-> one or more jaxlm arrays. `d` holds the dimensions: H heads, K head_dim.

@dataclasses.dataclass(frozen=True)
class Transform:
    name: str
    to_jax: Callable[[np.ndarray, dict], list]  # one HF tensor -> [jaxlm array, ...]
    to_hf: Callable[[list, dict], np.ndarray]  # [jaxlm array, ...] -> one HF tensor


def _split3(x, axis):
    return list(np.split(x, 3, axis=axis))


COPY = Transform("copy", lambda x, d: [x], lambda xs, d: xs[0])
# torch Linear [out, in] <-> flax Dense kernel [in, out]
LINEAR = Transform("transpose", lambda x, d: [x.T], lambda xs, d: xs[0].T)
# query/key/value Linear [H*K, D] <-> DenseGeneral kernel [D, H, K]
HEADS_IN = Transform("transpose+split_heads", lambda x, d: [x.T.reshape(-1, d["H"], d["K"])],
                     lambda xs, d: xs[0].reshape(xs[0].shape[0], -1).T)
# query/key/value bias [H*K] <-> [H, K]
HEADS_BIAS = Transform("split_heads", lambda x, d: [x.reshape(d["H"], d["K"])], lambda xs, d: xs[0].reshape(-1))
# attention output Linear [D, H*K] <-> DenseGeneral kernel [H, K, D]
HEADS_OUT = Transform("transpose+split_heads", lambda x, d: [x.T.reshape(d["H"], d["K"], -1)],
                      lambda xs, d: xs[0].reshape(-1, xs[0].shape[-1]).T)
# GPT-2 Conv1D attention output [H*K, D] <-> [H, K, D]
CONV_HEADS_OUT = Transform("split_heads", lambda x, d: [x.reshape(d["H"], d["K"], -1)],
                           lambda xs, d: xs[0].reshape(-1, xs[0].shape[-1]))
# GPT-2 fused Conv1D c_attn [D, 3*H*K] <-> query, key, value kernels [D, H, K] each
CONV_QKV = Transform("split_qkv+split_heads",
                     lambda x, d: [q.reshape(-1, d["H"], d["K"]) for q in _split3(x, 1)],
                     lambda xs, d: np.concatenate([q.reshape(q.shape[0], -1) for q in xs], axis=1))
# GPT-2 fused c_attn bias [3*H*K] <-> query, key, value biases [H, K] each
CONV_QKV_BIAS = Transform("split_qkv+split_heads",
                          lambda x, d: [q.reshape(d["H"], d["K"]) for q in _split3(x, 0)],
                          lambda xs, d: np.concatenate([q.reshape(-1) for q in xs]))


def _norm(hf_prefix, jax_prefix):
    return {f"{hf_prefix}.weight": (f"{jax_prefix}/scale", COPY), f"{hf_prefix}.bias": (f"{jax_prefix}/bias", COPY)}


def _linear(hf_prefix, jax_prefix, weight=LINEAR):
    return {f"{hf_prefix}.weight": (f"{jax_prefix}/kernel", weight), f"{hf_prefix}.bias": (f"{jax_prefix}/bias", COPY)}


# ---------------------------------------------------------------------------------------------------------
# BERT and RoBERTa (same backbone; `{p}` is 'bert' or 'roberta').

BERT_EMBEDDINGS = {
    "{p}.embeddings.word_embeddings.weight": ("bert/word_embeddings/embedding", COPY),
    "{p}.embeddings.position_embeddings.weight": ("bert/position_embeddings/embedding", COPY),
    "{p}.embeddings.token_type_embeddings.weight": ("bert/token_type_embeddings/embedding", COPY),
    **_norm("{p}.embeddings.LayerNorm", "bert/embeddings_norm"),
}
_Q, _L = "{p}.encoder.layer.{i}", "bert/encoder/layers_{i}"
BERT_LAYER = {
    f"{_Q}.attention.self.query.weight": (f"{_L}/attention/query/kernel", HEADS_IN),
    f"{_Q}.attention.self.query.bias": (f"{_L}/attention/query/bias", HEADS_BIAS),
    f"{_Q}.attention.self.key.weight": (f"{_L}/attention/key/kernel", HEADS_IN),
    f"{_Q}.attention.self.key.bias": (f"{_L}/attention/key/bias", HEADS_BIAS),
    f"{_Q}.attention.self.value.weight": (f"{_L}/attention/value/kernel", HEADS_IN),
    f"{_Q}.attention.self.value.bias": (f"{_L}/attention/value/bias", HEADS_BIAS),
    f"{_Q}.attention.output.dense.weight": (f"{_L}/attention/out/kernel", HEADS_OUT),
    f"{_Q}.attention.output.dense.bias": (f"{_L}/attention/out/bias", COPY),
    **_norm(f"{_Q}.attention.output.LayerNorm", f"{_L}/attention_norm"),
    **_linear(f"{_Q}.intermediate.dense", f"{_L}/mlp/wi"),
    **_linear(f"{_Q}.output.dense", f"{_L}/mlp/wo"),
    **_norm(f"{_Q}.output.LayerNorm", f"{_L}/mlp_norm"),
}
BERT_POOLER = _linear("{p}.pooler.dense", "bert/pooler")
BERT_MLM_HEAD = {
    **_linear("cls.predictions.transform.dense", "mlm_head/transform"),
    **_norm("cls.predictions.transform.LayerNorm", "mlm_head/transform_norm"),
    "cls.predictions.bias": ("mlm_head/bias", COPY),
}
BERT_NSP_HEAD = _linear("cls.seq_relationship", "nsp_head")
ROBERTA_MLM_HEAD = {
    **_linear("lm_head.dense", "mlm_head/transform"),
    **_norm("lm_head.layer_norm", "mlm_head/transform_norm"),
    "lm_head.bias": ("mlm_head/bias", COPY),
}
# Tied copies: the alias holds the same tensor as its source (jaxlm computes the output projection with the
# word embeddings, `Embed.attend`). transformers >= 5 omits them from the files it writes; older files have them.
BERT_TIED = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
             "cls.predictions.decoder.bias": "cls.predictions.bias"}
ROBERTA_TIED = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
                "lm_head.decoder.bias": "lm_head.bias"}

# ---------------------------------------------------------------------------------------------------------
# GPT-2

GPT2_EMBEDDINGS = {
    "transformer.wte.weight": ("token_embeddings/embedding", COPY),
    "transformer.wpe.weight": ("position_embeddings/embedding", COPY),
    **_norm("transformer.ln_f", "final_norm"),
}
_H, _D = "transformer.h.{i}", "decoder/layers_{i}"
GPT2_LAYER = {
    **_norm(f"{_H}.ln_1", f"{_D}/attention_norm"),
    f"{_H}.attn.c_attn.weight": ((f"{_D}/attention/query/kernel", f"{_D}/attention/key/kernel",
                                  f"{_D}/attention/value/kernel"), CONV_QKV),
    f"{_H}.attn.c_attn.bias": ((f"{_D}/attention/query/bias", f"{_D}/attention/key/bias",
                                f"{_D}/attention/value/bias"), CONV_QKV_BIAS),
    f"{_H}.attn.c_proj.weight": (f"{_D}/attention/out/kernel", CONV_HEADS_OUT),
    f"{_H}.attn.c_proj.bias": (f"{_D}/attention/out/bias", COPY),
    **_norm(f"{_H}.ln_2", f"{_D}/mlp_norm"),
    **_linear(f"{_H}.mlp.c_fc", f"{_D}/mlp/wi", weight=COPY),  # Conv1D: already [in, out]
    **_linear(f"{_H}.mlp.c_proj", f"{_D}/mlp/wo", weight=COPY),
}
GPT2_TIED = {"lm_head.weight": "transformer.wte.weight"}

# ---------------------------------------------------------------------------------------------------------
# T5 (v1.0 and v1.1; T5ForConditionalGeneration, or T5Model without lm_head). Names have no common prefix.
# The relative position bias lives in block 0's self-attention of each stack; every layer of the stack uses it.

def _t5_attention(hf_prefix, jax_prefix):
    return {f"{hf_prefix}.q.weight": (f"{jax_prefix}/query/kernel", HEADS_IN),
            f"{hf_prefix}.k.weight": (f"{jax_prefix}/key/kernel", HEADS_IN),
            f"{hf_prefix}.v.weight": (f"{jax_prefix}/value/kernel", HEADS_IN),
            f"{hf_prefix}.o.weight": (f"{jax_prefix}/out/kernel", HEADS_OUT)}


def _t5_mlp(hf_prefix, jax_prefix, gated):
    names = ("wi_0", "wi_1", "wo") if gated else ("wi", "wo")
    return {f"{hf_prefix}.DenseReluDense.{n}.weight": (f"{jax_prefix}/mlp/{n}/kernel", LINEAR) for n in names}


def _t5_stack(stack, gated):
    """(per-stack rows, per-layer rows) of 'encoder' or 'decoder'."""
    b, j = f"{stack}.block.{{i}}.layer", f"{stack}/layers_{{i}}"
    rows = {f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            (f"{stack}_relative_bias/embedding", COPY),
            f"{stack}.final_layer_norm.weight": (f"{stack}_norm/scale", COPY)}
    layer = {f"{b}.0.layer_norm.weight": (f"{j}/attention_norm/scale", COPY),
             **_t5_attention(f"{b}.0.SelfAttention", f"{j}/attention")}
    ff = 1
    if stack == "decoder":
        layer.update({f"{b}.1.layer_norm.weight": (f"{j}/cross_attention_norm/scale", COPY),
                      **_t5_attention(f"{b}.1.EncDecAttention", f"{j}/cross_attention")})
        ff = 2
    layer.update({f"{b}.{ff}.layer_norm.weight": (f"{j}/mlp_norm/scale", COPY), **_t5_mlp(f"{b}.{ff}", j, gated)})
    return rows, layer


T5_SHARED = {"shared.weight": ("token_embeddings/embedding", COPY)}
T5_LM_HEAD = {"lm_head.weight": ("lm_head/kernel", LINEAR)}  # v1.1 only; v1.0's is the shared embedding
T5_TIED = {"encoder.embed_tokens.weight": "shared.weight", "decoder.embed_tokens.weight": "shared.weight"}

# Buffers some files carry; they are not parameters (causal-mask tables, position / token-type id ranges; T5's
# unused cross-attention bias table that old checkpoints hold and transformers ignores too).
IGNORED_BUFFERS = (re.compile(r"(^|\.)position_ids$"), re.compile(r"(^|\.)token_type_ids$"),
                   re.compile(r"(^|\.)h\.\d+\.attn\.(bias|masked_bias)$"),
                   re.compile(r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"))

@dataclasses.dataclass(frozen=True)
class Row:
    hf: str
    jax: tuple[str, ...]
    transform: Transform


@dataclasses.dataclass(frozen=True)
class Table:
    """The expanded table of one model: rows for the parameters it has, plus what the checkpoint may hold
    that this model has no place for (`droppable`: known heads; reported as unused) and tied aliases."""
    rows: tuple[Row, ...]
    droppable: tuple[str, ...]
    tied: dict
    prefix: str
    head_prefixes: tuple[str, ...]


def _expand(entries: dict, num_layers: int | None = None, **names) -> list[Row]:
    rows = []
    for i in range(num_layers) if num_layers is not None else [None]:
        fmt = dict(names, i=i)
        for hf, (jax_paths, transform) in entries.items():
            jax_paths = (jax_paths,) if isinstance(jax_paths, str) else jax_paths
            rows.append(Row(hf.format(**fmt), tuple(p.format(**fmt) for p in jax_paths), transform))
    return rows


def _bert_table(family: str, config) -> Table:
    """BERT / RoBERTa rows; the pooler and NSP head only where the config has them (else droppable: an MLM-only
    export, or RoBERTa's unused pooler on import)."""
    p = family
    rows = _expand(BERT_EMBEDDINGS, p=p) + _expand(BERT_LAYER, config.num_layers, p=p)
    rows += _expand(BERT_MLM_HEAD if family == "bert" else ROBERTA_MLM_HEAD)
    droppable = []
    optional = ((_expand(BERT_POOLER, p=p), config.pooler), (_expand(BERT_NSP_HEAD), config.nsp_head))
    for optional_rows, present in optional:
        if present:
            rows += optional_rows
        else:
            droppable += [r.hf for r in optional_rows]
    tied = BERT_TIED if family == "bert" else ROBERTA_TIED
    return Table(tuple(rows), tuple(droppable), dict(tied), p, ("cls.",) if family == "bert" else ("lm_head.",))


def _gpt2_table(family: str, config) -> Table:
    rows = _expand(GPT2_EMBEDDINGS) + _expand(GPT2_LAYER, config.num_layers)
    return Table(tuple(rows), (), dict(GPT2_TIED), "transformer", ("lm_head.",))


def _t5_table(family: str, config) -> Table:
    rows = _expand(T5_SHARED)
    for stack, layers in (("encoder", config.num_layers), ("decoder", config.decoder_layers)):
        stack_rows, layer_rows = _t5_stack(stack, config.is_gated)
        rows += _expand(stack_rows) + _expand(layer_rows, layers)
    tied = dict(T5_TIED)
    if config.tie_word_embeddings:
        tied["lm_head.weight"] = "shared.weight"
    else:
        rows += _expand(T5_LM_HEAD)
    return Table(tuple(rows), (), tied, "", ("lm_head.",))


def _heads_dims(config) -> dict:
    return {"H": config.num_heads, "K": config.hidden_size // config.num_heads, "D": config.hidden_size}


def _t5_dims(config) -> dict:
    return {"H": config.num_heads, "K": config.d_kv, "D": config.d_model}


# ---------------------------------------------------------------------------------------------------------
# Configs: HF config.json <-> jaxlm config dataclass fields.

# HF `hidden_act` / `activation_function` -> jaxlm activation (jaxlm.layers.mlp.ACTIVATIONS).
HF_TO_JAXLM_ACTIVATION = {
    "gelu": "gelu", "gelu_python": "gelu",  # erf GELU
    "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",  # tanh approximation
    "relu": "relu", "silu": "silu", "swish": "silu", "linear": "linear",
}
JAXLM_TO_HF_ACTIVATION = {"gelu": "gelu", "gelu_new": "gelu_new", "gelu_tanh": "gelu_pytorch_tanh",
                          "relu": "relu", "silu": "silu", "linear": "linear"}


def _activation(hf_config: dict, key: str) -> str:
    name = hf_config.get(key)
    if not isinstance(name, str) or name not in HF_TO_JAXLM_ACTIVATION:
        raise ValueError(f"config.json: {key}={name!r} has no jaxlm equivalent; supported: "
                         f"{sorted(HF_TO_JAXLM_ACTIVATION)}")
    act = HF_TO_JAXLM_ACTIVATION[name]
    assert act in ACTIVATIONS, act
    return act


def _require(hf_config: dict, key: str, expected, why: str):
    value = hf_config.get(key, expected)
    if value != expected:
        raise ValueError(f"config.json: {key}={value!r} is not supported ({why}); jaxlm needs {expected!r}")


def _bert_fields(hf_config: dict) -> tuple[str, dict]:
    family, g = hf_config["model_type"], hf_config.get
    _require(hf_config, "position_embedding_type", "absolute", "relative position embeddings")
    _require(hf_config, "is_decoder", False, "BERT as a decoder")
    _require(hf_config, "add_cross_attention", False, "cross-attention")
    pad = g("pad_token_id", 0 if family == "bert" else 1)
    return family, dict(
        vocab_size=g("vocab_size"), hidden_size=g("hidden_size"), num_layers=g("num_hidden_layers"),
        num_heads=g("num_attention_heads"), intermediate_size=g("intermediate_size"),
        max_position_embeddings=g("max_position_embeddings"), type_vocab_size=g("type_vocab_size", 2),
        hidden_act=_activation(hf_config, "hidden_act"), hidden_dropout=g("hidden_dropout_prob", 0.1),
        attention_dropout=g("attention_probs_dropout_prob", 0.1), layer_norm_eps=g("layer_norm_eps", 1e-12),
        initializer_range=g("initializer_range", 0.02), pad_token_id=pad,
        # RoBERTa numbers positions from padding_idx + 1 (fairseq's make_positions)
        position_offset=pad + 1 if family == "roberta" else 0,
        nsp_head=family == "bert", pooler=family == "bert")


def _gpt2_fields(hf_config: dict) -> tuple[str, dict]:
    g = hf_config.get
    _require(hf_config, "scale_attn_weights", True, "unscaled attention logits")
    _require(hf_config, "scale_attn_by_inverse_layer_idx", False, "per-layer attention scaling")
    _require(hf_config, "add_cross_attention", False, "cross-attention")
    hidden = g("n_embd")
    eos = g("eos_token_id", 50256)
    return "gpt2", dict(
        vocab_size=g("vocab_size"), hidden_size=hidden, num_layers=g("n_layer"), num_heads=g("n_head"),
        intermediate_size=g("n_inner") or 4 * hidden, max_position_embeddings=g("n_positions"),
        hidden_act=_activation(hf_config, "activation_function"), dropout=g("resid_pdrop", 0.1),
        attention_dropout=g("attn_pdrop", 0.1), layer_norm_eps=g("layer_norm_epsilon", 1e-5),
        initializer_range=g("initializer_range", 0.02),
        # GPT-2 has no pad token; padding uses <|endoftext|> (masked out by segment ids anyway)
        pad_token_id=g("pad_token_id") if g("pad_token_id") is not None else eos,
        bos_token_id=g("bos_token_id", 50256), eos_token_id=eos)


def t5_scales_decoder_output(hf_config: dict) -> bool:
    """T5 v1.0 scales the decoder output by d_model**-0.5 before the (tied) output layer; v1.1 does not. Older
    configs say so with tie_word_embeddings (false for v1.1); transformers >= 5 writes scale_decoder_outputs."""
    return bool(hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True) is not False))


def _t5_fields(hf_config: dict) -> tuple[str, dict]:
    g = hf_config.get
    architectures = g("architectures") or []
    if "T5EncoderModel" in architectures:
        raise ValueError("config.json: architectures=['T5EncoderModel'] holds no decoder; jaxlm imports T5 "
                         "encoder-decoders (T5ForConditionalGeneration, T5Model)")
    proj = g("feed_forward_proj", "relu")
    parts = proj.split("-")
    if parts[-1] not in ACTIVATIONS or len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"config.json: feed_forward_proj={proj!r} has no jaxlm equivalent; supported: ACT or "
                         f"gated-ACT with ACT in {sorted(ACTIVATIONS)}")
    if g("is_decoder", False):
        raise ValueError("config.json: is_decoder=true (a decoder-only T5 stack) is not supported")
    fields = dict(
        vocab_size=g("vocab_size"), d_model=g("d_model"), d_kv=g("d_kv"), d_ff=g("d_ff"), num_layers=g("num_layers"),
        num_decoder_layers=g("num_decoder_layers") or g("num_layers"), num_heads=g("num_heads"),
        relative_attention_num_buckets=g("relative_attention_num_buckets", 32),
        relative_attention_max_distance=g("relative_attention_max_distance", 128),
        dropout_rate=g("dropout_rate", 0.1), layer_norm_eps=g("layer_norm_epsilon", 1e-6), feed_forward_proj=proj,
        tie_word_embeddings=t5_scales_decoder_output(hf_config), initializer_factor=g("initializer_factor", 1.0),
        pad_token_id=g("pad_token_id", 0) if g("pad_token_id") is not None else 0,
        eos_token_id=g("eos_token_id", 1) if isinstance(g("eos_token_id", 1), int) else g("eos_token_id")[0],
        decoder_start_token_id=g("decoder_start_token_id", 0) if g("decoder_start_token_id") is not None else 0)
    return ("t5_v1_1" if proj.startswith("gated-") else "t5"), fields


def _t5_config_json(config, architecture: str, base: dict | None) -> dict:
    out = dict(base or {})
    act = config.activations[0]
    out.update(
        model_type="t5", vocab_size=config.vocab_size, d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
        num_layers=config.num_layers, num_decoder_layers=config.decoder_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance, dropout_rate=config.dropout_rate,
        layer_norm_epsilon=config.layer_norm_eps, feed_forward_proj=config.feed_forward_proj,
        dense_act_fn=JAXLM_TO_HF_ACTIVATION[act], is_gated_act=config.is_gated,
        initializer_factor=config.initializer_factor, pad_token_id=config.pad_token_id,
        eos_token_id=config.eos_token_id, decoder_start_token_id=config.decoder_start_token_id,
        is_encoder_decoder=True, is_decoder=False,
        # v1.1 (untied) as the released configs say it, and as transformers >= 5 reads it
        tie_word_embeddings=config.tie_word_embeddings, scale_decoder_outputs=config.tie_word_embeddings)
    out["architectures"] = [architecture]
    return out


def _kept_activation(base: dict, key: str, act: str) -> str:
    """The config.json spelling of an activation: the imported model's own where it means the same (e.g.
    'gelu_python' is not renamed)."""
    theirs = base.get(key)
    return theirs if theirs in HF_TO_JAXLM_ACTIVATION and HF_TO_JAXLM_ACTIVATION[theirs] == act else \
        JAXLM_TO_HF_ACTIVATION[act]


def _bert_config_json(config, architecture: str, base: dict | None) -> dict:
    out = dict(base or {})
    family = config.family
    out.update(
        model_type=family, vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size, max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size, hidden_act=_kept_activation(out, "hidden_act", config.hidden_act),
        hidden_dropout_prob=config.hidden_dropout, attention_probs_dropout_prob=config.attention_dropout,
        layer_norm_eps=config.layer_norm_eps, initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id, position_embedding_type="absolute", is_decoder=False,
        add_cross_attention=False, architectures=[architecture], tie_word_embeddings=True)
    if family == "roberta":
        if config.position_offset != config.pad_token_id + 1:
            raise ValueError(f"position_offset={config.position_offset} but pad_token_id={config.pad_token_id}: "
                             "Hugging Face RoBERTa needs position_offset = pad_token_id + 1")
        out.setdefault("bos_token_id", 0)
        out.setdefault("eos_token_id", 2)
    return out


def _gpt2_config_json(config, architecture: str, base: dict | None) -> dict:
    out = dict(base or {})
    out.update(
        model_type="gpt2", vocab_size=config.vocab_size, n_embd=config.hidden_size, n_layer=config.num_layers,
        n_head=config.num_heads, n_inner=config.intermediate_size, n_positions=config.max_position_embeddings,
        activation_function=_kept_activation(out, "activation_function", config.hidden_act),
        resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.attention_dropout,
        layer_norm_epsilon=config.layer_norm_eps, initializer_range=config.initializer_range,
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, architectures=[architecture],
        tie_word_embeddings=True)
    if base is None:
        out["pad_token_id"] = config.pad_token_id
    if base is not None and base.get("n_inner") is None and config.intermediate_size == 4 * config.hidden_size:
        out["n_inner"] = None
    return out


def _bert_export(config):
    """What `to-hf` writes a BERT / RoBERTa as: BertForPreTraining with NSP, else BertForMaskedLM (no pooler);
    RoBERTa as RobertaForMaskedLM."""
    if config.family == "roberta":
        return dataclasses.replace(config, pooler=False, nsp_head=False), "RobertaForMaskedLM"
    if not config.nsp_head:
        return dataclasses.replace(config, pooler=False), "BertForMaskedLM"
    return config, "BertForPreTraining"


# ---------------------------------------------------------------------------------------------------------
# The registry: one entry per family.

@dataclasses.dataclass(frozen=True)
class HFFamily:
    """A family's Hugging Face side: its parameter table, config.json translation both ways, and what `to-hf`
    writes (the export config: the jaxlm config of the architecture written, and that architecture's name)."""
    table: Callable[[str, Any], Table]  # (family name, jaxlm config) -> Table
    fields_from_hf: Callable[[dict], tuple[str, dict]]  # config.json -> (family name, jaxlm config fields)
    config_json: Callable[[Any, str, dict | None], dict]  # (jaxlm config, architecture, base) -> config.json
    export: Callable[[Any], tuple[Any, str]]  # jaxlm config -> (export config, architecture)
    dims: Callable[[Any], dict] = _heads_dims  # H heads, K head_dim, D hidden


BERT_HF = HFFamily(_bert_table, _bert_fields, _bert_config_json, _bert_export)
GPT2_HF = HFFamily(_gpt2_table, _gpt2_fields, _gpt2_config_json, lambda c: (c, "GPT2LMHeadModel"))
T5_HF = HFFamily(_t5_table, _t5_fields, _t5_config_json, lambda c: (c, "T5ForConditionalGeneration"), _t5_dims)
