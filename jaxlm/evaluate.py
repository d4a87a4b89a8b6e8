"""Scores a run: a fine-tuned run's task metrics, or a language model's perplexity on held-out text.

    python -m jaxlm.evaluate --workdir=RUN [--split_file=FILE | --split=SPLIT] [--step=N]
    python -m jaxlm.evaluate --checkpoint=RUN (--text_files='FILES' [--document_per_line] |
        --tfds_name=NAME --split=SPLIT [--text_field=text --data_dir=DIR]) [--max_length=N --stride=N]
        [--windows=hf|lm_eval] [--batch_size=8] [--step=N] [--name=NAME]

--workdir: reads the run's best dev checkpoint (or --step), its tokenizer and task settings, scores FILE
(default: the run's dev file; for a run on TFDS data, --split names another split of its dataset, e.g. test)
with the task's metrics, prints them and writes RUN/eval_<split>.json (split = FILE's name without extension,
e.g. eval_dev.json). From a notebook: `jaxlm.evaluate.evaluate(workdir, split_file)`.

--checkpoint: the sliding-window perplexity of a causal LM (GPT-2; a pretraining run, an import or a text-to-text
run, its latest step or --step) on documents: each file read whole (FILES: a path, glob or comma-separated list
of them), each line with --document_per_line, or each record's --text_field of a prepared TFDS split. Windows of
--max_length tokens (default: the model's positions) every --stride tokens (default: max_length, disjoint), laid
out as Hugging Face's perplexity guide (--windows=hf) or lm-evaluation-harness's loglikelihood_rolling
(--windows=lm_eval); see jaxlm.train.perplexity. Prints and writes RUN/perplexity_<name>.json: the tokens scored,
their total NLL (nats), token_perplexity = exp(nll / tokens), and, over the documents' whitespace-split words and
UTF-8 bytes (lm-eval's counts), word_perplexity, byte_perplexity and bits_per_byte. From a notebook:
`jaxlm.evaluate.perplexity(run, texts)`.
"""
import glob
import json
import os
import sys
import time

from absl import app, flags
from etils import epath
from ml_collections import ConfigDict

from jaxlm.cli import setup_command
from jaxlm.data.corpus import DataNotPreparedError, load_data_source, record_text
from jaxlm.paths import absolute, is_remote, open_text
from jaxlm.tasks import BadInputError
from jaxlm.tasks.finetuning import load_finetuned, write_json
from jaxlm.train import perplexity as ppl
from jaxlm.workdir import Run, open_run, run_dir


def evaluate(workdir: str, split_file: str = "", *, split: str = "", step: int | None = None, batch_size: int = 0,
             limit: int = 0) -> dict:
    """{metrics..., 'step', 'file', 'examples'}; also written to workdir/eval_<split>.json."""
    t0 = time.perf_counter()
    run = load_finetuned(workdir, step)
    data = ConfigDict(run.config["data"])
    path = "" if split and not split_file else split_file or data.eval_file
    split = os.path.splitext(os.path.basename(path))[0] if path else split or data.eval_split
    examples = run.task.read_examples(run.spec, data, path, split=split, limit=limit)
    features = run.task.features(run.spec, examples, run.tokenizer)
    outputs, loss = run.predictor(batch_size or None)(run.params, features)
    result = {"loss": loss, **run.task.metrics(run.spec, examples, features, outputs), "step": run.step,
              "file": absolute(path) if path else f"tfds:{data.tfds_name}[{split}]",
              "examples": len(examples), "seconds": time.perf_counter() - t0}
    write_json(os.path.join(workdir, f"eval_{split}.json"), result)
    return result


# ---------------------------------------------------------------------------------------------------------
# Perplexity of a language model

def _special_id(tokenizer, name: str):
    try:
        return getattr(tokenizer, name)
    except (ValueError, AttributeError):
        return None


def _check_causal(run: Run):
    family = run.family
    if family.kind == "decoder":
        return
    if family.kind == "encoder_decoder":
        why = ("an encoder-decoder: its decoder predicts a target given an encoder input, so plain text has no "
               "left-to-right likelihood to score (fine-tune it text to text and use --workdir)")
    else:
        why = ("an encoder (a masked or permutation LM): it sees both sides of every token, so perplexity is not "
               "defined for it")
    raise ValueError(f"{run.path}: model family {family.name!r} is {why}; perplexity needs a causal LM "
                     "(a 'decoder' family: gpt2)")


