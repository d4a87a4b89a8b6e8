"""T5 fine-tuned on WMT14 English -> German (`task='seq2seq'`), the translation column of the T5 paper's final
results; the argument after ':' is the size of the imported checkpoint's recipe (small | base).

    huggingface-cli download google-t5/t5-small --local-dir t5-small        # once, where there is internet
    python -m jaxlm.convert from-hf --model_dir t5-small --workdir runs/t5-small
    tfds build wmt14_translate/de-en --file_format=array_record --data_dir ~/tensorflow_datasets
    python -m jaxlm.finetune --config=configs/finetune/t5_wmt_ende.py:small \
        --config.init_checkpoint=runs/t5-small --workdir=runs/t5-small-wmt-ende
    python -m jaxlm.evaluate --workdir=runs/t5-small-wmt-ende --split=test   # newstest2014

Data: TFDS wmt14_translate/de-en (4,508,785 training pairs; validation = newstest2013, test = newstest2014), read
through its features 'en' (source) and 'de' (target); the paper's number is on newstest2014, the kept
checkpoint's `jaxlm.evaluate --split=test`. Inputs read 'translate English to German: <source>' (T5's task prefix).
Data licence: the WMT14 news-commentary / Europarl / Common Crawl corpora, research use (statmt.org/wmt14).

Hyperparameters: Raffel et al. 2020, section 3.1.2: Adafactor at a constant 0.001, 0% warmup, weight decay 0, no
gradient clipping, batch 128, 2^18 = 262,144 steps (2^18 x 128 / 4,508,785 pairs = 7.44 epochs), the checkpoint
with the best validation BLEU kept (evaluated at each epoch's end; the paper saved one every 5,000 steps); beam
search with 4 beams and length penalty 0.6 (section 3.7).
Sequences: 128 source and 128 target tokens (the paper packs 512; newstest sentences fit in 128).
Reproduces: T5 paper table 14, WMT English-German BLEU (newstest2014, sacrebleu): T5-Small 26.7, T5-Base 30.9.
jaxlm's BLEU is sacrebleu's default 13a tokenisation; the paper used SacreBLEU 1.3.0 with 'intl' tokenisation and
exp smoothing, which can differ by a few tenths.
"""
from jaxlm.config_defaults import finetune_config, use_t5_finetuning_recipe

SIZES = {"small": 26.7, "base": 30.9}  # size -> the paper's newstest2014 BLEU
TRAIN_PAIRS = 4_508_785


def get_config(size: str = "small"):
    if size not in SIZES:
        raise ValueError(f"configs/finetune/t5_wmt_ende.py:{size}: the argument is the T5 size, one of "
                         f"{', '.join(SIZES)}")
    c = finetune_config()
    c.task = "seq2seq"
    c.model.family, c.model.size = "t5", size  # only without init_checkpoint
    c.data.format = "parallel"  # unused with tfds_name; the pairs come from TFDS
    c.data.tfds_name = "wmt14_translate/de-en"
    c.data.train_split, c.data.eval_split = "train", "validation"
    c.data.source_field, c.data.target_field = "en", "de"
    c.data.prompt = "translate English to German: {source}"
    c.data.max_len = 128
    c.data.max_target_len = 128
    c.data.metrics = ("bleu",)
    c.generation.num_beams = 4
    c.generation.length_penalty = 0.6
    use_t5_finetuning_recipe(c)
    c.train.num_epochs = 2 ** 18 * 128 / TRAIN_PAIRS
    return c
