"""A seconds-long pretraining config for tests: `tests/configs/tiny.py:bert`, `:roberta`, `:gpt2` or `:xlnet` (a
permutation LM carrying an 8-token memory from step to step)."""
from jaxlm.config_defaults import pretrain_config

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64)


def get_config(family="gpt2"):
    c = pretrain_config()
    c.objective = {"bert": "mlm_nsp", "roberta": "mlm", "gpt2": "clm", "xlnet": "plm"}[family]
    c.model.family = family
    c.model.size = ""
    if family == "xlnet":  # relative positions: no position table
        c.model.update({k: v for k, v in TINY.items() if k != "max_position_embeddings"}, mem_len=8, reuse_len=8)
        c.data.num_predict = 5
    else:
        c.model.update(TINY)
    c.data.tokenizer_vocab_size = 500
    c.data.seq_len = 32
    c.data.max_predictions = 5
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 2
    c.train.batch_size = 16
    c.train.num_steps = 20
    c.train.log_every = 1
    c.train.eval_every = 0
    c.train.eval_batches = 2
    c.train.checkpoint_every = 5
    c.train.cpu_peak_flops = 1e11
    c.train.progress_bar = False
    return c
