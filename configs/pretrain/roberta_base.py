"""RoBERTa-base pretraining as in Liu et al. 2019 (arXiv:1907.11692), table 9 and section 4.

Dynamic masking (a new mask every time a sequence is seen), no NSP, FULL-SENTENCES inputs packed up to 512
tokens across document boundaries; batch 8K sequences, 500K steps; Adam peak lr 6e-4, beta2 0.98, eps 1e-6,
weight decay 0.01, 24K warmup steps then linear decay; dropout 0.1. Vocabulary: 50K byte-level BPE (here
a sentencepiece BPE of 50,265 pieces, or RoBERTa's own files imported with `jaxlm.convert`).

Data: the paper's 160GB (BookCorpus, CC-News, OpenWebText, Stories) is not in TFDS; `c4/en` is the default
stand-in (prepare it in array_record format). 8K x 512 tokens per step needs a pod: v4-128 (64 chips) with
data=16, fsdp=4, and 2 microbatches for memory.
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "mlm"
    c.model.family = "roberta"
    c.model.size = "base"
    c.model.dtype = "bfloat16"
    c.data.dataset = "c4/en"
    c.data.tokenizer_vocab_size = 50265
    c.data.tokenizer_model_type = "bpe"
    c.data.seq_len = 512
    c.data.max_predictions = 80
    c.optimizer.learning_rate = 6e-4
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.warmup_steps = 24_000
    c.optimizer.schedule = "linear"
    c.optimizer.weight_decay = 0.01
    c.train.batch_size = 8192
    c.train.num_microbatches = 2
    c.train.num_steps = 500_000
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 10
    c.train.checkpoint_every = 5_000
    c.mesh.data = -1
    c.mesh.fsdp = 4
    return c
