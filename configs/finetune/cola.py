"""CoLA (GLUE linguistic acceptability, Warstadt et al. 2019): single-sentence binary classification; dev
Matthews correlation (the GLUE metric; the classes are imbalanced).

The GLUE CoLA files are not in ../shared/data: pass them, e.g.
    python -m jaxlm.finetune --config=configs/finetune/cola.py --config.init_checkpoint=RUN --workdir=runs/cola \
        --config.data.train_file=glue_data/CoLA/train.tsv --config.data.eval_file=glue_data/CoLA/dev.tsv
(the headerless 4-column TSV that GLUE's download script writes: source, label, original label, sentence).

Hyperparameters: the BERT paper's GLUE recipe (Devlin et al. 2019, section 4.1 and appendix A.3): Adam, lr 2e-5
(grid {5e-5, 3e-5, 2e-5}), batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01, dropout
0.1, max sequence length 128.
Reproduces: BERT paper table 1 (GLUE test), CoLA Matthews correlation 52.1 (BERT-base) / 60.5 (BERT-large).
"""
from jaxlm.config_defaults import finetune_config


def get_config():
    c = finetune_config()
    c.task = "classification"
    c.data.format = "cola"
    c.data.train_file = ""
    c.data.eval_file = ""
    c.data.max_len = 128
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    return c
