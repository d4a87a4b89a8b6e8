"""GPT-2 fine-tuned on one GLUE task with a classification head on the last token (`style='gpt2'`: text_a <eos>
text_b, as GPT2ForSequenceClassification), the argument after ':' naming the task (cola, sst2, mrpc, qqp, stsb,
mnli, qnli, rte).

The GPT-2 paper (Radford et al. 2019) fine-tunes nothing: its results are zero-shot. The recipe and the numbers
here are those of its predecessor with the same architecture and fine-tuning setup, GPT (Radford et al. 2018,
"Improving Language Understanding by Generative Pre-Training"), which GPT-2 small matches in size:

    python -m jaxlm.convert from-hf --model_dir gpt2 --workdir runs/gpt2       # huggingface-cli download gpt2 first
    python -m jaxlm.finetune --config=configs/finetune/gpt2_glue.py:rte --config.init_checkpoint=runs/gpt2 \
        --workdir=runs/gpt2-rte

Data: SST-2, MRPC and STS-B read ../shared/data/glue/<TASK>/{train,dev}.tsv; the others the TFDS dataset
glue/<task> (`tfds build glue/<task> --file_format=array_record`). Data licences: see roberta_glue.py.

Hyperparameters: GPT section 4.1 ("Fine-tuning details"): Adam, lr 6.25e-5, batch 32, 3 epochs, 0.2% linear
warmup then linear decay to 0, weight decay 0.01, dropout 0.1 on the classifier; sequences cut at 128 tokens as in
the BERT recipes (GPT does not state its fine-tuning length). GPT also adds the language-model
loss of the inputs with weight 0.5 and, for STS-B, sums the representations of both sentence orders; neither is
done here.
Reproduces: GPT paper tables 2 and 3 (GLUE test): MNLI-m 82.1, QNLI 88.1, RTE 56.0, CoLA MCC 45.4, SST-2 91.3,
MRPC F1 82.3, STS-B Pearson 82.0, QQP F1 70.3 (GLUE score 72.8).
"""
from jaxlm.config_defaults import finetune_config, use_glue_data

# task -> the dev metric that keeps the best checkpoint and GPT's reported test score (x100) in that metric (where
# the data is: config_defaults.use_glue_data).
TASKS = {
    "cola": dict(metric="matthews_corrcoef", reported=45.4),
    "sst2": dict(metric="accuracy", reported=91.3),
    "mrpc": dict(metric="f1", reported=82.3),
    "qqp": dict(metric="f1", reported=70.3),
    "stsb": dict(metric="pearson", reported=82.0),
    "mnli": dict(metric="accuracy", reported=82.1),
    "qnli": dict(metric="accuracy", reported=88.1),
    "rte": dict(metric="accuracy", reported=56.0),
}


def get_config(task: str = "rte"):
    key = task.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"configs/finetune/gpt2_glue.py:{task}: the argument after ':' is the GLUE task, one of "
                         f"{', '.join(TASKS)}")
    t = TASKS[key]
    c = finetune_config()
    c.task = "regression" if key == "stsb" else "classification"
    c.model.family, c.model.size = "gpt2", "small"  # only without init_checkpoint
    c.data.style = "gpt2"
    use_glue_data(c, key)
    c.data.max_len = 128
    c.head.dropout = 0.1
    c.optimizer.update(learning_rate=6.25e-5, warmup_ratio=0.002, schedule="linear", end_learning_rate=0.0,
                       weight_decay=0.01)
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.best_metric = t["metric"]
    return c
