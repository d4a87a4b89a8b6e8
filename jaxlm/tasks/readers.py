"""Task files -> examples: GLUE-style TSV, generic text classification (TSV/CSV/JSONL), CoNLL NER, SQuAD v1.1,
and text-to-text pairs (line-aligned parallel files as Multi30k / WMT ship them, or TSV/CSV/JSONL columns).

Every reader returns `(examples, stats)`. A bad line (wrong column count, a label outside the label list, empty
text, an unknown tag) raises `BadInputError` naming `file:line` and what was expected; with
`skip_bad_lines=True` it is skipped instead and counted in `stats.skipped[reason]` (the first few messages are
kept in `stats.first_errors`), so a run on messy data still says how much it threw away.

Quirks of the real files that the readers handle (see shared/data/README.md): UTF-8 BOMs on the header line
(MRPC), unbalanced double quotes (MRPC, STS-B: TSV is read with no quote handling), trailing spaces before the
tab (SST-2), `-DOCSTART-` separators in several forms (CoNLL), trailing blank lines (CoNLL testa/testb).
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence

from jaxlm.paths import is_file, open_text

MAX_KEPT_ERRORS = 5
DOCSTART = "-DOCSTART-"
CONLL2003_BIO_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
_TAG = re.compile(r"^(O|[BI]-\S+)$")


class BadInputError(ValueError):
    """A line of a task file that cannot become an example; the message names file:line."""


@dataclasses.dataclass(frozen=True)
class TextExample:
    """One classification / regression example. `label`: index into the label list (int), the score (float,
    regression), or None (unlabelled input, e.g. for predict)."""
    guid: str  # "file:line", for error messages and prediction files
    text_a: str
    text_b: str | None = None
    label: int | float | None = None


@dataclasses.dataclass(frozen=True)
class TokenExample:
    """One sentence for token classification. `tags`: one tag string per word (None when unlabelled)."""
    guid: str  # "file:line" of the first word
    words: tuple[str, ...]
    tags: tuple[str, ...] | None = None
    document: int = 0  # index of the -DOCSTART- document it belongs to (0 when the file has none)


@dataclasses.dataclass(frozen=True)
class Answer:
    text: str
    answer_start: int  # character offset into the context (Python str index, not bytes)


@dataclasses.dataclass(frozen=True)
class QAExample:
    """One SQuAD question. Dev questions have several (often duplicate) reference answers."""
    id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    title: str = ""


@dataclasses.dataclass(frozen=True)
class Seq2SeqExample:
    """One text-to-text pair (translation, summarisation, ...). `target` None: unlabelled input (predict).
    `example`: the classification / QA example a text-to-text pair was made from (jaxlm.tasks.text_to_text),
    which its task's metrics score the generated text against."""
    guid: str  # "file:line" (parallel files: the source file's)
    source: str
    target: str | None = None
    example: TextExample | QAExample | None = None


@dataclasses.dataclass(frozen=True)
class RetrievalExample:
    """One query with its relevant passage (None: an unlabelled query, for predict) and optional hard negatives.
    `group`: the unit a train / dev split keeps whole (SQuAD: the article), so that no passage is in both."""
    guid: str  # "file:line" (SQuAD: the question id)
    query: str
    positive: str | None = None
    negatives: tuple[str, ...] = ()
    group: str = ""


@dataclasses.dataclass
class ReadStats:
    """What a reader kept and threw away."""
    path: str
    examples: int = 0
    skipped: dict = dataclasses.field(default_factory=dict)  # reason -> count
    first_errors: list = dataclasses.field(default_factory=list)  # first MAX_KEPT_ERRORS messages
    documents: int = 0  # CoNLL: -DOCSTART- lines seen

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())


class _Errors:
    """Raise, or (skip_bad_lines) count and keep going."""

    def __init__(self, stats: ReadStats, skip_bad_lines: bool):
        self.stats, self.skip = stats, skip_bad_lines

    def bad(self, reason: str, message: str):
        if not self.skip:
            raise BadInputError(message)
        self.stats.skipped[reason] = self.stats.skipped.get(reason, 0) + 1
        if len(self.stats.first_errors) < MAX_KEPT_ERRORS:
            self.stats.first_errors.append(message)


