"""SST-2 (GLUE single-sentence sentiment, Socher et al. 2013): binary classification, dev accuracy.

Hyperparameters: the BERT paper's fine-tuning recipe (Devlin et al. 2019, section 4.1 and appendix A.3): Adam,
lr 2e-5 (grid {5e-5, 3e-5, 2e-5}), batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01,
dropout 0.1, max sequence length 128.

    python -m jaxlm.finetune --config=configs/finetune/sst2.py --config.init_checkpoint=RUN --workdir=runs/sst2
Reproduces: BERT paper table 1 (GLUE test), SST-2 accuracy 93.5 (BERT-base) / 94.9 (BERT-large).
"""
from jaxlm.config_defaults import finetune_config, shared_data


def get_config():
    c = finetune_config()
    c.task = "classification"
    c.data.format = "sst2"
    c.data.train_file = shared_data("glue", "SST-2", "train.tsv")
    c.data.eval_file = shared_data("glue", "SST-2", "dev.tsv")
    c.data.max_len = 128
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    return c
