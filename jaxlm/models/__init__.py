"""Model families as pure Flax Linen modules configured by frozen dataclasses, behind one interface
(jaxlm.models.family.ModelFamily) and one registry (jaxlm.models.registry)."""
from jaxlm.models.bert import BertConfig, BertForPreTraining, BertModel
from jaxlm.models.common import count_params
from jaxlm.models.family import ModelFamily
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.registry import FAMILIES, build_model, family_of, get_family, get_model_config
from jaxlm.models.t5 import T5Config, T5ForConditionalGeneration
from jaxlm.models.xlnet import XLNetConfig, XLNetLMHeadModel, XLNetModel

__all__ = ["FAMILIES", "BertConfig", "BertForPreTraining", "BertModel", "GPT2Config", "GPT2LMHeadModel",
           "ModelFamily", "T5Config", "T5ForConditionalGeneration", "XLNetConfig", "XLNetLMHeadModel", "XLNetModel",
           "build_model", "count_params", "family_of", "get_family", "get_model_config"]
