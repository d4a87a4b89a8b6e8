"""XLNet-large pretraining as in Yang et al. 2019 (arXiv:1906.08237), section 3.1 and appendix A.3 (table 7,
"Hyperparameters for pretraining"), with the flags the authors' README lists for it (zihangdai/xlnet, "Pretraining
with XLNet").

Table 7: 24 layers, hidden 1024, 16 heads of 64, feed-forward 4096, dropout 0.1 (attention dropout 0.1; GeLU
dropout 0.0), partial prediction K = 6, sequence length 512, batch 8192, Adam lr 4e-4 with 40,000 warmup steps
then linear decay over 500K steps, Adam epsilon 1e-6, weight decay 0.01. The README's pretraining flags:
perm_size 256, num_predict 85 (512 / 85 ~ 6), mask_alpha 6, mask_beta 1, untie_r, mem_len 384, reuse_len 256.
The paper trained on 512 TPU v3 chips for 5.5 days (section 3.1).

The memory as the README's flags set it: mem_len 384, reuse_len 256 and bi_data (its data-preparation command),
so each row continues its stream from the previous step and attends to the cached states of the 384 tokens
before it (jaxlm.objectives.plm, the recurrent layout). That layout tokenizes the training split into host memory
at start: for C4 itself train on a slice of the split that fits (config.data.train_split), or prepare the streams
offline (not built).

Data: the paper's BooksCorpus + Wikipedia + Giga5 + ClueWeb + Common Crawl (32.9B subword pieces) is not
redistributable; the default is TFDS `c4/en` (prepare it in array_record format) with a 32,000-piece
sentencepiece model trained on it (the paper's vocabulary size).

    python -m jaxlm.pretrain --config=configs/pretrain/xlnet_large.py --workdir=gs://BUCKET/xlnet_large
"""
from jaxlm.config_defaults import pretrain_config


def get_config():
    c = pretrain_config()
    c.objective = "plm"
    c.model.family = "xlnet"
    c.model.size = "large"
    c.model.dropout = 0.1
    c.model.dtype = "bfloat16"
    c.model.mem_len = 384
    c.model.reuse_len = 256
    c.model.bi_data = True
    c.data.dataset = "c4/en"
    c.data.tokenizer_vocab_size = 32000
    c.data.seq_len = 512
    c.data.num_predict = 85
    c.data.perm_size = 256
    c.data.max_span = 5
    c.data.mask_alpha = 6
    c.data.mask_beta = 1
    c.data.pairs_per_document = 1
    c.optimizer.learning_rate = 4e-4
    c.optimizer.warmup_steps = 40_000
    c.optimizer.schedule = "linear"
    c.optimizer.eps = 1e-6
    c.optimizer.weight_decay = 0.01
    c.train.batch_size = 8192
    c.train.num_steps = 500_000
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 5_000
    c.mesh.data = -1
    c.mesh.fsdp = 8  # 360M parameters: FSDP keeps Adam's state small per chip
    return c
