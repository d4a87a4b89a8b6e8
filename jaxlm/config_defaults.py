"""The one config schema: every key of a pretraining and a fine-tuning config with its default.

Config files in configs/ start from `pretrain_config()` / `finetune_config()` and override what their recipe
changes. The returned ConfigDict is locked, so a misspelt key (in a file or on the command line) is an error
naming the valid keys. Three sections come from the library's own definitions rather than lists here:

- config.optimizer: the fields of jaxlm.train.optimizer.OptimizerConfig (one schema for both run types);
- config.model: `family`, `size` and every field of every family's config dataclass, unset (None) unless a file or
  the command line sets it, so `--config.model.num_layers=2` works on any config; a field the chosen family lacks
  is an error naming the family's fields;
- config.mesh.logical_axis_rules: (logical axis, mesh axes) pairs laid over jaxlm.sharding.DEFAULT_RULES, as
  MaxText's logical_axis_rules, e.g. `"(('embed', None), ('mlp', ('fsdp', 'tensor')))"`.

`shared_data(...)` is where the public datasets of ../shared/data are, for the recipes that default to them.
"""
import dataclasses
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from jaxlm.models import get_family
from jaxlm.models.registry import all_field_types
from jaxlm.train.optimizer import OptimizerConfig

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA_ENV = "JAXLM_SHARED_DATA"


def shared_data(*parts: str) -> str:
    """A path under the shared public datasets: $JAXLM_SHARED_DATA, else ../shared/data beside the repository."""
    root = os.environ.get(SHARED_DATA_ENV) or os.path.normpath(os.path.join(REPOSITORY, "..", "shared", "data"))
    return os.path.join(root, *parts)


def optimizer_section(**overrides) -> ml_collections.ConfigDict:
    """config.optimizer: OptimizerConfig's fields and defaults, with a recipe's `overrides`."""
    fields = dataclasses.asdict(OptimizerConfig())
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"optimizer_section: unknown keys {unknown}; OptimizerConfig has {sorted(fields)}")
    fields.update(overrides)
    return ml_collections.ConfigDict({k: config_dict.placeholder(float) if v is None else v for k, v in fields.items()})


def model_section(family: str, size: str) -> ml_collections.ConfigDict:
    """config.model: the family / size selectors and every model field, unset."""
    section = {"family": family, "size": size}
    section.update({name: config_dict.placeholder(kind) for name, kind in all_field_types().items()})
    return ml_collections.ConfigDict(section)


def mesh_section() -> ml_collections.ConfigDict:
    """Mesh axis sizes (-1 takes the remaining devices; DESIGN.md section 4) and logical-axis rule overrides."""
    return ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, logical_axis_rules=()))


def distributed_section() -> ml_collections.ConfigDict:
    """jax.distributed: on Cloud TPU pods `initialize=True` with no addresses is enough (auto-detected)."""
    return ml_collections.ConfigDict(dict(initialize=False, coordinator_address="", num_processes=0, process_id=-1))


