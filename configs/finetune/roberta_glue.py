r"""RoBERTa (Liu et al. 2019, arXiv:1907.11692) fine-tuned on one GLUE task: the eight the paper reports, chosen
by the argument after ':' (mnli, qnli, qqp, rte, sst2, mrpc, cola, stsb). STS-B is a regression onto the 0-5
score, the others are classification. From Hugging Face's roberta-base:

    huggingface-cli download FacebookAI/roberta-base --local-dir roberta-base   # once, where there is internet
    python -m jaxlm.convert from-hf --model_dir roberta-base --workdir runs/roberta-base
    python -m jaxlm.finetune --config=configs/finetune/roberta_glue.py:rte \
        --config.init_checkpoint=runs/roberta-base --workdir=runs/roberta-base-rte

Data: SST-2, MRPC and STS-B read ../shared/data/glue/<TASK>/{train,dev}.tsv. MNLI, QNLI, QQP, RTE and CoLA are
not in ../shared/data: they read the TFDS dataset glue/<task>, which must be prepared first (`tfds build glue/rte
--file_format=array_record`). The dev split is `validation`; for MNLI it is `validation_matched`, and
--config.data.eval_split=validation_mismatched gives the mismatched number. To use GLUE's own TSV files instead,
clear the TFDS name and pass the files (MNLI's dev file is dev_matched.tsv):
    --config.data.tfds_name= --config.data.train_file=glue_data/RTE/train.tsv \
        --config.data.eval_file=glue_data/RTE/dev.tsv

Hyperparameters: the RoBERTa paper's GLUE recipe (section 5.1, and appendix table 10 "Hyperparameters for finetuning
RoBERTa-LARGE on RACE, SQuAD and GLUE"): Adam with betas (0.9, 0.98) and eps 1e-6 (kept from pretraining), lr in
{1e-5, 2e-5, 3e-5}, batch in {16, 32}, weight decay 0.1, 10 epochs, 6% linear warmup then linear decay to 0, dropout
0.1, no layer-wise lr decay. Early stopping on the dev metric: the checkpoint with the best dev score is kept. Each
task uses the lr and batch from the grid that fairseq's recipe suggests (examples/roberta/README.glue.md; table
below). fairseq also trains without gradient clipping (--clip-norm 0.0) and with --max-positions 512 without
truncation, so max_len is 512 here (rows are padded to it); --config.data.max_len=128, as in the BERT configs, costs
a quarter as much or less but cuts the longest inputs. fairseq sets each task's schedule as --total-num-update /
--warmup-updates, about 10 epochs and 6% of them, except QQP's warmup (28318 of 113272 updates, 25%) and RTE's total
(2036, where 10 epochs of its 2,490 examples at batch 16 are 1,560). Here every task uses num_epochs=10 and
warmup_ratio=0.06 with decay to 0 at the end, as the paper states. Weight decay is decoupled (AdamW), as in
fairseq's Adam, but like every jaxlm run it skips biases and LayerNorm.

Data licence: MRPC is under the Microsoft Research Shared Source licence, non-commercial research use only
(../shared/data/glue/MRPC/MSR_Shared_Source_License.htm). STS-B scores are CC BY-SA 4.0, and each source's
sentences keep their own licence (../shared/data/glue/STS-B/LICENSE.txt). The other tasks keep their GLUE
sources' terms (../shared/data/README.md).

Reproduces: GLUE dev, single model, single-task fine-tuning. RoBERTa-large: RoBERTa paper table 5, the dev-set
rows, each a median over five runs (MNLI matched / mismatched 90.2 / 90.2). roberta.base: the results table of
fairseq's examples/roberta/README.md. For RoBERTa-large, import roberta-large instead; the paper searched the whole
grid, not only fairseq's point. Metrics: accuracy, except CoLA (Matthews correlation) and STS-B (Pearson). MNLI
is matched accuracy. MRPC and QQP are accuracy, not F1, as the authors answered in fairseq issue #1561. Evaluation
also logs F1 (MRPC, QQP) and Spearman (STS-B).

    task   lr     batch  dev metric (best checkpoint)   RoBERTa-large (paper)   roberta.base (fairseq)
    mnli   1e-5   32     accuracy (matched)             90.2                    87.6
    qnli   1e-5   32     accuracy                       94.7                    92.8
    qqp    1e-5   32     accuracy                       92.2                    91.9
    rte    2e-5   16     accuracy                       86.6                    78.7
    sst2   1e-5   32     accuracy                       96.4                    94.8
    mrpc   1e-5   16     accuracy                       90.9                    90.2
    cola   1e-5   16     matthews_corrcoef              68.0                    63.6
    stsb   2e-5   16     pearson                        92.4                    91.2
"""
from jaxlm.config_defaults import finetune_config, use_glue_data

# Per task: fairseq's lr / batch, the dev metric that picks the kept checkpoint and the dev scores reproduced (x100)
# (where the data is: config_defaults.use_glue_data, a GLUE folder of ../shared/data or TFDS glue/<task>).
TASKS = {
    "mnli": dict(learning_rate=1e-5, batch_size=32, metric="accuracy", roberta_large=90.2, roberta_base=87.6),
    "qnli": dict(learning_rate=1e-5, batch_size=32, metric="accuracy", roberta_large=94.7, roberta_base=92.8),
    "qqp": dict(learning_rate=1e-5, batch_size=32, metric="accuracy", roberta_large=92.2, roberta_base=91.9),
    "rte": dict(learning_rate=2e-5, batch_size=16, metric="accuracy", roberta_large=86.6, roberta_base=78.7),
    "sst2": dict(learning_rate=1e-5, batch_size=32, metric="accuracy", roberta_large=96.4, roberta_base=94.8),
    "mrpc": dict(learning_rate=1e-5, batch_size=16, metric="accuracy", roberta_large=90.9, roberta_base=90.2),
    "cola": dict(learning_rate=1e-5, batch_size=16, metric="matthews_corrcoef", roberta_large=68.0, roberta_base=63.6),
    "stsb": dict(learning_rate=2e-5, batch_size=16, metric="pearson", roberta_large=92.4, roberta_base=91.2),
}


def get_config(task: str = ""):
    key = task.lower().replace("-", "").replace("_", "")  # SST-2 -> sst2, STS-B -> stsb
    if key not in TASKS:
        where = f"configs/finetune/roberta_glue.py:{task}: unknown task" if task else "configs/finetune/roberta_glue.py"
        raise ValueError(f"{where}: the argument after ':' is the GLUE task, one of {', '.join(TASKS)}")
    t = TASKS[key]
    c = finetune_config()
    c.task = "regression" if key == "stsb" else "classification"
    c.model.family = "roberta"  # only without init_checkpoint; the checkpoint's own family otherwise
    c.model.size = "base"
    c.model.hidden_dropout = 0.1
    c.model.attention_dropout = 0.1
    c.data.style = "roberta"  # <s> a </s></s> b </s>
    use_glue_data(c, key)
    c.data.max_len = 512
    c.optimizer.learning_rate = t["learning_rate"]
    c.optimizer.warmup_ratio = 0.06
    c.optimizer.schedule = "linear"
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-6
    c.optimizer.weight_decay = 0.1
    c.optimizer.max_grad_norm = 0.0  # fairseq --clip-norm 0.0: no clipping
    c.optimizer.layerwise_lr_decay = 1.0
    c.train.batch_size = t["batch_size"]
    c.train.num_epochs = 10.0
    c.train.best_metric = t["metric"]
    return c
