"""Quickstart for T5: a small encoder-decoder pretrained with span corruption on the embedded corpus (CPython's
reference manual), offline; a few minutes on 2 CPU cores.

The tokenizer is trained with 100 sentinels (<extra_id_0..99>), as T5's; 128 encoder tokens per row give
T5's 29 target tokens (15% of 141 raw tokens dropped in spans of mean length 3). The loss and accuracy are over
the targets: the sentinels (easy) and the dropped tokens (hard).
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "span_corruption"
    c.model.family = "t5"
    c.model.size = ""
    c.model.update(d_model=256, d_kv=64, d_ff=1024, num_heads=4, num_layers=3, dropout_rate=0.0)
    c.data.dataset = "jaxlm_pydoc"
    c.data.tokenizer_vocab_size = 2000
    c.data.tokenizer_num_sentinels = 100
    c.data.seq_len = 128
    c.data.noise_density = 0.15
    c.data.mean_noise_span_length = 3.0
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 50
    c.optimizer.schedule = "cosine"
    c.optimizer.weight_decay = 0.0
    c.train.batch_size = 16
    c.train.num_steps = 400
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.eval_batches = 8
    c.train.checkpoint_every = 200
    return c
