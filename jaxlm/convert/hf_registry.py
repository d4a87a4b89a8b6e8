"""Which Hugging Face table reads and writes each model family, and config.json's model_type -> family: one line
per family (the tables live in hf_tables.py and, for XLNet, hf_xlnet.py)."""
from __future__ import annotations

from jaxlm.convert.hf_tables import BERT_HF, GPT2_HF, T5_HF, HFFamily
from jaxlm.convert.hf_xlnet import XLNET_HF

HF_FAMILIES: dict[str, HFFamily] = {"bert": BERT_HF, "roberta": BERT_HF, "gpt2": GPT2_HF, "t5": T5_HF, "t5_v1_1": T5_HF,
                                    "xlnet": XLNET_HF}
# config.json's model_type -> the family that reads it (T5's fields say whether it is v1.1).
MODEL_TYPES = {"bert": "bert", "roberta": "roberta", "gpt2": "gpt2", "t5": "t5", "xlnet": "xlnet"}


def hf_family(family: str) -> HFFamily:
    if family not in HF_FAMILIES:
        raise ValueError(f"no Hugging Face table for model family {family!r}; supported: {sorted(HF_FAMILIES)}")
    return HF_FAMILIES[family]


def jaxlm_fields_from_hf(hf_config: dict) -> tuple[str, dict]:
    """config.json -> (family, fields of its jaxlm config). Features jaxlm lacks are errors naming the key."""
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ValueError(f"config.json: model_type={model_type!r} (architectures={hf_config.get('architectures')}) "
                         f"is not supported; jaxlm imports {sorted(MODEL_TYPES)}")
    return hf_family(MODEL_TYPES[model_type]).fields_from_hf(hf_config)


def hf_config_from_jaxlm(config, architecture: str, base: dict | None = None, dtype: str = "float32") -> dict:
    """jaxlm config -> config.json. `base` (the imported model's config.json) keeps the fields jaxlm does not
    model (token ids, tokenizer_class, ...); the architecture fields always come from `config`."""
    out = hf_family(config.family).config_json(config, architecture, base)
    out.pop("torch_dtype", None)
    out["dtype"] = dtype
    return out
