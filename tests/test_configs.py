"""Every shipped pretraining config loads, names a real model and a valid optimizer, and fits its batch."""
import glob
import os

import jax
import pytest
import flax.linen as nn

from jaxlm.config_defaults import load_config_file
from jaxlm.models import build_model, count_params
from jaxlm.pretrain import dummy_inputs, model_config_from
from jaxlm.train import OptimizerConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "pretrain", "*.py"))) + [
    os.path.join(ROOT, "configs", "pretrain", "bert_base.py:phase2")]

# Parameter counts of the recipes' models at the papers' vocabulary sizes (Hugging Face's counts).
EXPECTED = {"bert_base": 110_106_428, "bert_large": 336_226_108, "roberta_base": 124_697_433,
            "gpt2_small": 124_439_808, "gpt2_medium": 354_823_168, "t5_small": 60_506_624, "t5_base": 222_903_552}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_builds(path):
    config = load_config_file(path)
    model_config = model_config_from(config, config.data.tokenizer_vocab_size)
    assert getattr(model_config, "max_position_embeddings", config.data.seq_len) >= config.data.seq_len  # T5: none
    dummy = dummy_inputs(config.objective, 1, 16, config.data.max_predictions)
    abstract = jax.eval_shape(lambda: build_model(model_config).init(jax.random.key(0), **dummy))
    name = os.path.basename(path).split(".")[0]
    if name in EXPECTED:
        assert count_params(nn.unbox(abstract["params"])) == EXPECTED[name]
    optimizer = config.optimizer.to_dict()
    if optimizer["total_steps"] < 0:
        optimizer["total_steps"] = config.train.num_steps
    OptimizerConfig.from_dict(optimizer)
    assert config.train.batch_size % config.train.num_microbatches == 0
    assert config.objective in ("mlm", "mlm_nsp", "clm", "span_corruption")


def test_bert_phase2_is_512_tokens_continuing_phase1():
    phase1 = load_config_file(os.path.join(ROOT, "configs", "pretrain", "bert_base.py"))
    phase2 = load_config_file(os.path.join(ROOT, "configs", "pretrain", "bert_base.py:phase2"))
    assert (phase1.data.seq_len, phase2.data.seq_len) == (128, 512)
    assert phase1.train.num_steps == 900_000 and phase2.train.num_steps == 1_000_000
    assert phase1.optimizer.total_steps == phase2.optimizer.total_steps == 1_000_000
