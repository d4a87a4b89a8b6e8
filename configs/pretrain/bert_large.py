"""BERT-large pretraining as in Devlin et al. 2019 (arXiv:1810.04805), appendix A.2: the BERT-base recipe
(batch 256, 1M steps, 90% at 128 tokens then 10% at 512, Adam 1e-4 with 10k warmup and linear decay, weight
decay 0.01) with the large model (24 layers, 1024 wide, 16 heads, 340M parameters). The paper used 16 Cloud
TPUs (64 chips) for 4 days. Mesh: FSDP over 4 devices keeps the optimizer state of 340M parameters small per
chip; the rest is data parallel (v4-64: data=8, fsdp=4).

Phase 2: `bert_large.py:phase2` with --config.train.init_from=<phase-1 workdir>, as for bert_base.py.
"""
import importlib.util
import os


def _base():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert_base.py")
    spec = importlib.util.spec_from_file_location("bert_base", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(phase="phase1"):
    c = _base().get_config(phase)
    c.model.size = "large"
    c.mesh.data = -1
    c.mesh.fsdp = 4
    return c
