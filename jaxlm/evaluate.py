"""Scores a fine-tuned run: `python -m jaxlm.evaluate --workdir=RUN [--split_file=FILE | --split=SPLIT] [--step=N]`.

Reads the run's best dev checkpoint (or --step), its tokenizer and task settings, scores FILE (default: the
run's dev file; for a run on TFDS data, --split names another split of its dataset, e.g. test) with the task's
metrics, prints them and writes RUN/eval_<split>.json (split = FILE's name without extension, e.g.
eval_dev.json). From a notebook: `jaxlm.evaluate.evaluate(workdir, split_file)`.
"""
import json
import os
import sys
import time

from absl import app, flags
from ml_collections import ConfigDict

from jaxlm.paths import absolute
from jaxlm.tasks import BadInputError
from jaxlm.tasks.finetuning import load_finetuned, write_json


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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    result = evaluate(flags.FLAGS.workdir, flags.FLAGS.split_file, split=flags.FLAGS.split,
                      step=None if flags.FLAGS.step < 0 else flags.FLAGS.step, batch_size=flags.FLAGS.batch_size)
    print(json.dumps(result, indent=1))


def cli():
    flags.DEFINE_string("workdir", None, "A fine-tuning run (python -m jaxlm.finetune --workdir).")
    flags.DEFINE_string("split_file", "", "The file to score (default: the run's config.data.eval_file).")
    flags.DEFINE_string("split", "", "A split of the run's TFDS dataset to score instead (e.g. test).")
    flags.DEFINE_integer("step", -1, "Checkpoint step (default: the best by the run's dev metric).")
    flags.DEFINE_integer("batch_size", 0, "Eval batch size (default: the run's config.train.eval_batch_size).")
    flags.mark_flag_as_required("workdir")
    try:
        app.run(main)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