# ----------------------------------------------------------------------------------------------------------------
# Text classification: GLUE layouts and generic files
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TextLayout:
    """Where the fields of a text-classification file are. Columns are header names (str) or 0-based indices
    (int). `labels`: the label list (file values as strings; example.label is the index); None for regression."""
    text_column: str | int
    label_column: str | int | None = "label"
    text_b_column: str | int | None = None
    labels: tuple[str, ...] | None = ("0", "1")
    regression: bool = False
    header: bool = True
    format: str | None = None  # tsv (no quoting) | csv (quoted, may span lines) | jsonl; None: from the extension


# The GLUE files as GLUE's download script writes them (train/dev; test files have no label column).
GLUE_LAYOUTS = {
    "sst2": TextLayout("sentence", "label", format="tsv"),
    "cola": TextLayout(3, 1, header=False, format="tsv"),  # source, label, original label, sentence
    "mrpc": TextLayout("#1 String", "Quality", "#2 String", format="tsv"),
    "stsb": TextLayout("sentence1", "score", "sentence2", labels=None, regression=True, format="tsv"),
    "qqp": TextLayout("question1", "is_duplicate", "question2", format="tsv"),
    "mnli": TextLayout("sentence1", "gold_label", "sentence2", labels=("contradiction", "entailment", "neutral"),
                       format="tsv"),
    "qnli": TextLayout("question", "label", "sentence", labels=("entailment", "not_entailment"), format="tsv"),
    "rte": TextLayout("sentence1", "label", "sentence2", labels=("entailment", "not_entailment"), format="tsv"),
    "wnli": TextLayout("sentence1", "label", "sentence2", format="tsv"),
}
_GLUE_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-mm": "mnli", "mnli_matched": "mnli",
                 "mnli_mismatched": "mnli"}


def glue_layout(task: str) -> TextLayout:
    """The layout of a GLUE task by name ('sst2', 'SST-2', 'mrpc', 'sts-b', ...)."""
    key = task.lower()
    key = _GLUE_ALIASES.get(key, key)
    if key not in GLUE_LAYOUTS:
        raise ValueError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_LAYOUTS)} "
                         "(for other files use read_text_classification with a TextLayout)")
    return GLUE_LAYOUTS[key]


def read_glue(path: str | os.PathLike, task: str, *, skip_bad_lines: bool = False,
              labelled: bool = True) -> tuple[list[TextExample], ReadStats]:
    """A GLUE train/dev TSV by task name. labelled=False ignores the label column (labels become None)."""
    layout = glue_layout(task)
    if not labelled:
        layout = dataclasses.replace(layout, label_column=None)
    return read_text_classification(path, layout, skip_bad_lines=skip_bad_lines)


def _format_of(path: str, layout_format: str | None) -> str:
    if layout_format:
        return layout_format
    ext = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(ext, "tsv")


