"""Every shipped config loads, names a real model and a valid optimizer, fits its batch, and takes any model field
from the command line."""
import glob
import os
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from jaxlm.config_defaults import check_overrides, load_config_file
from jaxlm.models import count_params, family_of
from jaxlm.models.registry import model_config_from_section
from jaxlm.objectives import OBJECTIVES, objective_from_config
from jaxlm.train import OptimizerConfig
from jaxlm.workdir import abstract_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "pretrain", "*.py"))) + [
    os.path.join(ROOT, "configs", "pretrain", "bert_base.py:phase2")]
# roberta_glue.py and xlnet_glue.py need their task argument; the others have a default.
FINETUNE_CONFIGS = [p + (":rte" if p.endswith(("roberta_glue.py", "xlnet_glue.py")) else "")
                    for p in sorted(glob.glob(os.path.join(ROOT, "configs", "finetune", "*.py")))]

# Parameter counts of the recipes' models at the papers' vocabulary sizes (Hugging Face's counts).
EXPECTED = {"bert_base": 110_106_428, "bert_large": 336_226_108, "roberta_base": 124_697_433,
            "gpt2_small": 124_439_808, "gpt2_medium": 354_823_168, "t5_small": 60_506_624, "t5_base": 222_903_552,
            "xlnet_base": 116_750_336, "xlnet_large": 360_300_800}  # XLNetLMHeadModel


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_builds(path):
    config = load_config_file(path)
    model_config = model_config_from_section(config.model, vocab_size=config.data.tokenizer_vocab_size)
    objective = objective_from_config(config).for_model(model_config)  # XLNet's memory settings checked too
    family = family_of(model_config)
    objective.check_model(family, model_config)
    assert (family.max_length(model_config) or config.data.seq_len) >= config.data.seq_len  # T5: no position table
    shapes = abstract_params(family.build(model_config), objective.init_inputs(family, model_config))
    name = os.path.basename(path).split(".")[0]
    if name in EXPECTED:
        assert count_params(shapes) == EXPECTED[name]
    OptimizerConfig.from_dict(config.optimizer).resolved(config.train.num_steps)
    assert config.train.batch_size % config.train.num_microbatches == 0
    assert config.objective in OBJECTIVES


def _parsed(path, *overrides, monkeypatch):
    """The config as `python -m jaxlm.pretrain --config=PATH OVERRIDES...` parses it (ml_collections reads the
    overrides from sys.argv)."""
    argv = ["jaxlm", f"--config={path}", *overrides]
    check_overrides(argv)
    monkeypatch.setattr(sys, "argv", argv)
    values = flags.FlagValues()
    flag = config_flags.DEFINE_config_file("config", None, flag_values=values, lock_config=True)
    values(argv)
    return flag.value


@pytest.mark.parametrize("path", CONFIGS + FINETUNE_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_any_model_field_is_settable_on_every_config(path, monkeypatch):
    config = _parsed(path, "--config.model.num_layers=2", "--config.model.dtype=bfloat16", monkeypatch=monkeypatch)
    assert (config.model.num_layers, config.model.dtype) == (2, "bfloat16")
    if config.model.family:  # the model a random backbone / a pretraining run would build
        model_config = model_config_from_section(config.model, vocab_size=1000)
        assert (model_config.num_layers, model_config.dtype) == (2, "bfloat16")


def test_a_misspelt_or_foreign_model_field_names_the_familys_fields(monkeypatch):
    quickstart = os.path.join(ROOT, "configs", "pretrain", "quickstart.py")
    with pytest.raises(SystemExit, match=r"config.model.num_layer: .*num_layers"):
        check_overrides(["jaxlm", f"--config={quickstart}", "--config.model.num_layer=2"])
    # d_model is a T5 field: a BERT config refuses it, naming BERT's fields.
    with pytest.raises(SystemExit, match=r"model family 'bert' has no field 'd_model'. Valid fields: .*hidden_size"):
        check_overrides(["jaxlm", f"--config={quickstart}", "--config.model.d_model=64"])
    with pytest.raises(ValueError, match=r"unknown BertConfig field\(s\) \['d_model'\] .*valid fields: .*hidden_size"):
        config = load_config_file(quickstart)
        config.model.d_model = 64
        model_config_from_section(config.model, vocab_size=100)


def test_logical_axis_rules_are_configurable(monkeypatch):
    from jaxlm import sharding

    quickstart = os.path.join(ROOT, "configs", "pretrain", "quickstart.py")
    config = _parsed(quickstart, "--config.mesh.logical_axis_rules=(('embed', None), ('mlp', ('fsdp', 'tensor')))",
                     monkeypatch=monkeypatch)
    rules = dict(sharding.merge_rules(config.mesh.logical_axis_rules))
    assert rules["embed"] is None and rules["mlp"] == ("fsdp", "tensor") and rules["heads"] == "tensor"
    with pytest.raises(ValueError, match=r"logical_axis_rules: 'mlp' -> 'model': \['model'\] are not mesh axes"):
        sharding.merge_rules((("mlp", "model"),))


def test_bert_phase2_is_512_tokens_continuing_phase1():
    phase1 = load_config_file(os.path.join(ROOT, "configs", "pretrain", "bert_base.py"))
    phase2 = load_config_file(os.path.join(ROOT, "configs", "pretrain", "bert_base.py:phase2"))
    assert (phase1.data.seq_len, phase2.data.seq_len) == (128, 512)
    assert phase1.train.num_steps == 900_000 and phase2.train.num_steps == 1_000_000
    assert phase1.optimizer.total_steps == phase2.optimizer.total_steps == 1_000_000
