"""T5-base (222.9M, v1.0) pretraining after Raffel et al. 2020: the recipe of t5_small.py (the paper's baseline,
section 3.1.2: 2^19 steps of 128 x 512 tokens on C4, Adafactor at 0.01 with an inverse square root decay after
10^4 steps; span corruption, 15% in spans of mean length 3, sections 3.3.3-3.3.4) with the baseline model of
section 3.1.1: 12 + 12 layers, d_model 768, d_ff 3072, 12 heads of 64.
"""
import importlib.util
import os


def _small():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "t5_small.py")
    spec = importlib.util.spec_from_file_location("t5_small", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config():
    c = _small().get_config()
    c.model.size = "base"
    return c
