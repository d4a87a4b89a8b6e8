"""The model families jaxlm knows, keyed by name: one line per family (see jaxlm.models.family), and the one
place a config's model section becomes a model config."""
import dataclasses
from typing import Any, Mapping

from jaxlm.models.bert import BERT, ROBERTA
from jaxlm.models.family import ModelFamily, is_runtime_field
from jaxlm.models.gpt2 import GPT2
from jaxlm.models.t5 import T5, T5_V1_1
from jaxlm.models.xlnet import XLNET

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (BERT, ROBERTA, GPT2, T5, T5_V1_1, XLNET)}


def get_family(name: str) -> ModelFamily:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; choose one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def family_of(config) -> ModelFamily:
    """The family a model config belongs to (its `family` field)."""
    name = getattr(config, "family", None)
    if name is None:
        raise TypeError(f"{type(config).__name__} is not a jaxlm model config (it has no `family` field)")
    return get_family(name)


def get_model_config(family: str, size: str | None = None, **overrides):
    """`get_model_config('bert', 'base', scan_layers=True)`. Unknown families, sizes or fields are errors."""
    return get_family(family).make_config(size, **overrides)


def build_model(config):
    """The pretraining model (with its LM head) for a config object."""
    return family_of(config).build(config)


def all_field_types() -> dict[str, type]:
    """Every config field of every family (except `family`) with its type: config.model accepts each of them, so
    any field can be set from the command line on any config (jaxlm.config_defaults)."""
    out: dict[str, type] = {}
    for family in FAMILIES.values():
        for f in dataclasses.fields(family.config_cls):
            if f.name == "family" or f.name in out:
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            out[f.name] = type(default) if default is not None else int
    return out


def overrides_of(section: Mapping[str, Any]) -> dict[str, Any]:
    """The model fields a config's model section sets: every key but family / size whose value is not None."""
    return {k: v for k, v in section.items() if k not in ("family", "size") and v is not None}


def model_config_from_section(section: Mapping[str, Any], **defaults):
    """The model config of a config's model section (family, size and the fields it sets), `defaults` filling
    fields it leaves unset (e.g. the tokenizer's vocab_size). A field the family lacks names the valid ones."""
    family = get_family(section["family"])
    return family.make_config(section.get("size") or None, **{**defaults, **overrides_of(section)})


def apply_runtime_overrides(model_config, section: Mapping[str, Any], where: str = "the checkpoint"):
    """A checkpoint's model config with the run-time fields the section sets (dtype, scan_layers, remat_policy,
    attention_impl, dropout rates); a field that would change the model's shape is an error."""
    family = family_of(model_config)
    overrides = overrides_of(section)
    valid = set(family.field_names())
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(f"config.model.{unknown[0]}: {type(model_config).__name__} (family {family.name!r}) has no "
                         f"such field; valid fields: {sorted(valid - {'family'})}")
    shape = sorted(k for k in overrides if not is_runtime_field(k) and overrides[k] != getattr(model_config, k))
    if shape:
        raise ValueError(f"config.model.{shape[0]}={overrides[shape[0]]!r}: {where} fixes the model's shape "
                         f"({shape[0]}={getattr(model_config, shape[0])!r}); only run-time fields can change "
                         "(dtype, scan_layers, remat_policy, attention_impl, dropout rates)")
    return dataclasses.replace(model_config, **overrides)
