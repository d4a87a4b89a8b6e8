"""Named model sizes (the papers' and the released checkpoints' shapes) and one place to build a model."""
import dataclasses

from jaxlm.models.bert import BertConfig, BertForPreTraining
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.t5 import T5Config, T5ForConditionalGeneration


def _bert(layers, hidden):
    return dict(num_layers=layers, hidden_size=hidden, num_heads=hidden // 64, intermediate_size=4 * hidden)


# BERT tiny..medium: Turc et al. 2019 ("Well-Read Students Learn Better"); base/large: Devlin et al. 2019.
BERT_SIZES = {
    "tiny": _bert(2, 128), "mini": _bert(4, 256), "small": _bert(4, 512), "medium": _bert(8, 512),
    "base": _bert(12, 768), "large": _bert(24, 1024),
}
# RoBERTa (Liu et al. 2019): BERT shapes, 50265 BPE tokens, 514 positions offset by padding_idx=1, no NSP.
ROBERTA_COMMON = dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                      position_offset=2, layer_norm_eps=1e-5, nsp_head=False, pooler=False)
ROBERTA_SIZES = {"base": {**BERT_SIZES["base"], **ROBERTA_COMMON}, "large": {**BERT_SIZES["large"], **ROBERTA_COMMON}}
# GPT-2 (Radford et al. 2019); sizes of the released 124M / 355M / 774M / 1.5B checkpoints.
GPT2_SIZES = {
    "small": dict(num_layers=12, hidden_size=768, num_heads=12, intermediate_size=3072),
    "medium": dict(num_layers=24, hidden_size=1024, num_heads=16, intermediate_size=4096),
    "large": dict(num_layers=36, hidden_size=1280, num_heads=20, intermediate_size=5120),
    "xl": dict(num_layers=48, hidden_size=1600, num_heads=25, intermediate_size=6400),
}



def _t5(d_model, d_ff, d_kv, num_heads, num_layers):
    return dict(d_model=d_model, d_ff=d_ff, d_kv=d_kv, num_heads=num_heads, num_layers=num_layers)


# T5 v1.0: Raffel et al. 2020, section 3.7 and the released checkpoints (google-t5/t5-small ... t5-11b).
T5_SIZES = {
    "small": _t5(512, 2048, 64, 8, 6), "base": _t5(768, 3072, 64, 12, 12), "large": _t5(1024, 4096, 64, 16, 24),
    "3b": _t5(1024, 16384, 128, 32, 24), "11b": _t5(1024, 65536, 128, 128, 24),
}
# T5 v1.1 (google/t5-v1_1-*): gated-GELU feed-forward, untied output layer, no dropout in pretraining.
T5_V1_1_COMMON = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
T5_V1_1_SIZES = {
    "small": _t5(512, 1024, 64, 6, 8), "base": _t5(768, 2048, 64, 12, 12), "large": _t5(1024, 2816, 64, 16, 24),
    "xl": _t5(2048, 5120, 64, 32, 24), "xxl": _t5(4096, 10240, 64, 64, 24),
}
# Fields every config of a family starts from (before its size and the caller's overrides).
FAMILY_DEFAULTS = {"roberta": ROBERTA_COMMON, "t5_v1_1": T5_V1_1_COMMON}

FAMILIES = {
    "bert": (BertConfig, BertForPreTraining, BERT_SIZES),
    "roberta": (BertConfig, BertForPreTraining, ROBERTA_SIZES),
    "gpt2": (GPT2Config, GPT2LMHeadModel, GPT2_SIZES),
    "t5": (T5Config, T5ForConditionalGeneration, T5_SIZES),
    "t5_v1_1": (T5Config, T5ForConditionalGeneration, T5_V1_1_SIZES),
}


def get_model_config(family: str, size: str | None = None, **overrides):
    """`get_model_config('bert', 'base', scan_layers=True)`. Unknown families, sizes or fields are errors."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; choose one of {sorted(FAMILIES)}")
    config_cls, _, sizes = FAMILIES[family]
    fields = dict(FAMILY_DEFAULTS.get(family, {}))
    if size is not None:
        if size not in sizes:
            raise ValueError(f"unknown {family} size {size!r}; choose one of {list(sizes)}")
        fields.update(sizes[size])
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} field(s) {unknown}; valid fields: {sorted(valid)}")
    fields.update(overrides)
    return config_cls(**fields)


def build_model(config):
    """The Flax module for a config object."""
    for config_cls, model_cls, _ in FAMILIES.values():
        if type(config) is config_cls:
            return model_cls(config)
    raise TypeError(f"no model for config of type {type(config).__name__}")