def pretrain_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.objective = "mlm_nsp"  # a name of jaxlm.objectives.OBJECTIVES: mlm | mlm_nsp | clm | span_corruption | plm
    c.seed = 0
    c.model = model_section("bert", "tiny")

    c.data = ml_collections.ConfigDict(dict(
        dataset="jaxlm_pydoc",  # jaxlm_pydoc (embedded, offline) | text_files | any prepared TFDS name (c4/en, ...)
        text_files="",  # dataset=text_files: a path, glob or comma-separated list
        document_separator="file",  # text_files: one document per 'file' or documents split by 'blank_line'
        # text_files: the validation split. 'hash': documents by a hash of their key (validation_percent% of them;
        # the same split on every machine); 'tail': the last validation_percent% of the characters (the files
        # concatenated in sorted order, cut at a character, then split into documents), as nanoGPT splits.
        validation_split="hash",
        validation_percent=2.0,
        max_bad_document_fraction=0.01,  # text_files: above this share of documents with invalid UTF-8 / NUL, stop
        data_dir="",  # TFDS data_dir; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
        train_split="train",
        eval_split="validation",
        # a sentencepiece .model, an HF tokenizer directory, a character tokenizer .json, 'bytes' (UTF-8 bytes, ByT5's
        # ids) or 'chars' (the training split's characters, kept in the workdir); '' = train a sentencepiece model
        # on the training split into WORKDIR/tokenizer.model
        tokenizer="",
        tokenizer_vocab_size=8000,
        tokenizer_model_type="unigram",
        tokenizer_num_sentinels=0,  # <extra_id_N> tokens of a trained tokenizer (span_corruption: 100, as T5)
        # Sentinels appended after the pieces of a given sentencepiece model that has none of its own: 100 for T5's
        # released spiece.model (as HF's T5Tokenizer), to continue pretraining an imported T5 with span corruption.
        tokenizer_extra_ids=0,
        # The objectives' settings (each objective reads the keys named like its fields; jaxlm.objectives).
        seq_len=128,  # span_corruption: the encoder length; the decoder's follows (T5: 512 -> 114)
        max_predictions=20,  # mlm: slots per row (BERT's max_predictions_per_seq)
        mask_rate=0.15,
        whole_word_masking=False,
        pairs_per_document=1,  # mlm_nsp, plm: sentence pairs drawn from each document per epoch
        noise_density=0.15,  # span_corruption: fraction of tokens dropped (T5: 0.15)
        mean_noise_span_length=3.0,  # span_corruption: mean length of a dropped span (T5: 3)
        num_predict=0,  # plm: targets per row (0: seq_len // 6, the paper's partial prediction K = 6)
        perm_size=0,  # plm: factorisation orders are permuted within blocks of this many tokens (0: seq_len)
        max_span=5,  # plm: targets are sampled in spans of 1..max_span tokens, p(n) ~ 1/n (the authors' data_utils)
        mask_alpha=6,  # plm: about mask_beta of every mask_alpha tokens are predicted, span by span
        mask_beta=1,
        worker_count=0,  # grain worker processes
    ))

    c.loss = ml_collections.ConfigDict(dict(label_smoothing=0.0, z_loss=0.0, logits_chunk_size=0))
    c.optimizer = optimizer_section(learning_rate=1e-4)

    c.train = ml_collections.ConfigDict(dict(
        batch_size=32,  # global batch, over all processes and devices
        num_steps=1000,
        num_microbatches=1,  # gradient accumulation inside the jitted step
        log_every=50,
        eval_every=500,
        eval_batches=10,  # batches of the validation split per evaluation; 0 with eval_every > 0: the whole split
        checkpoint_every=500,
        keep_checkpoints=3,
        async_checkpointing=True,
        cpu_peak_flops=0.0,  # fp32 FLOP/s of this CPU for MFU; 0 = measure a matmul at start-up
        progress_bar=True,
        # k train steps per compiled call (a scan over k stacked batches) wherever the next log / eval / checkpoint
        # step is k or more steps away, one step otherwise; exact resume either way. Pays off where the step is
        # short (small models on CPU: jaxlm/train/loop.py). Best chosen to divide log_every / eval_every /
        # checkpoint_every / num_steps.
        steps_per_call=1,
        # > 0: calls prepared ahead by a background thread (host batches read, stacked, on device). Off by default:
        # two in-process runs of the slow test suite aborted (SIGABRT inside a train step) with it on, cause not
        # established; configs/pretrain/shakespeare_char.py turns it on.
        prefetch_batches=0,
        **accounting_keys(),
        # Start a new run from another run's latest state (params, optimizer, step), not its data position:
        # BERT's second phase (512 tokens) continues the first (128 tokens) this way. Ignored on resume.
        init_from="",
    ))
    c.mesh = mesh_section()
    c.distributed = distributed_section()
    c.lock()
    return c


