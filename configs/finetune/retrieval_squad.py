"""Dense retrieval on SQuAD v1.1: the dev questions as queries over their paragraphs (~10.6k questions, ~2.1k
paragraphs in 48 articles), split by article (every 5th article held out: 10 articles, no paragraph in both
splits); a dual encoder fine-tuned with in-batch negatives; dev recall@1/5/10, MRR@10, nDCG@10 over the held-out
articles' paragraphs, the checkpoint kept by nDCG@10.

Hyperparameters: sentence-transformers' MultipleNegativesRankingLoss recipe (training_nli_v2.py, the MS MARCO
bi-encoder examples): mean pooling, cosine x 20, lr 2e-5 with 10% warmup, weight decay 0.01, 1.0 epochs; the
batch is as large as memory allows (every other pair of the global batch is a negative), here 64.

    python -m jaxlm.finetune --config=configs/finetune/retrieval_squad.py --config.init_checkpoint=RUN --workdir=DIR
    python -m jaxlm.evaluate --workdir=DIR
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "retrieval"
    c.data.format = "squad"
    c.data.train_file = shared_data("squad", "dev-v1.1.json")
    c.data.eval_file = shared_data("squad", "dev-v1.1.json")
    c.data.heldout_every = 5
    c.data.max_len = 256  # paragraphs: ~160 WordPiece tokens on average, a few beyond 256 are cut
    c.data.max_query_len = 64
    c.embedding.pooling = "mean"
    c.embedding.scale = 20.0
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 64
    c.train.eval_batch_size = 64
    c.train.num_epochs = 1.0
    return c
