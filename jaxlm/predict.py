"""Predictions of a fine-tuned run: `python -m jaxlm.predict --workdir=RUN --input=in.jsonl --output=out.jsonl`.

Input: one JSON object per line, by task:
    classification / regression   {"text": "...", "text_b": "..."}   (text_b only for sentence-pair tasks)
    token_classification          {"tokens": ["EU", "rejects", ...]}  or  {"text": "EU rejects ..."} (split on spaces)
    question_answering            {"question": "...", "context": "...", "id": "..."?}
    seq2seq                       {"source": "A man rides a bike."}  (the run's prompt template is applied);
                                  a text-to-text GLUE / SQuAD run reads its task's fields as above
                                  ({"text", "text_b"} or {"question", "context"})
Output: each input object with the prediction added: "label" + "probabilities" (classification), "score"
(regression), "tags" (one per token), "answer", "probability", "start", "end", "nbest" (QA), or "prediction"
(the generated text, seq2seq).
From a notebook: `jaxlm.predict.predict(workdir, records)` with a list of such dicts.
"""
import json
import os
import sys

import jax
from absl import app, flags

from jaxlm.cli import setup_command
from jaxlm.paths import is_remote, open_text
from jaxlm.tasks import BadInputError
from jaxlm.tasks.finetuning import load_finetuned


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file (local or remote, gs://...); blank lines are skipped."""
    records = []
    with open_text(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BadInputError(f"{path}:{number}: not valid JSON ({e.msg})") from e
    return records


def predict(workdir: str, records: list[dict], *, step: int | None = None, batch_size: int = 0,
            source: str = "<records>") -> list[dict]:
    """Each record with its prediction fields added."""
    run = load_finetuned(workdir, step)
    examples = run.task.examples_from_records(run.spec, records, source)
    if not examples:
        return []
    features = run.task.features(run.spec, examples, run.tokenizer)
    outputs, _ = run.predictor(batch_size or None)(run.params, features)
    return [{**record, **prediction} for record, prediction in
            zip(records, run.task.predictions(run.spec, examples, features, outputs))]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_command()
    f = flags.FLAGS
    records = read_jsonl(f.input)
    results = predict(f.workdir, records, step=None if f.step < 0 else f.step, batch_size=f.batch_size,
                      source=f.input)
    if jax.process_index() == 0:
        if not is_remote(f.output):  # an object store has no directories to make
            os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
        with open_text(f.output, "w") as out:
            for r in results:
                out.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"{len(results)} predictions written to {f.output}")


def cli():
    flags.DEFINE_string("workdir", None, "A fine-tuning run (python -m jaxlm.finetune --workdir).")
    flags.DEFINE_string("input", None, "JSONL input, one object per line.")
    flags.DEFINE_string("output", None, "JSONL output.")
    flags.DEFINE_integer("step", -1, "Checkpoint step (default: the best by the run's dev metric).")
    flags.DEFINE_integer("batch_size", 0, "Batch size (default: the run's config.train.eval_batch_size).")
    for name in ("workdir", "input", "output"):
        flags.mark_flag_as_required(name)
    try:
        app.run(main)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
