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
import dataclasses
import json
import os
import sys

from absl import app, flags


def _examples(spec, records: list[dict], source: str) -> list:
    """Task examples from input records; a missing field is an error naming source:line."""
    from jaxlm import tasks

    from jaxlm.tasks import text_to_text

    if spec.task == "seq2seq" and spec.format in text_to_text.TEXT_TO_TEXT_FORMATS:  # T5's GLUE / SQuAD
        task = "question_answering" if spec.format == "squad" else "classification"
        pair = spec.format != "squad" and tasks.glue_layout(spec.format).text_b_column is not None
        originals = _examples(dataclasses.replace(spec, task=task, pair=pair), records, source)
        return text_to_text.to_text_pairs(spec.format, originals)
    out = []
    for number, r in enumerate(records, 1):
        where = f"{source}:{number}"

        def need(key, kind=str):
            if not isinstance(r, dict) or key not in r or not isinstance(r[key], kind) or not r[key]:
                raise tasks.BadInputError(f"{where}: expected a non-empty {kind.__name__} {key!r} "
                                          f"(a {spec.task} model); got {json.dumps(r)[:200]}")
            return r[key]

        if spec.task == "seq2seq":
            out.append(tasks.Seq2SeqExample(where, need("source").strip()))
        elif spec.task in ("classification", "regression"):
            out.append(tasks.TextExample(where, need("text").strip(), need("text_b").strip() if spec.pair else None))
        elif spec.task == "token_classification":
            words = r.get("tokens") if isinstance(r, dict) and "tokens" in r else need("text").split()
            if not isinstance(words, list) or not words or not all(isinstance(w, str) and w for w in words):
                raise tasks.BadInputError(f"{where}: 'tokens' must be a non-empty list of non-empty strings")
            out.append(tasks.TokenExample(where, tuple(words)))
        else:
            out.append(tasks.QAExample(str(r.get("id", where)), need("question"), need("context")))
    return out


def read_jsonl(path: str) -> list[dict]:
    """The records of a JSONL file (local or remote, gs://...); blank lines are skipped."""
    from jaxlm.paths import open_text
    from jaxlm.tasks import BadInputError

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
    from jaxlm import task_pipeline as tp

    run = tp.load_finetuned(workdir, step)
    examples = _examples(run.spec, records, source)
    if not examples:
        return []
    features = tp.make_features(run.spec, examples, run.tokenizer)
    outputs, _ = run.predictor(batch_size or None)(run.params, features)
    return [{**record, **prediction} for record, prediction in
            zip(records, tp.predictions(run.spec, examples, features, outputs))]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    from jaxlm.paths import is_remote, open_text

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
    from jaxlm.tasks import BadInputError

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
