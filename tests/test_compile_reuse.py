"""Eval and decode steps compile once per shape, however many times a run calls them (read off jax's compile log)."""
import os
import subprocess
import sys

import jax
import numpy as np

from jaxlm.decoding import GenerationConfig, adapter_for, generate
from jaxlm.models import build_model, get_model_config
from jaxlm.train.metrics import loss_history, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "configs", "tiny.py")


def test_pretraining_evaluates_five_times_with_one_compiled_eval_step(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_LOG_COMPILES": "1", "JAXLM_COMPILATION_CACHE": "off",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    cmd = [sys.executable, "-m", "jaxlm.pretrain", f"--config={TINY}:gpt2", f"--workdir={tmp_path / 'run'}",
           f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.tokenizer=bytes",
           "--config.train.num_steps=10", "--config.train.eval_every=2", "--config.train.checkpoint_every=0"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    eval_steps, _ = loss_history(read_metrics(str(tmp_path / "run")), "eval")
    assert eval_steps == [2, 4, 6, 8, 10], eval_steps
    assert log.count("Compiling jit(evaluate)") == 1, [line for line in log.splitlines() if "Compiling jit(" in line]


def test_generating_twice_with_the_same_shapes_compiles_nothing_the_second_time(caplog):
    config = get_model_config("gpt2", "small", num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                              vocab_size=100, max_position_embeddings=32)
    params = build_model(config).init(jax.random.key(0), np.zeros((1, 4), np.int32))["params"]
    params = jax.tree.map(lambda x: getattr(x, "value", x), params, is_leaf=lambda x: hasattr(x, "value"))
    adapter, gen = adapter_for(config), GenerationConfig(max_new_tokens=4, pad_id=0)
    prompts = np.arange(8, dtype=np.int32).reshape(2, 4)
    with jax.log_compiles(True):
        first = generate(adapter, params, prompts, config=gen).tokens
        caplog.clear()
        second = generate(adapter, params, prompts + 1, config=gen).tokens
    assert not [r.getMessage() for r in caplog.records if "Compiling" in r.getMessage()]
    assert np.asarray(first).shape == np.asarray(second).shape == (2, 4)
