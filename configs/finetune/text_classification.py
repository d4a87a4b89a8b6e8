"""Your own text classification (spam / topic / intent / sentiment) from TSV, CSV or JSONL files.

    python -m jaxlm.finetune --config=configs/finetune/text_classification.py:csv \
        --config.init_checkpoint=RUN --workdir=runs/spam \
        --config.data.train_file=spam_train.csv --config.data.eval_file=spam_dev.csv \
        --config.data.text_column=message --config.data.label_column=category \
        --config.data.labels="('ham', 'spam')"

The argument after ':' is the file format (tsv: no quoting; csv: quoted fields, may span lines; jsonl: one object
per line, columns are keys). Columns are header names, or 0-based indices written as digits with
--config.data.header=False. Labels are matched as strings against config.data.labels, whose order is the model's
output order; a value outside the list is an error naming file:line. --config.data.text_b_column makes it a
sentence-pair task; an empty label list (labels=()) makes it a regression onto a number.

Hyperparameters: the BERT paper's fine-tuning recipe (Devlin et al. 2019, section 4.1 and appendix A.3): Adam,
lr 2e-5 (grid {5e-5, 3e-5, 2e-5}), batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01,
dropout 0.1, max sequence length 128. Metrics: accuracy, macro F1 (and F1 of the second label when binary).
"""
from jaxlm.config_defaults import finetune_config


def get_config(fmt: str = "tsv"):
    if fmt not in ("tsv", "csv", "jsonl"):
        raise ValueError(f"configs/finetune/text_classification.py:{fmt}: the argument is the file format, one of "
                         "tsv, csv, jsonl")
    c = finetune_config()
    c.task = "classification"
    c.data.format = fmt
    c.data.train_file = ""
    c.data.eval_file = ""
    c.data.text_column = "text"
    c.data.label_column = "label"
    c.data.labels = ("0", "1")
    c.data.max_len = 128
    c.optimizer.learning_rate = 2e-5
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    return c
