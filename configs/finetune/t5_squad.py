"""T5 fine-tuned on SQuAD v1.1 as text to text (`task='seq2seq'` with format 'squad'): the input reads 'question:
<q> context: <paragraph>', the decoder writes the answer, and the dev set is scored by the official EM / F1 of
the generated answers against every reference answer.

    python -m jaxlm.convert from-hf --model_dir t5-small --workdir runs/t5-small   # see t5_wmt_ende.py
    python -m jaxlm.finetune --config=configs/finetune/t5_squad.py --config.init_checkpoint=runs/t5-small \
        --config.data.train_file=train-v1.1.json --workdir=runs/t5-small-squad

Data: ../shared/data/squad/dev-v1.1.json is the dev set; the training file (train-v1.1.json) is not in
../shared/data: pass it, or use TFDS (`--config.data.tfds_name=squad`, prepared as array_record).
Data licence: SQuAD is CC BY-SA 4.0.

Hyperparameters: Raffel et al. 2020, section 3.1.2: Adafactor at a constant 0.001, 0% warmup, weight decay 0, no
gradient clipping, batch 128, 2^18 = 262,144 steps with the dev score and a checkpoint every 5,000 steps (the
best one is kept); greedy decoding. Inputs of 512 tokens (longer paragraphs are cut: T5 does not window), answers
up to 32 tokens.
Reproduces: T5 paper table 14, SQuAD v1.1 dev EM / F1: 79.10 / 87.24 (T5-Small), 85.44 / 92.08 (T5-Base).
"""
from jaxlm.config_defaults import finetune_config, shared_data, use_t5_finetuning_recipe

REPORTED = {"small": (79.10, 87.24), "base": (85.44, 92.08)}  # table 14: dev EM, F1


def get_config():
    c = finetune_config()
    c.task = "seq2seq"
    c.model.family, c.model.size = "t5", "small"  # only without init_checkpoint
    c.data.format = "squad"
    c.data.train_file = ""  # train-v1.1.json, or --config.data.tfds_name=squad
    c.data.eval_file = shared_data("squad", "dev-v1.1.json")
    c.data.max_len = 512
    c.data.max_target_len = 32
    use_t5_finetuning_recipe(c)
    c.train.num_steps = 2 ** 18
    c.train.eval_every_steps = 5000
    c.train.best_metric = "f1"
    return c