def finetune_config() -> ml_collections.ConfigDict:
    """Every fine-tuning key and its default (`python -m jaxlm.finetune`; configs/finetune/*.py start here).

    Defaults are the BERT paper's fine-tuning recipe (Devlin et al. 2019, section 4 and appendix A.3): Adam with
    lr in {5e-5, 3e-5, 2e-5}, batch 32, 3 epochs, warmup over the first 10% of steps then linear decay to 0,
    weight decay 0.01, dropout 0.1, gradient clipping at global norm 1.0.
    """
    c = ml_collections.ConfigDict()
    c.task = "classification"  # a name of jaxlm.tasks.TASKS
    c.seed = 0  # the head's initialisation and the dropout stream
    c.data_seed = -1  # the training data order; -1: config.seed (Dodge et al. 2020 vary the two apart: jaxlm.sweep)
    # A pretraining run's workdir, one of its checkpoint step dirs (WORKDIR/checkpoints/<step>), an imported HF
    # workdir (`python -m jaxlm.convert from-hf`) or an earlier fine-tuning run. '' = no pretraining: a random
    # backbone from config.model.family/size (a baseline; needs config.tokenizer).
    c.init_checkpoint = ""
    c.init_step = -1  # -1: the latest step of init_checkpoint
    # '' = the checkpoint's own: WORKDIR/tokenizer.model (a pretraining run) or WORKDIR/tokenizer/ (an import);
    # else a sentencepiece .model file or an HF tokenizer directory.
    c.tokenizer = ""

    # With init_checkpoint, the backbone is the checkpoint's: family names the network the recipe is for (another
    # network is an error) and only run-time fields may be set (dtype, scan_layers, remat_policy, attention_impl,
    # dropout rates). Without, family / size / any field shape a random backbone.
    c.model = model_section("", "")
    c.head = ml_collections.ConfigDict(dict(dropout=-1.0))  # -1: the backbone's hidden dropout (0.1)

    c.data = ml_collections.ConfigDict(dict(
        # A GLUE task name (sst2, mrpc, stsb, cola, qqp, mnli, qnli, rte, wnli: the GLUE TSV layouts),
        # conll2003 (CoNLL column files, IOB1 -> BIO), conll (BIO column files; labels from data.labels),
        # squad (SQuAD v1.1 JSON), or tsv | csv | jsonl (generic text classification: the columns below).
        # seq2seq: parallel (line-aligned FILE.<source_field> + FILE.<target_field>, train_file = FILE) or
        # tsv | csv | jsonl (source_field / target_field columns). retrieval: pairs (query / positive columns of a
        # TSV / CSV / JSONL file) or squad (questions over their paragraphs). similarity: stsb or sts (text /
        # text_b / label columns, scores up to score_max).
        format="sst2",
        train_file="",
        eval_file="",  # the dev set: evaluated every epoch; the best checkpoint is kept by its task metric
        # Generic files (tsv/csv/jsonl): column names (or 0-based indices as strings, e.g. '1' for a headerless
        # file) and the label list (file values, in the order of the model's outputs).
        text_column="text",
        text_b_column="",  # '' = single-sentence
        label_column="label",
        labels=("0", "1"),  # also the tag list for format=conll
        header=True,
        # A prepared TFDS catalog dataset instead of files: glue/<task>, squad, conll2003 (not downloaded here).
        tfds_name="",
        tfds_data_dir="",
        train_split="train",
        eval_split="validation",
        max_len=128,
        # Training batches are cut to the shortest of these lengths (and max_len) that holds their rows: each batch
        # one bucket, one compiled step per bucket, the same per-example results as full max_len rows (SST-2 at
        # max_len 128: (16, 32, 64, 128) computes 18% of the padded tokens). Lengths >= max_len are dropped;
        # () = every batch max_len long. Classification and token classification only (QA, seq2seq, retrieval and
        # similarity train on full rows); evaluation and predict keep full rows.
        length_buckets=(16, 32, 64, 128, 256, 512),
        doc_stride=128,  # QA: tokens between the starts of two context windows
        max_query_len=64,  # QA: questions are cut to this many tokens
        n_best=20,  # QA: candidate starts / ends per window
        max_answer_length=30,  # QA: tokens
        train_limit=0,  # use only the first N training examples (0 = all)
        eval_limit=0,  # use only the first N dev examples (0 = all)
        skip_bad_lines=False,  # True: skip and count bad lines instead of stopping at the first (file:line)
        style="",  # special-token wrapping: bert | roberta | gpt2; '' = from the backbone family
        # seq2seq: the source / target language suffix (parallel), column (tsv/csv/jsonl) or TFDS feature key.
        source_field="",
        target_field="",
        prompt="{source}",  # the source as the model reads it, e.g. T5's 'translate English to German: {source}'
        max_target_len=64,  # target tokens (EOS included); max_len bounds the prompted source
        metrics=("bleu",),  # seq2seq dev metrics: bleu | rouge1 | rouge2 | rougeL | rougeLsum (0-100)
        # retrieval (format pairs: TSV / CSV / JSONL or TFDS features): the query, its relevant passage and an
        # optional hard negative ('' = none); queries are cut to max_query_len tokens, passages to max_len.
        query_column="query",
        positive_column="positive",
        negative_column="",
        # retrieval on format squad: > 0 splits one SQuAD file by article, every N-th article (the first
        # included) held out as dev, the rest train, so no paragraph is in both; 0 = every question of the file.
        heldout_every=0,
        score_max=5.0,  # similarity: the largest gold score (STS-B 5), which maps to cosine 1
    ))
    # Sentence embeddings (tasks retrieval / similarity; jaxlm.embed): sentence-transformers' Pooling -> Dense ->
    # Normalize, and MultipleNegativesRankingLoss's scale (logits = scale x cosine).
    c.embedding = ml_collections.ConfigDict(dict(
        pooling="mean",  # cls | mean | max | mean_sqrt_len | last (decoders); several joined by '+'
        dim=0,  # > 0: a dense projection to this size (with `activation`)
        activation="tanh",
        normalize=False,
        scale=20.0,
        symmetric=False,  # retrieval: add the passage -> query direction of the loss
        top_k=10,  # retrieval predict: passages returned per query
        # An embedding init checkpoint (an imported sentence-transformers model, an earlier retrieval / similarity
        # run) keeps its own pooling / dense / normalize, and its dense weights; False: the settings above.
        from_checkpoint=True,
    ))
    # seq2seq: how dev-set and predict outputs are generated (jaxlm.decoding).
    c.generation = ml_collections.ConfigDict(dict(num_beams=1, length_penalty=0.6))  # 1 beam = greedy

    c.optimizer = optimizer_section(learning_rate=2e-5, warmup_steps=-1, warmup_ratio=0.1)

    c.train = ml_collections.ConfigDict(dict(
        num_epochs=3.0,  # may be fractional; 0 = only evaluate the initial model
        num_steps=-1,  # > 0: train exactly this many steps (num_epochs is then ignored), as T5 / t5x count
        batch_size=32,  # global batch
        eval_batch_size=64,
        num_microbatches=1,
        eval_every_epoch=True,  # evaluate (task metrics) at each epoch end and at the last step
        # > 0: evaluate and checkpoint every N steps instead of every epoch (T5 fine-tunes for 2^18 steps and
        # keeps the best of a checkpoint every 5,000, however small the task).
        eval_every_steps=0,
        best_metric="",  # the dev metric that picks the kept checkpoint; '' = the task's (accuracy, f1, ...)
        keep_checkpoints=1,  # the latest N are kept besides the best one
        log_every=50,
        async_checkpointing=True,
        cpu_peak_flops=0.0,
        progress_bar=True,
        **accounting_keys(),
    ))
    # LoRA (Hu et al. 2021; jaxlm.train.lora): rank > 0 freezes the backbone and trains low-rank adapters on the
    # targeted kernels plus the task head; alpha / rank scales the update. targets: comma-separated query, key,
    # value, out, relative (XLNet), mlp_in, mlp_out, or the groups attention, mlp, all. 0 = full fine-tuning.
    # train_also: comma-separated backbone modules trained in full besides (PEFT's modules_to_save), e.g. pooler.
    c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets="query,value", train_also=""))
    c.mesh = mesh_section()
    c.distributed = distributed_section()
    c.lock()
    return c


