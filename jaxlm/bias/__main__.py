"""`python -m jaxlm.bias --checkpoint RUN [--data_file CSV] [--output_dir DIR]`: CrowS-Pairs on any run.

RUN is a pretraining run, an import (`python -m jaxlm.convert from-hf`) or a fine-tuning run. Masked LMs (BERT,
RoBERTa, XLNet) are scored by the pseudo-log-likelihood of the shared tokens (the authors' metric.py), GPT-2 and T5
by the sentence log-likelihood (lm-evaluation-harness's crows_pairs). Writes crows_pairs.json (metric score, per
direction and bias type, pairs/s), crows_pairs_scores.csv and crows_pairs.png to --output_dir (default RUN/bias)
and prints the report.
"""
from __future__ import annotations

import json
import os
import sys

import jax
from absl import app, flags
from tqdm.auto import tqdm

from jaxlm.bias.crows_pairs import DEFAULT_FILE
from jaxlm.bias.probe import crows_pairs_probe
from jaxlm.cli import setup_command
from jaxlm.tasks.readers import BadInputError
from jaxlm.workdir import run_dir

flags.DEFINE_string("checkpoint", None, "A run: pretraining, `convert from-hf` import or fine-tuning.")
flags.DEFINE_string("data_file", DEFAULT_FILE, "The CrowS-Pairs CSV (the authors' crows_pairs_anonymized.csv).")
flags.DEFINE_string("output_dir", "", "Where the report goes (default: RUN/bias).")
flags.DEFINE_integer("step", -1, "Checkpoint step (default: the latest; a fine-tuning run's best dev step).")
flags.DEFINE_integer("batch_size", 0, "Model rows per batch, rounded up to the mesh's data x fsdp size (default: "
                     "128 masked copies, 32 sentences).")
flags.DEFINE_string("tokenizer", "", "Tokenizer to use instead of the run's own.")
flags.mark_flag_as_required("checkpoint")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_command()
    f = flags.FLAGS
    bar = None
    if jax.process_index() == 0:
        bar = tqdm(unit="row", desc="crows_pairs")
    try:
        report = crows_pairs_probe(f.checkpoint, f.data_file, step=None if f.step < 0 else f.step,
                                   batch_size=f.batch_size, tokenizer=f.tokenizer,
                                   output_dir=f.output_dir or os.path.join(run_dir(f.checkpoint), "bias"),
                                   progress=bar.update if bar is not None else None)
    except (BadInputError, ValueError, FileNotFoundError) as e:  # bad input: say which, no trace
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if bar is not None:
            bar.close()
    if jax.process_index() == 0:
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    app.run(main)
