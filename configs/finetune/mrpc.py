"""MRPC (GLUE paraphrase pairs, Dolan & Brockett 2005): sentence-pair classification; dev F1 and accuracy.

Hyperparameters: the BERT paper's GLUE recipe (Devlin et al. 2019, section 4.1 and appendix A.3): Adam, lr 2e-5
(grid {5e-5, 3e-5, 2e-5}), batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01, dropout
0.1, max sequence length 128. The paper notes that small sets like MRPC are unstable for large models and picks
the best of several seeds (--config.seed).

Data licence: MRPC is under the Microsoft Research Shared Source licence, non-commercial research use only
(see ../shared/data/glue/MRPC/MSR_Shared_Source_License.htm).
Reproduces: BERT paper table 1 (GLUE test), MRPC F1 88.9 (BERT-base) / 89.3 (BERT-large).
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "classification"
    c.data.format = "mrpc"
    c.data.train_file = shared_data("glue", "MRPC", "train.tsv")
    c.data.eval_file = shared_data("glue", "MRPC", "dev.tsv")
    c.data.max_len = 128
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    return c
