"""STS-B (GLUE semantic similarity, Cer et al. 2017): sentence-pair regression onto a 0-5 score (one output,
mean squared error); dev Pearson and Spearman correlation.

Hyperparameters: the BERT paper's GLUE recipe (Devlin et al. 2019, section 4.1 and appendix A.3): Adam, lr 2e-5
(grid {5e-5, 3e-5, 2e-5}), batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01, dropout
0.1, max sequence length 128.
Reproduces: BERT paper table 1 (GLUE test), STS-B Spearman 85.8 (BERT-base) / 86.5 (BERT-large).
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "regression"
    c.data.format = "stsb"
    c.data.train_file = shared_data("glue", "STS-B", "train.tsv")
    c.data.eval_file = shared_data("glue", "STS-B", "dev.tsv")
    c.data.max_len = 128
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    return c
