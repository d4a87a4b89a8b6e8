"""Model families as pure Flax Linen modules configured by frozen dataclasses."""
from jaxlm.models.bert import BertConfig, BertForPreTraining, BertModel
from jaxlm.models.common import count_params
from jaxlm.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxlm.models.registry import build_model, get_model_config
from jaxlm.models.t5 import T5Config, T5ForConditionalGeneration

__all__ = ["BertConfig", "BertForPreTraining", "BertModel", "GPT2Config", "GPT2LMHeadModel", "T5Config",
           "T5ForConditionalGeneration", "build_model",
           "count_params", "get_model_config"]
