"""T5 fine-tuned on one GLUE task as text to text (`task='seq2seq'` with a GLUE format): the input names the task
and its fields ('mrpc sentence1: ... sentence2: ...'), the decoder writes the label's word ('equivalent') or the
STS-B score rounded to 0.2 ('3.8'), and the dev set is scored with GLUE's own metrics on the generated words (a
word that is no label counts as wrong). The argument after ':' is the task (cola, sst2, mrpc, qqp, stsb, mnli,
qnli, rte).

    python -m jaxlm.convert from-hf --model_dir t5-small --workdir runs/t5-small   # see t5_wmt_ende.py
    python -m jaxlm.finetune --config=configs/finetune/t5_glue.py:mrpc \
        --config.init_checkpoint=runs/t5-small --workdir=runs/t5-small-mrpc

Data: SST-2, MRPC and STS-B read ../shared/data/glue/<TASK>/{train,dev}.tsv; the others the TFDS dataset
glue/<task> (prepare it with `tfds build glue/<task> --file_format=array_record`). MNLI's dev split is
validation_matched. Data licences: see configs/finetune/roberta_glue.py.

Hyperparameters: Raffel et al. 2020, section 3.1.2: Adafactor at a constant 0.001, 0% warmup, weight decay 0, no
gradient clipping, batch 128, 2^18 = 262,144 steps per task with the dev score and a checkpoint every 5,000 steps
(the best one is kept); greedy decoding. Inputs up to 512 tokens (the paper's length; GLUE sentences need far
fewer: --config.data.max_len=128 is 4x cheaper), targets up to 8 tokens (the longest label word).
Reproduces: T5 paper table 14, GLUE test average 77.4 (T5-Small) / 82.7 (T5-Base); the per-task test scores are
in the same table. The paper's GLUE models were fine-tuned from the multi-task pre-trained checkpoint that the
released t5-small / t5-base are, as here.
"""
from jaxlm.config_defaults import finetune_config, use_glue_data, use_t5_finetuning_recipe

# task -> the dev metric that keeps the best checkpoint (where the data is: config_defaults.use_glue_data).
TASKS = {"cola": "matthews_corrcoef", "sst2": "accuracy", "mrpc": "f1", "qqp": "f1", "stsb": "pearson",
         "mnli": "accuracy", "qnli": "accuracy", "rte": "accuracy"}
GLUE_AVERAGE = {"small": 77.4, "base": 82.7}  # table 14, GLUE test average


def get_config(task: str = "mrpc"):
    key = task.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"configs/finetune/t5_glue.py:{task}: the argument after ':' is the GLUE task, one of "
                         f"{', '.join(TASKS)}")
    c = finetune_config()
    c.task = "seq2seq"
    c.model.family, c.model.size = "t5", "small"  # only without init_checkpoint
    use_glue_data(c, key)
    c.data.max_len = 512
    c.data.max_target_len = 8
    c.generation.num_beams = 1
    use_t5_finetuning_recipe(c)
    c.train.num_steps = 2 ** 18
    c.train.eval_every_steps = 5000
    c.train.best_metric = TASKS[key]
    return c
