"""Quickstart: a small BERT pretrained with MLM + NSP on the embedded corpus (CPython's reference manual).

5 to 12 minutes on 2 CPU cores, offline (11.5 min on 2026-12-03: 1.1 s/step on cores whose fp32 matmul peak
measured 213 GFLOP/s); the demo (`make demo`) runs it. The MLM accuracy at the end is well
above the unigram baseline (always predicting the most frequent token).
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "mlm_nsp"
    c.model.family = "bert"
    c.model.size = "mini"
    c.data.dataset = "jaxlm_pydoc"
    c.data.tokenizer_vocab_size = 2000
    c.data.seq_len = 128
    c.data.max_predictions = 20
    c.data.pairs_per_document = 8  # ~800 tokens per manual section: several pairs from each
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 60
    c.optimizer.weight_decay = 0.01
    c.train.batch_size = 32
    c.train.num_steps = 600
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.eval_batches = 8
    c.train.checkpoint_every = 200
    return c