def _records(path: str, fmt: str) -> Iterator[tuple[int, list[str] | dict]]:
    """(1-based line number where the record starts, fields) for each non-empty record."""
    with open_text(path, encoding="utf-8-sig", newline="") as f:
        if fmt == "csv":
            reader = csv.reader(f)
            start = 1
            for fields in reader:
                if fields:
                    yield start, fields
                start = reader.line_num + 1
        elif fmt == "tsv":
            for number, line in enumerate(f, 1):
                line = line.rstrip("\r\n")
                if line.strip():
                    yield number, line.split("\t")
        elif fmt == "jsonl":
            for number, line in enumerate(f, 1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield number, e
                        continue
                    yield number, record
        else:
            raise ValueError(f"{path}: format={fmt!r}; choose tsv, csv or jsonl")


def _column_index(path: str, header: list[str] | None, column: str | int, role: str) -> int:
    if isinstance(column, int):
        return column
    if header is None:
        raise ValueError(f"{path}: {role} {column!r} is a column name but the layout says the file has no header; "
                         "give a 0-based column index")
    names = [h.strip() for h in header]
    if column not in names:
        raise BadInputError(f"{path}:1: no column {column!r} for the {role} in the header {names}")
    return names.index(column)


def read_text_classification(path: str | os.PathLike, layout: TextLayout, *,
                             skip_bad_lines: bool = False) -> tuple[list[TextExample], ReadStats]:
    """(text[, text_b], label) examples from a TSV / CSV / JSONL file laid out as `layout` says.

    TSV is split on tabs with no quote handling (GLUE files contain unbalanced quotes); CSV uses the csv module
    (quoted fields, embedded newlines); JSONL reads one object per line with `layout`'s columns as keys.
    Texts are stripped of surrounding whitespace. Label values are matched as strings against layout.labels.
    """
    path = os.fspath(path)
    if not is_file(path):
        raise FileNotFoundError(f"task data file not found: {path}")
    if not layout.regression and layout.label_column is not None and not layout.labels:
        raise ValueError(f"{path}: a classification layout needs its label list (layout.labels)")
    fmt = _format_of(path, layout.format)
    stats = ReadStats(path)
    errors = _Errors(stats, skip_bad_lines)
    labels = None if layout.labels is None else [str(x) for x in layout.labels]
    examples = []
    records = _records(path, fmt)
    roles = [("text", layout.text_column), ("text_b", layout.text_b_column), ("label", layout.label_column)]
    roles = [(role, col) for role, col in roles if col is not None]
    if fmt == "jsonl":
        if any(isinstance(col, int) for _, col in roles):
            raise ValueError(f"{path}: JSONL records are objects; name columns by key, got {dict(roles)}")
        index, num_columns = {role: col for role, col in roles}, None
    else:
        header = None
        if layout.header:
            first = next(records, None)
            if first is None:
                raise BadInputError(f"{path}:1: empty file (expected a header line)")
            header = first[1]
        index = {role: _column_index(path, header, col, role) for role, col in roles}
        num_columns = len(header) if header is not None else None
    for number, fields in records:
        where = f"{path}:{number}"
        if isinstance(fields, Exception):
            errors.bad("malformed_line", f"{where}: not valid JSON ({fields})")
            continue
        values = {}
        if fmt == "jsonl":
            if not isinstance(fields, dict):
                errors.bad("malformed_line", f"{where}: expected a JSON object, got {type(fields).__name__}")
                continue
            missing = [key for key in index.values() if key not in fields]
            if missing:
                errors.bad("malformed_line", f"{where}: missing key(s) {missing}; the record has {sorted(fields)}")
                continue
            values = {role: fields[key] for role, key in index.items()}
        else:
            if num_columns is None:  # no header: the first record fixes the column count
                num_columns = len(fields)
                needed = max(index.values()) + 1
                if num_columns < needed:
                    raise BadInputError(f"{where}: {num_columns} columns, but the layout reads column {needed - 1} "
                                        f"({dict(roles)})")
            if len(fields) != num_columns:
                errors.bad("malformed_line", f"{where}: {len(fields)} columns, expected {num_columns} "
                           f"({'as in the header' if layout.header else 'as in the first line'}); "
                           "an unescaped tab or newline in a text field?")
                continue
            values = {role: fields[i] for role, i in index.items()}
        text_a = str(values["text"]).strip()
        text_b = None if "text_b" not in values else str(values["text_b"]).strip()
        if not text_a or (text_b is not None and not text_b):
            which = "text" if not text_a else "text_b"
            errors.bad("empty_text", f"{where}: empty {which} (column {index[which]!r})")
            continue
        label = None
        if "label" in values:
            raw = values["label"]
            raw_text = str(raw).strip() if not isinstance(raw, bool) else str(int(raw))
            if layout.regression:
                try:
                    label = float(raw_text)
                except ValueError:
                    errors.bad("bad_label", f"{where}: score {raw_text!r} is not a number")
                    continue
            else:
                if raw_text not in labels:
                    errors.bad("bad_label", f"{where}: label {raw_text!r} is not in the label list {labels}")
                    continue
                label = labels.index(raw_text)
        examples.append(TextExample(where, text_a, text_b, label))
    stats.examples = len(examples)
    return examples, stats


# ----------------------------------------------------------------------------------------------------------------
# Text-to-text pairs
# ----------------------------------------------------------------------------------------------------------------

def parallel_paths(prefix: str | os.PathLike, source_field: str, target_field: str | None) -> tuple[str, str | None]:
    """fairseq / Multi30k naming: PREFIX.en + PREFIX.de for prefix PREFIX and fields 'en', 'de'."""
    prefix = os.fspath(prefix)
    return f"{prefix}.{source_field}", (f"{prefix}.{target_field}" if target_field else None)


def read_parallel(source_path: str | os.PathLike, target_path: str | os.PathLike | None = None, *,
                  skip_bad_lines: bool = False) -> tuple[list[Seq2SeqExample], ReadStats]:
    """Line i of the source file paired with line i of the target file (target_path None: sources only).

    Files of different lengths are an error naming both files and both counts: a pair shifted by one line
    trains a model on nonsense without any other symptom. An empty line on either side is a bad line.
    """
    source_path = os.fspath(source_path)
    paths = [source_path] + ([os.fspath(target_path)] if target_path else [])
    for path in paths:
        if not is_file(path):
            raise FileNotFoundError(f"task data file not found: {path}")
    columns = []
    for path in paths:
        with open_text(path, encoding="utf-8-sig", newline="") as f:
            columns.append([line.rstrip("\r\n") for line in f])
        while columns[-1] and not columns[-1][-1].strip():  # trailing blank lines
            columns[-1].pop()
    if len(columns) == 2 and len(columns[0]) != len(columns[1]):
        raise BadInputError(f"{paths[0]} has {len(columns[0])} lines but {paths[1]} has {len(columns[1])}: "
                            "parallel files must be line-aligned")
    stats = ReadStats(source_path)
    errors = _Errors(stats, skip_bad_lines)
    examples = []
    for number, texts in enumerate(zip(*columns), 1):
        texts = [t.strip() for t in texts]
        empty = [paths[i] for i, t in enumerate(texts) if not t]
        if empty:
            errors.bad("empty_text", f"{empty[0]}:{number}: empty line (its pair is line {number} of the other "
                       "file)")
            continue
        examples.append(Seq2SeqExample(f"{source_path}:{number}", texts[0], texts[1] if len(texts) == 2 else None))
    stats.examples = len(examples)
    return examples, stats


def read_seq2seq(path: str | os.PathLike, source_column: str | int, target_column: str | int | None, *,
                 header: bool = True, format: str | None = None,
                 skip_bad_lines: bool = False) -> tuple[list[Seq2SeqExample], ReadStats]:
    """(source, target) pairs from two columns of a TSV / CSV / JSONL file (target_column None: sources only);
    the same parsing and bad-line reporting as read_text_classification."""
    layout = TextLayout(source_column, None, target_column, labels=None, header=header, format=format)
    examples, stats = read_text_classification(path, layout, skip_bad_lines=skip_bad_lines)
    return [Seq2SeqExample(e.guid, e.text_a, e.text_b) for e in examples], stats


# ----------------------------------------------------------------------------------------------------------------
# CoNLL-2003 NER
# ----------------------------------------------------------------------------------------------------------------

def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """IOB1 (B- only between two adjacent same-type chunks) -> BIO/IOB2 (every chunk starts with B-)."""
    out = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def read_conll(path: str | os.PathLike, *, tag_column: int = -1, scheme: str = "iob1", to_bio: bool = True,
               labels: Sequence[str] | None = None, labelled: bool = True,
               skip_bad_lines: bool = False) -> tuple[list[TokenExample], ReadStats]:
    """Sentences of a CoNLL column file (`token POS chunk NER`, space- or tab-separated).

    Blank lines end sentences; lines starting with -DOCSTART- (any of its forms) end the document and are
    dropped; empty sentences are skipped. scheme: the file's tagging ('iob1' as in CoNLL-2003, or 'bio');
    to_bio converts IOB1 to BIO. labels: if given, every (converted) tag must be in it. A bad line (a column
    count that differs from the file's first token line, a tag not like O / B-X / I-X) is an error naming
    file:line, or with skip_bad_lines drops its whole sentence (counted).
    """
    path = os.fspath(path)
    if scheme not in ("iob1", "bio"):
        raise ValueError(f"read_conll: scheme={scheme!r}; choose 'iob1' or 'bio'")
    if not is_file(path):
        raise FileNotFoundError(f"task data file not found: {path}")
    stats = ReadStats(path)
    errors = _Errors(stats, skip_bad_lines)
    label_set = None if labels is None else set(labels)
    examples: list[TokenExample] = []
    words, tags, start_line, bad = [], [], 0, False
    num_columns = None
    document = 0

    def flush():
        nonlocal words, tags, bad
        if words and not bad:
            out_tags = None
            if labelled:
                out_tags = iob1_to_bio(tags) if scheme == "iob1" and to_bio else list(tags)
                if label_set is not None:
                    unknown = sorted(set(out_tags) - label_set)
                    if unknown:
                        errors.bad("bad_label", f"{path}:{start_line}: tag(s) {unknown} not in the label list "
                                   f"{list(labels)}")
                        words, tags, bad = [], [], False
                        return
            examples.append(TokenExample(f"{path}:{start_line}", tuple(words),
                                         None if out_tags is None else tuple(out_tags), document))
        words, tags, bad = [], [], False

    with open_text(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                flush()
                continue
            if line.startswith(DOCSTART):
                flush()
                stats.documents += 1
                document = stats.documents - 1
                continue
            fields = line.split()
            if num_columns is None:
                num_columns = len(fields)
            if not words:
                start_line = number
            if len(fields) != num_columns:
                errors.bad("malformed_line", f"{path}:{number}: {len(fields)} columns, expected {num_columns} "
                           "(as on the file's first token line)")
                bad = True
                words.append(fields[0] if fields else "")
                continue
            if labelled:
                tag = fields[tag_column]
                if not _TAG.match(tag):
                    errors.bad("bad_label", f"{path}:{number}: tag {tag!r} is not O, B-TYPE or I-TYPE")
                    bad = True
                tags.append(tag)
            words.append(fields[0])
    flush()
    stats.examples = len(examples)
    return examples, stats


# ----------------------------------------------------------------------------------------------------------------
# SQuAD v1.1
# ----------------------------------------------------------------------------------------------------------------

def read_squad(path: str | os.PathLike, *, skip_bad_lines: bool = False) -> tuple[list[QAExample], ReadStats]:
    """SQuAD v1.1 / v2.0 JSON -> one QAExample per question. Each answer must be found at its answer_start in the
    context (checked; the message names data[i].paragraphs[j].qas[k] and the question id). A question without
    answers must say `"is_impossible": true` (v2.0): a missing or empty answer list is otherwise a damaged file,
    not an unanswerable question."""
    path = os.fspath(path)
    if not is_file(path):
        raise FileNotFoundError(f"task data file not found: {path}")
    with open_text(path, encoding="utf-8-sig") as f:
        try:
            dataset = json.load(f)
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise BadInputError(f"{path}: expected a SQuAD file {{'data': [...], 'version': ...}}")
    stats = ReadStats(path)
    errors = _Errors(stats, skip_bad_lines)
    examples = []
    for i, article in enumerate(dataset["data"]):
        title = article.get("title", "")
        for j, paragraph in enumerate(article.get("paragraphs", [])):
            context = paragraph.get("context", "")
            for k, qa in enumerate(paragraph.get("qas", [])):
                where = f"{path}: data[{i}].paragraphs[{j}].qas[{k}] (id {qa.get('id')!r})"
                if not context.strip() or not str(qa.get("question", "")).strip():
                    errors.bad("empty_text", f"{where}: empty {'context' if not context.strip() else 'question'}")
                    continue
                if "answers" not in qa:
                    errors.bad("no_answers", f"{where}: no 'answers' key (SQuAD v2 marks an unanswerable question "
                               "with \"answers\": [] and \"is_impossible\": true)")
                    continue
                if not qa["answers"] and qa.get("is_impossible") is not True:
                    errors.bad("no_answers", f"{where}: 'answers' is empty but 'is_impossible' is not true "
                               "(an unanswerable SQuAD v2 question says so)")
                    continue
                answers, ok = [], True
                for a in qa["answers"]:
                    start, text = a.get("answer_start"), a.get("text", "")
                    if not isinstance(start, int) or context[start:start + len(text)] != text or not text:
                        errors.bad("bad_answer", f"{where}: answer {text!r} is not at answer_start={start} of the "
                                   "context")
                        ok = False
                        break
                    answers.append(Answer(text, start))
                if ok:
                    examples.append(QAExample(str(qa["id"]), qa["question"], context, tuple(answers), title))
    stats.examples = len(examples)
    return examples, stats


# ----------------------------------------------------------------------------------------------------------------
# Retrieval pairs: (query, positive[, negative]) files, and SQuAD as questions over its paragraphs
# ----------------------------------------------------------------------------------------------------------------

def read_retrieval_pairs(path: str | os.PathLike, query_column: str | int, positive_column: str | int,
                         negative_column: str | int | None = None, *, header: bool = True, format: str | None = None,
                         skip_bad_lines: bool = False) -> tuple[list[RetrievalExample], ReadStats]:
    """(query, positive[, hard negative]) rows of a TSV / CSV / JSONL file, as sentence-transformers' pair and
    triplet datasets lay them out. An empty query, positive or negative is a bad line (file:line)."""
    path = os.fspath(path)
    if not is_file(path):
        raise FileNotFoundError(f"task data file not found: {path}")
    fmt = _format_of(path, format)
    stats = ReadStats(path)
    errors = _Errors(stats, skip_bad_lines)
    roles = {"query": query_column, "positive": positive_column}
    if negative_column is not None:
        roles["negative"] = negative_column
    records = _records(path, fmt)
    if fmt == "jsonl":
        index = roles
    else:
        head = None
        if header:
            first = next(records, None)
            if first is None:
                raise BadInputError(f"{path}:1: empty file (expected a header line)")
            head = first[1]
        index = {role: _column_index(path, head, col, role) for role, col in roles.items()}
    examples = []
    for number, fields in records:
        where = f"{path}:{number}"
        if isinstance(fields, Exception):
            errors.bad("malformed_line", f"{where}: not valid JSON ({fields})")
            continue
        if fmt == "jsonl":
            missing = [key for key in index.values() if not isinstance(fields, dict) or key not in fields]
            if missing:
                errors.bad("malformed_line", f"{where}: missing key(s) {missing}")
                continue
            values = {role: fields[key] for role, key in index.items()}
        else:
            if len(fields) <= max(index.values()):
                errors.bad("malformed_line", f"{where}: {len(fields)} columns, expected at least "
                           f"{max(index.values()) + 1} ({roles})")
                continue
            values = {role: fields[i] for role, i in index.items()}
        negatives = (str(values["negative"]).strip(),) if "negative" in values else ()
        query, positive = str(values["query"]).strip(), str(values["positive"]).strip()
        if not query or not positive or not all(negatives):
            empty = "query" if not query else "positive" if not positive else "negative"
            errors.bad("empty_text", f"{where}: empty {empty} (column {roles[empty]!r})")
            continue
        examples.append(RetrievalExample(where, query, positive, negatives))
    stats.examples = len(examples)
    return examples, stats


def squad_retrieval_examples(questions: Sequence[QAExample], split: str, heldout_every: int = 5
                             ) -> list[RetrievalExample]:
    """SQuAD questions as queries over their paragraphs, split by article so that no paragraph is in both:
    every `heldout_every`-th article (in file order, the first included) is dev, the rest train; split '' or
    'all' keeps every article."""
    if split not in ("train", "dev", "validation", "", "all"):
        raise ValueError(f"SQuAD retrieval split {split!r}: train, dev (validation) or all")
    titles = list(dict.fromkeys(q.title for q in questions))
    dev = {t for i, t in enumerate(titles) if i % heldout_every == 0}
    keep = (lambda t: True) if split in ("", "all") else (lambda t: t in dev) if split != "train" else (
        lambda t: t not in dev)
    return [RetrievalExample(q.id, q.question, q.context, (), q.title) for q in questions if keep(q.title)]


# ----------------------------------------------------------------------------------------------------------------
# TFDS catalog datasets (prepared as array_record elsewhere; nothing is downloaded here)
# ----------------------------------------------------------------------------------------------------------------

# glue config -> (text_a key, text_b key); labels come from the dataset's own ClassLabel names.
_TFDS_GLUE_TEXT = {"sst2": ("sentence", None), "cola": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
                   "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
                   "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
                   "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
                   "ax": ("premise", "hypothesis")}
TFDS_TASKS = ("glue/<config>", "squad", "conll2003")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _class_names(source, key: str, nested: bool = False):
    try:
        feature = source.dataset_info.features[key]
        return list((feature.feature if nested else feature).names)
    except (AttributeError, KeyError, TypeError):
        return None


def tfds_examples(name: str, split: str, data_dir: str | os.PathLike | None = None, *,
                  seq2seq_fields: tuple[str, str] | None = None):
    """Examples of a TFDS catalog dataset already prepared as array_record: glue/<task> -> TextExample (label
    indices in GLUE_LAYOUTS' order where the class names match), squad -> QAExample, conll2003 -> TokenExample
    (tags as BIO strings from the dataset's ClassLabel names; TFDS's splits are train / dev / test).
    With seq2seq_fields=(source key, target key), any dataset -> Seq2SeqExample, e.g. ('en', 'de') for
    wmt14_translate/de-en or ('article', 'highlights') for cnn_dailymail.

    Raises jaxlm.data.DataNotPreparedError (with the `tfds build` command to run) when it is not prepared.
    Returns (examples, ReadStats) like the file readers; GLUE test splits (label -1) give label None.
    """
    if seq2seq_fields is not None:
        return _tfds_seq2seq_examples(name, split, data_dir, *seq2seq_fields)
    family = name.split("/")[0].split(":")[0]
    if family not in ("glue", "squad", "conll2003"):
        raise ValueError(f"tfds_examples: {name!r} is not one of the supported TFDS datasets {TFDS_TASKS}")
    if family == "glue":
        config = name.split("/")[1].split(":")[0].split("_")[0] if "/" in name else ""  # mnli_matched -> mnli
        if config not in _TFDS_GLUE_TEXT:
            raise ValueError(f"tfds_examples: {name!r}: GLUE config must be one of {sorted(_TFDS_GLUE_TEXT)}")
    from jaxlm.data.corpus import load_data_source

    source = load_data_source(name, split, data_dir)
    where = f"tfds:{name}[{split}]"
    stats = ReadStats(where)
    examples = []
    if family == "glue":
        key_a, key_b = _TFDS_GLUE_TEXT[config]
        # TFDS's class order can differ from the GLUE files' (mnli: entailment, neutral, contradiction): map
        # labels by name onto GLUE_LAYOUTS' order, so TFDS- and file-trained models agree.
        names = _class_names(source, "label") if config != "stsb" else None
        file_labels = GLUE_LAYOUTS[config].labels if config in GLUE_LAYOUTS else None
        remap = None
        if names and file_labels and set(names) == set(file_labels):
            remap = [file_labels.index(n) for n in names]
        for i in range(len(source)):
            record = source[i]
            label = record.get("label")
            label = None if label is None or (config != "stsb" and int(label) < 0) else (
                float(label) if config == "stsb" else int(label) if remap is None else remap[int(label)])
            examples.append(TextExample(f"{where}:{i}", _text(record[key_a]).strip(),
                                        None if key_b is None else _text(record[key_b]).strip(), label))
    elif family == "squad":
        for i in range(len(source)):
            record = source[i]
            answers = record.get("answers", {})
            texts, starts = list(answers.get("text", [])), list(answers.get("answer_start", []))
            examples.append(QAExample(_text(record["id"]), _text(record["question"]), _text(record["context"]),
                                      tuple(Answer(_text(t), int(s)) for t, s in zip(texts, starts)),
                                      _text(record.get("title", ""))))
    else:
        names = _class_names(source, "ner", nested=True)
        for i in range(len(source)):
            record = source[i]
            tags = record.get("ner")
            if tags is not None:
                tags = tuple(names[int(t)] if names else _text(t) for t in tags)
            examples.append(TokenExample(f"{where}:{i}", tuple(_text(w) for w in record["tokens"]), tags))
    stats.examples = len(examples)
    return examples, stats


def _tfds_seq2seq_examples(name, split, data_dir, source_key: str, target_key: str):
    from jaxlm.data.corpus import load_data_source

    source = load_data_source(name, split, data_dir)
    where = f"tfds:{name}[{split}]"
    if len(source):
        keys = sorted(source[0])
        missing = [k for k in (source_key, target_key) if k not in keys]
        if missing:
            raise ValueError(f"{where} has no feature(s) {missing} (config.data.source_field / target_field); its "
                             f"features are {keys}")
    examples = [Seq2SeqExample(f"{where}:{i}", _text(record[source_key]).strip(), _text(record[target_key]).strip())
                for i, record in ((i, source[i]) for i in range(len(source)))]
    return examples, ReadStats(where, examples=len(examples))


def tfds_label_names(name: str, split: str, data_dir: str | os.PathLike | None = None) -> list[str] | None:
    """The ClassLabel names of a prepared TFDS dataset's labels (glue: 'label', conll2003: 'ner')."""
    from jaxlm.data.corpus import load_data_source

    source = load_data_source(name, split, data_dir)
    return _class_names(source, "ner", nested=True) if name.startswith("conll2003") else _class_names(source,
                                                                                                        "label")
