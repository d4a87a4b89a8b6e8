"""SQuAD v1.1 (Rajpurkar et al. 2016): extractive QA; dev exact match and F1 as the official script.

Hyperparameters: the BERT paper's SQuAD v1.1 recipe (Devlin et al. 2019, section 4.2): 3 epochs, lr 5e-5, batch
32, max sequence length 384 with a document stride of 128 tokens and questions cut to 64 tokens (run_squad.py),
n-best 20 and answers of at most 30 tokens at prediction time.

Only the dev file is in ../shared/data (train-v1.1.json is ~30 MB): pass the training file, e.g.
    --config.data.train_file=squad/train-v1.1.json
Reproduces: BERT paper table 2, SQuAD v1.1 dev EM 80.8 / F1 88.5 (BERT-base), 84.1 / 90.9 (BERT-large).
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "question_answering"
    c.data.format = "squad"
    c.data.train_file = ""
    c.data.eval_file = shared_data("squad", "dev-v1.1.json")
    c.data.max_len = 384
    c.data.doc_stride = 128
    c.data.max_query_len = 64
    c.data.n_best = 20
    c.data.max_answer_length = 30
    c.optimizer.learning_rate = 5e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.eval_batch_size = 32
    return c
