"""GPT-2 small (124M) pretraining after Radford et al. 2019 ("Language Models are Unsupervised Multitask
Learners", section 2.3): context 1024 tokens, batch 512 sequences, byte-level BPE of 50,257 tokens, pre-LN.

The GPT-2 paper does not give its optimizer settings; this takes them from Brown et al. 2020 (GPT-3,
arXiv:2005.14165, table 2.1, "Small" 125M): Adam beta1 0.9, beta2 0.95, eps 1e-8, peak lr 6e-4, cosine decay
to 10% of the peak, linear warmup (375M tokens ~ 715 steps here), weight decay 0.1, gradient clipping at 1.0,
batch 0.5M tokens (512 x 1024). 600K steps ~ 300B tokens, the GPT-3 budget.

Data: WebText is not public and not in TFDS; `c4/en` is the default stand-in (prepare it as array_record).
Mesh: data parallel (v4-32: data=16) with bf16 compute; chunked cross-entropy keeps the 50K-vocab logits small.
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "clm"
    c.model.family = "gpt2"
    c.model.size = "small"
    c.model.dtype = "bfloat16"
    c.data.dataset = "c4/en"
    c.data.tokenizer_vocab_size = 50257
    c.data.tokenizer_model_type = "bpe"
    c.data.seq_len = 1024
    c.loss.logits_chunk_size = 4096
    c.optimizer.learning_rate = 6e-4
    c.optimizer.end_learning_rate = 6e-5
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.warmup_steps = 715
    c.optimizer.schedule = "cosine"
    c.optimizer.weight_decay = 0.1
    c.optimizer.max_grad_norm = 1.0
    c.train.batch_size = 512
    c.train.num_steps = 600_000
    c.train.log_every = 100
    c.train.eval_every = 5_000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 5_000
    c.mesh.data = -1
    return c