def perplexity(checkpoint: str | Run, texts: list[str], *, max_length: int | None = None, stride: int | None = None,
               batch_size: int = 8, windows: str = "hf", step: int | None = None, name: str = "",
               sources: list[str] | None = None) -> dict:
    """Sliding-window perplexity of a run's causal LM over `texts` (one document each), as the module docstring
    says. checkpoint: a run directory or an already opened run (jaxlm.workdir.open_run). sources: what each text
    came from, for error messages (default 'texts[i]'). With `name`, also written to RUN/perplexity_<name>.json.
    """
    t0 = time.perf_counter()
    run = checkpoint if isinstance(checkpoint, Run) else open_run(checkpoint, step)
    _check_causal(run)
    config = run.model_config
    max_length, stride = ppl.check_window_options(max_length, stride, windows, run.family.max_length(config))
    sources = sources or [f"texts[{i}]" for i in range(len(texts))]
    if not texts:
        raise ValueError("no documents to score")
    documents = []
    for text, source in zip(texts, sources):
        ids = run.tokenizer.encode(text) if text.strip() else []
        if not ids:
            raise ValueError(f"{source}: empty document (no text to score)")
        if max(ids) >= config.vocab_size:
            raise ValueError(f"{source}: token id {max(ids)} is outside the model's vocabulary of {config.vocab_size}"
                             f" ({run.tokenizer_path} is not this model's tokenizer?)")
        documents.append(ids)
    prefix_id = next((i for i in (_special_id(run.tokenizer, "eos_id"), _special_id(run.tokenizer, "bos_id"))
                      if i is not None), None)
    seqs = ppl.sequences(documents, windows, prefix_id)
    plan = ppl.plan_windows([len(s) for s in seqs], max_length, stride, windows)
    if not plan:
        raise ValueError(f"no token to score: with --windows={windows} a document's first token is context only, "
                         "and every document is one token long")
    nll, tokens = ppl.score_windows(config, run.params, seqs, plan, width=max_length, batch_size=batch_size,
                                    mesh=run.mesh, rules=run.rules, pad_id=config.pad_token_id or 0)
    words, num_bytes = sum(map(ppl.count_words, texts)), sum(map(ppl.count_bytes, texts))
    result = {"tokens": tokens, "nll": nll, **ppl.normalised(nll, tokens, words, num_bytes), "words": words,
              "bytes": num_bytes, "documents": len(texts), "document_tokens": sum(map(len, documents)),
              "windows": len(plan), "window_layout": windows, "max_length": max_length, "stride": stride,
              "checkpoint": absolute(run.path), "step": run.step, "seconds": time.perf_counter() - t0}
    if name:
        write_json(os.path.join(run_dir(run.path), f"perplexity_{name}.json"), result)
    return result


def expand_text_files(spec: str) -> list[str]:
    """A path, glob or comma-separated list of them -> the files, in order (a glob's matches sorted); a pattern
    that matches nothing is an error naming it."""
    out = []
    for pattern in [p.strip() for p in spec.split(",") if p.strip()]:
        if is_remote(pattern):
            matches = [os.fspath(p) for p in sorted(epath.Path(pattern).parent.glob(epath.Path(pattern).name))]
        else:
            matches = sorted(m for m in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(m))
        if not matches:
            raise FileNotFoundError(f"--text_files: no file matches {pattern!r}")
        out.extend(m for m in matches if m not in out)
    if not out:
        raise FileNotFoundError(f"--text_files={spec!r} names no file")
    return out


def read_documents(files: list[str], document_per_line: bool = False) -> tuple[list[str], list[str]]:
    """(texts, where each came from): each file whole, or each non-blank line of it (newline dropped). A file
    with no text is an error naming it."""
    texts, sources = [], []
    for path in files:
        with open_text(path, newline="") as f:  # the text as stored: '\r\n' stays two bytes
            text = f.read()
        if not text.strip():
            raise ValueError(f"{path}: empty file (no text to score)")
        if document_per_line:
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    texts.append(line)
                    sources.append(f"{path}:{number}")
        else:
            texts.append(text)
            sources.append(path)
    return texts, sources


def read_tfds_documents(name: str, split: str, text_field: str = "text", data_dir: str | None = None
                        ) -> tuple[list[str], list[str]]:
    """(texts, where each came from) of a prepared TFDS split (array_record, through jaxlm.data's reader): one
    document per record, its `text_field`."""
    source = load_data_source(name, split, data_dir)
    texts = [record_text(source[i], text_field) for i in range(len(source))]
    return texts, [f"tfds:{name}[{split}][{i}]" for i in range(len(texts))]


def _source_name(files: list[str]) -> str:
    stem = os.path.splitext(os.path.basename(files[0]))[0]
    return stem if len(files) == 1 else f"{stem}_and_{len(files) - 1}_more"


# ---------------------------------------------------------------------------------------------------------
# Command line

