"""GPT-2 medium (355M) pretraining: the gpt2_small.py recipe with the medium model (24 layers, 1024 wide,
16 heads; Radford et al. 2019, table 2) and the GPT-3 paper's settings for its 350M model (Brown et al. 2020,
table 2.1, "Medium"): peak lr 3e-4, batch 0.5M tokens. FSDP over 4 devices (v4-64: data=8, fsdp=4).
"""
import importlib.util
import os


def get_config():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpt2_small.py")
    spec = importlib.util.spec_from_file_location("gpt2_small", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model.size = "medium"
    c.optimizer.learning_rate = 3e-4
    c.optimizer.end_learning_rate = 3e-5
    c.mesh.fsdp = 4
    return c