# GLUE tasks whose train / dev TSVs are in ../shared/data/glue (the rest are read from TFDS glue/<task>), and the
# TFDS dev splits that are not 'validation'.
GLUE_LOCAL_DIRS = {"sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B"}
GLUE_TFDS_DEV_SPLITS = {"mnli": "validation_matched"}


def accounting_keys() -> dict:
    """config.train's compute / energy / carbon accounting keys (jaxlm.train.accounting)."""
    return dict(
        accounting=True,  # device-hours, kWh and kg CO2e in the metrics and summary.json
        carbon_region="",  # a cloud region (us-central2, europe-west4, ...) or gCO2e/kWh; '' = the world average
        pue=0.0,  # power usage effectiveness of the data centre; 0 = the region's provider's published figure
    )


def use_glue_data(c: ml_collections.ConfigDict, task: str, glue_dir: str | None = None) -> ml_collections.ConfigDict:
    """config.data for GLUE `task`: the local GLUE TSVs under glue_dir (default shared_data('glue')) where they
    are, else the TFDS dataset glue/<task> with its dev split. Shared by the per-task GLUE recipes."""
    glue_dir = glue_dir or shared_data("glue")
    c.data.format = task
    if task in GLUE_LOCAL_DIRS:
        c.data.train_file = os.path.join(glue_dir, GLUE_LOCAL_DIRS[task], "train.tsv")
        c.data.eval_file = os.path.join(glue_dir, GLUE_LOCAL_DIRS[task], "dev.tsv")
    else:
        c.data.tfds_name = f"glue/{task}"
        c.data.train_split = "train"
        c.data.eval_split = GLUE_TFDS_DEV_SPLITS.get(task, "validation")
    return c


