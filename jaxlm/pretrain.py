"""Pretraining: `python -m jaxlm.pretrain --config=configs/pretrain/quickstart.py --workdir=DIR`.

Override any key on the command line (`--config.train.num_steps=200`); a misspelt key is an error listing
the valid ones. Re-running with the workdir of an earlier run resumes from its latest checkpoint, data
iterator included. From a notebook: `jaxlm.pretrain.run(config, workdir)`.
"""
import dataclasses
import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags():
    """Flags exist only when this runs as a command, so notebooks can import pretrain and finetune together."""
    global _CONFIG
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Pretraining config file (configs/pretrain/*.py).",
                                              lock_config=True)
    flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and the summary go (local or gs://).")


def _data_dir(config):
    return config.data.data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_dataset(config):
    """The dataset name the pipeline reads, preparing jaxlm's own builders first (offline)."""
    from jaxlm import data

    d = config.data
    if d.dataset == "jaxlm_pydoc":
        return data.prepare_pydoc(_data_dir(config)).name
    if d.dataset == "text_files":
        if not d.text_files:
            raise ValueError("config.data.dataset='text_files' needs config.data.text_files (a path or glob)")
        return data.prepare_text_files(d.text_files, _data_dir(config),
                                       document_separator=d.document_separator).name
    return d.dataset


def load_or_train_tokenizer(config, workdir, dataset_name):
    """config.data.tokenizer if given; else one trained on the training split, kept in the workdir so that a
    resumed run tokenizes exactly as before."""
    import jax
    from etils import epath

    from jaxlm import data
    from jaxlm.paths import is_remote

    if config.data.tokenizer:
        return data.Tokenizer(config.data.tokenizer, extra_ids=config.data.tokenizer_extra_ids)
    model_file = epath.Path(workdir) / "tokenizer.model"
    if model_file.exists():
        return data.Tokenizer(model_file)
    if jax.process_count() > 1:
        raise ValueError("multi-process runs need config.data.tokenizer (a .model file every host can read); "
                         "train one first with `python -m jaxlm.tokenizer train ...`")
    source = data.load_data_source(dataset_name, config.data.train_split, _data_dir(config))
    texts = (bytes(r["text"]).decode("utf-8", "replace") if not isinstance(r["text"], str) else r["text"]
             for r in (source[i] for i in range(len(source))))
    logging.info("training a %d-piece %s tokenizer on %s", config.data.tokenizer_vocab_size,
                 config.data.tokenizer_model_type, dataset_name)
    with tempfile.TemporaryDirectory() as tmp:  # sentencepiece writes local files: a remote workdir gets copies
        prefix = os.path.join(tmp if is_remote(workdir) else workdir, "tokenizer")
        data.train_tokenizer(texts, prefix, config.data.tokenizer_vocab_size, config.data.tokenizer_model_type,
                             num_sentinels=config.data.tokenizer_num_sentinels)
        if is_remote(workdir):
            for suffix in (".model", ".vocab"):
                (epath.Path(workdir) / f"tokenizer{suffix}").write_bytes(epath.Path(prefix + suffix).read_bytes())
    return data.Tokenizer(model_file)


def model_config_from(config, vocab_size):
    from jaxlm.models import get_model_config

    overrides = {k: v for k, v in config.model.items() if k not in ("family", "size")}
    overrides.setdefault("vocab_size", vocab_size)
    if overrides["vocab_size"] < vocab_size:
        raise ValueError(f"config.model.vocab_size={overrides['vocab_size']} is smaller than the tokenizer's "
                         f"vocabulary ({vocab_size})")
    return get_model_config(config.model.family, config.model.size or None, **overrides)


def dummy_inputs(objective, batch_size, seq_len, max_predictions, **noise):
    """Keyword arguments for `model.init` shaped like the objective's batches (noise: span corruption's
    noise_density / mean_noise_span_length, which set the decoder length)."""
    from jaxlm.data import empty_batch

    batch = empty_batch(objective, batch_size, seq_len, max_predictions, **noise)
    if objective == "span_corruption":  # encoder-decoder
        return {"encoder_inputs": batch["inputs"], "decoder_inputs": batch["decoder_inputs"]}
    return {k: v for k, v in batch.items() if k in ("inputs", "segment_ids", "positions")}


def training_flops_per_token(config, model_config, params) -> float:
    """Analytic training FLOPs per input token, as MFU and benchmarks/estimate.py count them.

    Decoder/encoder-only: 6 x matmul params + attention (jaxlm.train.metrics). MLM computes its vocabulary
    projection only at the max_predictions masked slots, so that matmul is counted at P/L of the tokens.
    Span corruption: each T5 stack over its own length (encoder: inputs, decoder: targets).
    """
    from jaxlm import data, train
    from jaxlm.models.common import matmul_params

    seq_len = config.data.seq_len
    if config.objective == "span_corruption":
        from jaxlm.models.t5 import seq2seq_train_flops

        noise = dict(noise_density=config.data.noise_density,
                     mean_noise_span_length=config.data.mean_noise_span_length)
        targets = data.span_corruption_lengths(seq_len, **noise)[1]
        return seq2seq_train_flops(model_config, params, seq_len, targets) / seq_len
    per_token = train.transformer_train_flops_per_token(
        matmul_params(params), model_config.num_layers, model_config.hidden_size, seq_len)
    if config.objective in ("mlm", "mlm_nsp"):
        unused_fraction = 1.0 - min(config.data.max_predictions, seq_len) / seq_len
        per_token -= 6.0 * model_config.vocab_size * model_config.hidden_size * unused_fraction
    return per_token


def unigram_baseline_accuracy(batches) -> float | None:
    """MLM accuracy of always predicting the most frequent masked token: the bar a model must clear."""
    import numpy as np

    counts = {}
    for batch in batches:
        targets = batch["masked_targets"][batch["masked_weights"] > 0]
        for token, n in zip(*np.unique(targets, return_counts=True)):
            counts[int(token)] = counts.get(int(token), 0) + int(n)
    total = sum(counts.values())
    return max(counts.values()) / total if total else None


def run(config, workdir: str):
    """Builds every piece from the config and trains; returns the run summary."""
    import jax
    from etils import epath

    from jaxlm import data, sharding, train
    from jaxlm.models import build_model
    from jaxlm.models.common import matmul_params
    from jaxlm.objectives.pretraining import LossConfig, make_pretraining_loss

    sharding.initialize_from_config(config.distributed)
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    process_index, process_count = jax.process_index(), jax.process_count()
    batch_size = config.train.batch_size
    if batch_size % process_count:
        raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the {process_count} processes")

    dataset_name = prepare_dataset(config)
    tokenizer = load_or_train_tokenizer(config, workdir, dataset_name)
    model_config = model_config_from(config, tokenizer.vocab_size)
    if config.objective == "span_corruption":  # T5's generation and export read EOS from the model config
        model_config = dataclasses.replace(model_config, eos_token_id=tokenizer.eos_id)
    model = build_model(model_config)
    mesh = sharding.make_mesh(**config.mesh)
    if batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the data x fsdp mesh axes "
                         f"({mesh.shape['data']} x {mesh.shape['fsdp']})")
    logging.info("model %s; mesh %s; %d process(es)", model_config, dict(mesh.shape), process_count)

    opt_dict = config.optimizer.to_dict()
    if opt_dict["total_steps"] < 0:
        opt_dict["total_steps"] = config.train.num_steps
    tx, schedule = train.make_optimizer(train.OptimizerConfig.from_dict(opt_dict))
    seq_len, max_predictions = config.data.seq_len, config.data.max_predictions
    noise = dict(noise_density=config.data.noise_density,
                 mean_noise_span_length=config.data.mean_noise_span_length)
    dummy = dummy_inputs(config.objective, 1, seq_len, max_predictions, **noise)
    state, layout = train.create_train_state(lambda rng: model.init(rng, **dummy), tx,
                                             jax.random.key(config.seed), mesh)

    manager = train.make_checkpoint_manager(workdir, max_to_keep=config.train.keep_checkpoints,
                                            async_save=config.train.async_checkpointing)
    if config.train.init_from and manager.latest_step() is None:
        restored = train.restore_latest(config.train.init_from, layout)  # onto this run's mesh
        if restored is None:
            raise FileNotFoundError(f"config.train.init_from={config.train.init_from!r} has no checkpoint")
        logging.info("starting from %s step %d (its data position is not used)", config.train.init_from,
                     restored.step)
        state = restored.state

    loss_fn = make_pretraining_loss(config.objective, model, LossConfig(**config.loss))
    train_step = train.jit_train_step(
        train.make_train_step(loss_fn, tx, num_microbatches=config.train.num_microbatches,
                              learning_rate_fn=schedule),
        layout, sharding.batch_sharding(mesh), mesh)
    eval_step = train.jit_eval_step(train.make_eval_step(lambda p, b, rng: loss_fn(p, b, None)),
                                    layout, sharding.batch_sharding(mesh), mesh)

    common = dict(tokenizer=tokenizer, objective=config.objective, seq_len=seq_len,
                  batch_size=batch_size // process_count, data_dir=_data_dir(config),
                  max_predictions=max_predictions, mask_rate=config.data.mask_rate,
                  whole_word_masking=config.data.whole_word_masking,
                  nsp_examples_per_document=config.data.nsp_examples_per_document, process_index=process_index,
                  process_count=process_count, **noise)
    train_iter = data.make_pretraining_iterator(dataset_name, split=config.data.train_split, seed=config.seed,
                                                worker_count=config.data.worker_count, **common)
    eval_iter_fn = None
    if config.train.eval_every or config.train.eval_batches:
        eval_iter_fn = lambda: data.make_eval_iterator(  # noqa: E731
            dataset_name, split=config.data.eval_split, num_batches=config.train.eval_batches,
            seed=config.seed, **common)

    extra_summary = {}
    if eval_iter_fn is not None and config.objective in ("mlm", "mlm_nsp"):
        extra_summary["eval_mlm_unigram_baseline_accuracy"] = unigram_baseline_accuracy(eval_iter_fn())

    tokens_per_step = batch_size * seq_len
    flops_per_token = training_flops_per_token(config, model_config, state.params)
    saved_config = {**config.to_dict(), "model_config": dataclasses.asdict(model_config),
                    "tokenizer_file": tokenizer.model_file if hasattr(tokenizer, "model_file") else None}
    peak = None
    if jax.local_devices()[0].platform == "cpu" and config.train.cpu_peak_flops:
        peak = config.train.cpu_peak_flops / jax.local_device_count()
    summary = train.train(
        state=state, train_step=train_step, train_iter=train_iter, num_steps=config.train.num_steps,
        workdir=workdir, mesh=mesh, checkpoint_manager=manager, checkpoint_every=config.train.checkpoint_every,
        eval_step=eval_step, eval_iter_fn=eval_iter_fn, eval_every=config.train.eval_every,
        log_every=config.train.log_every, flops_per_step=flops_per_token * tokens_per_step,
        tokens_per_step=tokens_per_step, peak_flops_per_device=peak, config=saved_config,
        progress=config.train.progress_bar, extra_summary=extra_summary)
    manager.close()
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.workdir is None:
        raise app.UsageError("--workdir is required")
    from jaxlm.cli import quiet_library_logs

    quiet_library_logs()
    summary = run(_CONFIG.value, FLAGS.workdir)
    if summary.get("status") != "completed":
        logging.warning("run ended with status %s", summary.get("status"))
    if not _CONFIG.value.train.progress_bar:  # with the bar on, the loop already printed the summary table
        from jaxlm.train.metrics import format_summary

        print(format_summary({k: v for k, v in summary.items() if k != "state"}))


if __name__ == "__main__":
    from jaxlm.config_defaults import check_overrides

    check_overrides(sys.argv)
    define_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
