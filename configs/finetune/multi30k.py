"""Multi30k English -> German translation (Elliott et al. 2016; image captions, WMT16 multimodal task 1),
fine-tuning a text-writing checkpoint with `task='seq2seq'`; dev BLEU (sacrebleu) at every epoch end.

    :t5    (default) T5 reads 'translate English to German: <source>' and its decoder writes the German (T5's own
           task prefix, so an imported t5-small already half knows the task).
    :gpt2  GPT-2 reads '<source> <eos>' and continues with the German; only the German tokens are trained.

    huggingface-cli download google-t5/t5-small --local-dir t5-small        # once, where there is internet
    python -m jaxlm.convert from-hf --model_dir t5-small --workdir runs/t5-small
    python -m jaxlm.finetune --config=configs/finetune/multi30k.py --config.init_checkpoint=runs/t5-small \
        --workdir=runs/t5-small-multi30k
    python -m jaxlm.evaluate --workdir=runs/t5-small-multi30k \
        --split_file=../shared/data/multi30k/test_2016_flickr          # held-out BLEU
    echo '{"source": "Two dogs play in the snow."}' > in.jsonl
    python -m jaxlm.predict --workdir=runs/t5-small-multi30k --input=in.jsonl --output=out.jsonl

Offline, any jaxlm run of a T5 or GPT-2 works as init_checkpoint (e.g. a `t5_quickstart` pretraining run), and
init_checkpoint='' with config.tokenizer and model shape keys trains from scratch (tests/test_seq2seq.py does).

Data: ../shared/data/multi30k: the first 5,000 of the 29,000 training pairs (train_first5000.en/.de), the 1,014
validation pairs (val) and the 1,000 test_2016_flickr pairs; line-aligned files, read as format='parallel'. The
full set is TFDS-less; pass --config.data.train_file=<prefix> for your own copy of the 29k pairs.
Data licence: non-commercial research use only (Multi30k; see ../shared/data/README.md).

Hyperparameters: T5's fine-tuning recipe (Raffel et al. 2020, section 3.1.2): Adafactor (as in pretraining) at a
constant 0.001, 0% warmup, weight decay 0, no gradient clipping, batch 128, 20 epochs (40 batches of the 5,000
pairs each, 800 steps); greedy decoding on the dev set (the paper's final numbers use beam 4 with length penalty
0.6: --config.generation.num_beams=4).

:gpt2 instead uses AdamW at 1e-4 with 10% warmup and linear decay, batch 32, 5 epochs (the HF language-modeling
recipe; GPT-2's paper fine-tunes nothing).

Reproduces: no published T5 / GPT-2 number on Multi30k. Copying the source scores BLEU 0.49 on val and 0.48 on
test_2016_flickr; tests/test_seq2seq.py's tiny models trained from scratch for two epochs beat that.
"""
from jaxlm.config_defaults import finetune_config, shared_data, use_t5_finetuning_recipe

FAMILIES = ("t5", "gpt2")


def get_config(family: str = "t5"):
    if family not in FAMILIES:
        raise ValueError(f"configs/finetune/multi30k.py:{family}: the argument is the model family, one of "
                         f"{', '.join(FAMILIES)}")
    c = finetune_config()
    c.task = "seq2seq"
    c.model.family = family  # only without init_checkpoint; the checkpoint's own family otherwise
    c.data.format = "parallel"
    c.data.train_file = shared_data("multi30k", "train_first5000")
    c.data.eval_file = shared_data("multi30k", "val")
    c.data.source_field, c.data.target_field = "en", "de"
    c.data.max_len = 64
    c.data.max_target_len = 64
    c.data.metrics = ("bleu",)
    if family == "t5":
        c.data.prompt = "translate English to German: {source}"
        use_t5_finetuning_recipe(c)
        c.train.num_epochs = 20.0
    else:
        c.optimizer.update(name="adamw", learning_rate=1e-4, warmup_ratio=0.1, weight_decay=0.01)
        c.train.batch_size = 32
        c.train.num_epochs = 5.0
    c.train.eval_batch_size = 128
    return c
