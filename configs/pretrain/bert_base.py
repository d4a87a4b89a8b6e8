"""BERT-base pretraining as in Devlin et al. 2019 (arXiv:1810.04805), section 3.1 and appendix A.2.

MLM + NSP; batch 256 sequences; 1,000,000 steps: the first 90% at 128 tokens, the last 10% at 512 tokens;
Adam lr 1e-4, beta1 0.9, beta2 0.999, L2 weight decay 0.01, 10,000 warmup steps then linear decay;
dropout 0.1 on all layers; GELU. The paper trained on 4 Cloud TPUs (16 chips) for 4 days.

Phase 1:  python -m jaxlm.pretrain --config=configs/pretrain/bert_base.py --workdir=gs://BUCKET/bert_base_128
Phase 2:  python -m jaxlm.pretrain --config=configs/pretrain/bert_base.py:phase2 --workdir=gs://BUCKET/bert_base_512 \\
              --config.train.init_from=gs://BUCKET/bert_base_128

Data: the paper used BooksCorpus (800M words) + English Wikipedia (2,500M words); BooksCorpus is no longer
distributed, so the default is TFDS `wikipedia/20230601.en` (prepare it in array_record format) and a
30,522-piece vocabulary (the paper's WordPiece size; here a sentencepiece model trained on the data, or pass
an imported `vocab.txt` model's tokenizer via config.data.tokenizer).
Mesh: pure data parallelism fits BERT-base on any slice (v4-32: data=16); use fsdp for larger batches/models.
"""
from jaxlm.config_defaults import pretrain_config


def get_config(phase="phase1"):
    if phase not in ("phase1", "phase2"):
        raise ValueError(f"bert_base.py:{phase}: choose phase1 or phase2")
    c = pretrain_config()
    c.objective = "mlm_nsp"
    c.model.family = "bert"
    c.model.size = "base"
    c.model.dtype = "bfloat16"
    c.data.dataset = "wikipedia/20230601.en"
    c.data.train_split = "train[1%:]"  # TFDS wikipedia has only a train split: hold out 1% for evaluation
    c.data.eval_split = "train[:1%]"
    c.data.tokenizer_vocab_size = 30522
    c.data.seq_len = 128 if phase == "phase1" else 512
    c.data.max_predictions = 20 if phase == "phase1" else 80  # the released code's max_predictions_per_seq
    c.data.pairs_per_document = 10  # the released code's dupe_factor
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 10_000
    c.optimizer.total_steps = 1_000_000
    c.optimizer.schedule = "linear"
    c.optimizer.weight_decay = 0.01
    c.train.batch_size = 256
    c.train.num_steps = 900_000 if phase == "phase1" else 1_000_000  # phase 2 continues phase 1's step
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 50
    c.train.checkpoint_every = 10_000
    c.mesh.data = -1
    return c
