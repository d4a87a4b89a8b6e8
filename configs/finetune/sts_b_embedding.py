"""STS-B with sentence embeddings (a bi-encoder): each sentence embedded alone, the pair scored by the cosine of
the two; dev Spearman / Pearson of the cosine with the gold score (SBERT papers print Spearman x 100).

Zero-shot (score the model as it is, e.g. an imported sentence-transformers model or a pretrained encoder with
mean pooling): `--config.train.num_epochs=0`.

Hyperparameters: sentence-transformers' training_stsb.py recipe, CosineSimilarityLoss on the train split,
4 epochs, batch 16, lr 2e-5 with 10% warmup, weight decay 0.01, mean pooling.
Reported (Reimers & Gurevych 2019, Spearman x 100 on the STS-B *test* split, whose labels GLUE hides, so dev
figures here compare only roughly): SBERT-NLI-base, never trained on STS-B, 77.03 (table 1); SBERT-STSb-base,
trained on STS-B as here, 84.67 +- 0.19 (table 2).
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "similarity"
    c.data.format = "stsb"
    c.data.train_file = shared_data("glue", "STS-B", "train.tsv")
    c.data.eval_file = shared_data("glue", "STS-B", "dev.tsv")
    c.data.score_max = 5.0
    c.data.max_len = 128
    c.embedding.pooling = "mean"
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 16
    c.train.eval_batch_size = 64
    c.train.num_epochs = 4.0
    return c