def use_t5_finetuning_recipe(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """T5's fine-tuning recipe (Raffel et al. 2020, section 3.1.2) on a finetune_config(): Adafactor as in its
    pretraining (decay 0.8, update clipping 1.0, parameter scaling) at a constant 0.001 with no warmup, weight
    decay or gradient clipping, batch 128. Shared by the configs/finetune/t5_*.py recipes and multi30k.py."""
    c.optimizer.update(name="adafactor", learning_rate=1e-3, schedule="constant", warmup_steps=0, warmup_ratio=0.0,
                       weight_decay=0.0, max_grad_norm=0.0, adafactor_decay_rate=0.8,
                       adafactor_clipping_threshold=1.0, adafactor_multiply_by_parameter_scale=True)
    c.train.batch_size = 128
    c.train.eval_batch_size = 128
    return c


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """Imports a config file (optionally `file.py:arg`, big_vision style) and calls its get_config()."""
    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"config file {path!r} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def check_overrides(argv, config_flag: str = "config") -> None:
    """Fails early, naming the valid keys, when a `--config.some.key=value` override names no key; a model field
    the chosen family lacks names that family's fields.

    (ml_collections' own message only suggests one spelling; researchers want the menu.)
    """
    prefix = f"--{config_flag}"
    files = [a.split("=", 1)[1] for a in argv if a.startswith(prefix + "=")]
    overrides = {a[len(prefix) + 1:].split("=", 1)[0]: a.split("=", 1)[1] if "=" in a else ""
                 for a in argv if a.startswith(prefix + ".")}
    if not files or not overrides:
        return
    config = load_config_file(files[-1])
    for dotted in overrides:
        node = config
        for i, key in enumerate(dotted.split(".")):
            if not isinstance(node, ml_collections.ConfigDict) or key not in node:
                where = ".".join(dotted.split(".")[:i]) or "<top level>"
                valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
                raise SystemExit(f"error: unknown config key {prefix}.{dotted}: {where} has no key {key!r}. "
                                 f"Valid keys of {where}: {', '.join(valid)}")
            node = node[key]
    family = overrides.get("model.family") or config.model.family
    model_keys = [d.split(".", 1)[1] for d in overrides if d.startswith("model.") and d not in ("model.family",
                                                                                               "model.size")]
    if family and model_keys:
        family_fields = set(get_family(family).field_names()) - {"family"}
        wrong = [k for k in model_keys if k not in family_fields]
        if wrong:
            raise SystemExit(f"error: {prefix}.model.{wrong[0]}: model family {family!r} has no field {wrong[0]!r}. "
                             f"Valid fields: {', '.join(sorted(family_fields))}")
