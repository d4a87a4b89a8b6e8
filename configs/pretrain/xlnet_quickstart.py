"""Quickstart XLNet: a small XLNet pretrained with permutation LM on the embedded corpus (CPython's reference
manual), offline, on 2 CPU cores: 600 steps took 20.7 min (2.0 s/step, the cores shared with a test run; AMD
EPYC) and ended at 27.4% dev target accuracy against the unigram baseline's 4.1% (always predicting the most
frequent target token); 16.6% at step 200, 23.6% at 400.

    python -m jaxlm.pretrain --config=configs/pretrain/xlnet_quickstart.py --workdir=runs/xlnet-quickstart

Shapes are XLNet-base's scaled down (4 layers of width 256); partial prediction K = seq_len / num_predict = 6 as
in the paper (section 2.3, Yang et al. 2019); sentence pairs laid out `A <sep> B <sep> <cls>` as the authors'
data_utils.py. No memory (mem_len 0): each row is one sentence pair.
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "plm"
    c.model.family = "xlnet"
    c.model.size = ""
    c.model.num_layers = 4
    c.model.hidden_size = 256
    c.model.num_heads = 4
    c.model.intermediate_size = 1024
    c.data.dataset = "jaxlm_pydoc"
    c.data.tokenizer_vocab_size = 2000
    c.data.seq_len = 128
    c.data.num_predict = 21  # K = 128 / 21 ~ 6
    c.data.perm_size = 128
    c.data.pairs_per_document = 8  # ~800 tokens per manual section: several pairs from each
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 60
    c.optimizer.weight_decay = 0.01
    c.optimizer.eps = 1e-6
    c.train.batch_size = 32
    c.train.num_steps = 600
    c.train.log_every = 50
    c.train.eval_every = 200
    c.train.eval_batches = 8
    c.train.checkpoint_every = 200
    return c
