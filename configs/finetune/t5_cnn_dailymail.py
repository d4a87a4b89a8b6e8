"""T5 fine-tuned on CNN / Daily Mail abstractive summarisation (`task='seq2seq'`, ROUGE), the summarisation column
of the T5 paper's final results; the argument after ':' is the size (small | base).

    python -m jaxlm.convert from-hf --model_dir t5-small --workdir runs/t5-small   # see t5_wmt_ende.py
    tfds build cnn_dailymail --file_format=array_record --data_dir ~/tensorflow_datasets
    python -m jaxlm.finetune --config=configs/finetune/t5_cnn_dailymail.py:small \
        --config.init_checkpoint=runs/t5-small --workdir=runs/t5-small-cnndm
    python -m jaxlm.evaluate --workdir=runs/t5-small-cnndm --split=test

Data: TFDS cnn_dailymail (287,113 training articles; validation 13,368, test 11,490): features 'article' (source)
and 'highlights' (target, one sentence per line, which rougeLsum splits on). Inputs read 'summarize: <article>'.
Needs the rouge extra (pip install 'jaxlm[rouge]').
Data licence: the CNN / Daily Mail articles are for research use (Hermann et al. 2015; see the TFDS catalog).

Hyperparameters: Raffel et al. 2020, section 3.1.2: Adafactor at a constant 0.001, 0% warmup, weight decay 0, no
gradient clipping, batch 128, 2^18 = 262,144 steps (2^18 x 128 / 287,113 articles = 116.87 epochs), the
checkpoint with the best validation rouge2 kept (evaluated at each epoch's end on the first 2,000 validation
articles, so 117 dev passes of beam search stay a small part of the run); beam search with 4 beams and
length penalty 0.6 (section 3.7). Sequences: 512 article tokens (the paper's input length) and 128 summary tokens.
Reproduces: T5 paper table 14, CNN/DM test ROUGE-1 / ROUGE-2 / ROUGE-L: T5-Small 41.12 / 19.56 / 38.35, T5-Base
42.05 / 20.34 / 39.40 (rouge-score with stemming; the paper's ROUGE-L is the summary-level rougeLsum).
"""
from jaxlm.config_defaults import finetune_config, use_t5_finetuning_recipe

SIZES = {"small": (41.12, 19.56, 38.35), "base": (42.05, 20.34, 39.40)}  # the paper's test ROUGE-1 / 2 / L
TRAIN_ARTICLES = 287_113


def get_config(size: str = "small"):
    if size not in SIZES:
        raise ValueError(f"configs/finetune/t5_cnn_dailymail.py:{size}: the argument is the T5 size, one of "
                         f"{', '.join(SIZES)}")
    c = finetune_config()
    c.task = "seq2seq"
    c.model.family, c.model.size = "t5", size  # only without init_checkpoint
    c.data.format = "jsonl"  # unused with tfds_name; for your own files: one {"article", "highlights"} per line
    c.data.tfds_name = "cnn_dailymail"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.source_field, c.data.target_field = "article", "highlights"
    c.data.prompt = "summarize: {source}"
    c.data.max_len = 512
    c.data.max_target_len = 128
    c.data.eval_limit = 2000
    c.data.metrics = ("rouge1", "rouge2", "rougeLsum")
    c.train.best_metric = "rouge2"
    c.generation.num_beams = 4
    c.generation.length_penalty = 0.6
    use_t5_finetuning_recipe(c)
    c.train.num_epochs = 2 ** 18 * 128 / TRAIN_ARTICLES
    return c