PERPLEXITY_FLAGS = ("text_files", "tfds_name", "document_per_line", "max_length", "stride", "windows", "name",
                    "data_dir", "text_field")


def _perplexity_main(f) -> dict:
    if bool(f.text_files) == bool(f.tfds_name):
        raise app.UsageError("--checkpoint scores text: pass --text_files=FILES or --tfds_name=NAME --split=SPLIT "
                             "(one of them)")
    if f.split_file:
        raise app.UsageError("--split_file is for --workdir (a fine-tuning run); with --checkpoint pass "
                             "--text_files")
    if f.text_files:
        files = expand_text_files(f.text_files)
        texts, sources = read_documents(files, f.document_per_line)
        name, what = f.name or _source_name(files), {"files": [absolute(p) for p in files]}
    else:
        if not f.split:
            raise app.UsageError("--tfds_name needs --split (e.g. test)")
        texts, sources = read_tfds_documents(f.tfds_name, f.split, f.text_field, f.data_dir or None)
        name, what = f.name or f"{f.tfds_name}_{f.split}".replace("/", "_"), {"tfds": f"{f.tfds_name}[{f.split}]"}
    result = perplexity(f.checkpoint, texts, max_length=f.max_length or None, stride=f.stride or None,
                        batch_size=f.batch_size or 8, windows=f.windows, step=None if f.step < 0 else f.step,
                        sources=sources)
    result.update(what)
    write_json(os.path.join(run_dir(f.checkpoint), f"perplexity_{name}.json"), result)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_command()
    f = flags.FLAGS
    if f.workdir and f.checkpoint:
        raise app.UsageError("pass --workdir (a fine-tuning run's task metrics) or --checkpoint (a language model's "
                             "perplexity), not both")
    if f.checkpoint:
        try:
            result = _perplexity_main(f)
        except (ValueError, FileNotFoundError, DataNotPreparedError) as e:  # bad input: say which, no trace
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    elif f.workdir:
        stray = [name for name in PERPLEXITY_FLAGS if f[name].present]
        if stray:
            raise app.UsageError(f"--{', --'.join(stray)}: perplexity flags, for --checkpoint; --workdir scores a "
                                 "fine-tuning run's task metrics")
        result = evaluate(f.workdir, f.split_file, split=f.split, step=None if f.step < 0 else f.step,
                          batch_size=f.batch_size)
    else:
        raise app.UsageError("pass --workdir=RUN (a fine-tuning run's task metrics) or --checkpoint=RUN "
                             "--text_files=FILES (a language model's perplexity)")
    print(json.dumps(result, indent=1))


def cli():
    flags.DEFINE_string("workdir", None, "A fine-tuning run (python -m jaxlm.finetune --workdir).")
    flags.DEFINE_string("split_file", "", "The file to score (default: the run's config.data.eval_file).")
    flags.DEFINE_string("split", "", "A split of the run's TFDS dataset to score instead (e.g. test); with "
                        "--tfds_name, the split to score.")
    flags.DEFINE_integer("step", -1, "Checkpoint step (default: the best by the run's dev metric; with "
                         "--checkpoint the latest).")
    flags.DEFINE_integer("batch_size", 0, "Eval batch size (default: the run's config.train.eval_batch_size; with "
                         "--checkpoint 8 windows).")
    # perplexity
    flags.DEFINE_string("checkpoint", None, "A language model's run (pretraining, `convert from-hf` import or "
                        "text to text): score its perplexity on --text_files or --tfds_name.")
    flags.DEFINE_string("text_files", "", "Documents to score: a path, glob or comma-separated list of them.")
    flags.DEFINE_bool("document_per_line", False, "Each non-blank line of --text_files is a document (default: "
                      "each file).")
    flags.DEFINE_string("tfds_name", "", "A prepared TFDS dataset to score instead (array_record), with --split.")
    flags.DEFINE_string("text_field", "text", "The --tfds_name record field holding the text.")
    flags.DEFINE_string("data_dir", "", "TFDS data_dir of --tfds_name (default: TFDS's).")
    flags.DEFINE_integer("max_length", 0, "Window length in tokens (default: the model's positions).")
    flags.DEFINE_integer("stride", 0, "Tokens between window starts (default: --max_length, disjoint windows).")
    flags.DEFINE_enum("windows", "hf", ppl.WINDOWS, "Window layout: Hugging Face's perplexity guide (hf) or "
                      "lm-evaluation-harness's loglikelihood_rolling (lm_eval: EOS prefix, every token scored).")
    flags.DEFINE_string("name", "", "Output RUN/perplexity_<name>.json (default: the file's name, or "
                        "<dataset>_<split>).")
    try:
        app.run(main)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
