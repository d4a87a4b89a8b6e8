"""Text corpora as TFDS datasets in array_record format, read by random access without TensorFlow.

Three kinds of corpus, one read path (`load_data_source` -> `tfds.data_source`):

- `jaxlm_pydoc`: the Python reference manual shipped with CPython (`pydoc_data.topics`); it
  exists on every machine, so quickstarts and tests run offline. Prepared on first use.
- `jaxlm_text_files/<config>`: local text files (`prepare_text_files`); one document per file or
  documents separated by blank lines; validation by a hash of the documents, or the last part of the
  characters (`validation_split='tail'`, as nanoGPT's shakespeare_char: the first 90% train).
- any TFDS catalog dataset already prepared as array_record (`c4/en`, `wikipedia/...`, `lm1b`).

TFDS 4.9.10 prepares GeneratorBasedBuilders without TensorFlow when file_format='array_record'
(the generator runs in-process; examples are serialized by TFDS's own proto code), and reads
them back with `tfds.data_source`. A prepared dataset is loaded from its files: the builder code
is not needed to read it.

A few bad documents do not stop preparation: empty documents are skipped, invalid UTF-8 is
replaced (U+FFFD), over-long documents are split at line boundaries; the counts are logged and
kept in a `DataStats` (also saved as jaxlm_stats.json beside the dataset). Local text files are
refused when more than `max_bad_fraction` of their documents hold invalid UTF-8 or NUL bytes (an
executable or a compressed file passed as a corpus), when they hold no text, or when they make a
single document (nothing to validate on); the error names the files, and a failed preparation
leaves no empty dataset folders behind.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import inspect
import json
import os
import re
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from tensorflow_datasets.core import utils as tfds_utils
from tensorflow_datasets.core.utils import tqdm_utils as tfds_tqdm

from jaxlm.paths import is_file, open_text

TEXT_KEY = "text"
STATS_FILE = "jaxlm_stats.json"
PYDOC_NAME = "jaxlm_pydoc"
TEXT_FILES_NAME = "jaxlm_text_files"
MAX_BAD_EXAMPLES = 5
DEFAULT_MAX_BAD_FRACTION = 0.01  # documents with invalid UTF-8 or NUL bytes a text-files corpus may hold


class DataNotPreparedError(RuntimeError):
    """A dataset name/split that has no prepared array_record files in data_dir."""


@dataclasses.dataclass
class DataStats:
    """Counts of what preparation or a pipeline did to imperfect data (thread-safe `add`)."""

    documents: int = 0  # documents kept (pieces of split documents count one each)
    empty_skipped: int = 0  # empty / whitespace-only documents dropped
    invalid_utf8_replaced: int = 0  # documents in which invalid UTF-8 bytes became U+FFFD
    long_split: int = 0  # documents over the length limit, split into several pieces
    nul_bytes: int = 0  # documents holding NUL bytes (binary data: text has none)
    bad_documents: int = 0  # documents with invalid UTF-8 or NUL bytes
    bad_examples: list = dataclasses.field(default_factory=list)  # the first few of those, by key
    split_documents: dict = dataclasses.field(default_factory=dict)  # split name -> documents

    def __post_init__(self):
        self._lock = threading.Lock()

    def add(self, field: str, n: int = 1):
        with self._lock:
            setattr(self, field, getattr(self, field) + n)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __getstate__(self):
        return self.as_dict()

    def __setstate__(self, state):
        self.__init__(**state)

    def add_bad(self, key: str):
        with self._lock:
            self.bad_documents += 1
            if len(self.bad_examples) < MAX_BAD_EXAMPLES:
                self.bad_examples.append(key)

    def log(self, what: str):
        logging.info("%s: %d documents; skipped %d empty; replaced invalid UTF-8 in %d; NUL bytes in %d; "
                     "split %d long", what, self.documents, self.empty_skipped, self.invalid_utf8_replaced,
                     self.nul_bytes, self.long_split)
        if self.bad_documents:
            logging.warning("%s: %d document(s) with invalid UTF-8 or NUL bytes, e.g. %s", what,
                            self.bad_documents, ", ".join(self.bad_examples))


# ----------------------------------------------------------------------------- text cleaning
def decode_text(raw: bytes | str, stats: DataStats | None = None) -> str:
    """bytes -> str; invalid UTF-8 replaced with U+FFFD and counted (never raises)."""
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        if stats is not None:
            stats.add("invalid_utf8_replaced")
        return raw.decode("utf-8", errors="replace")


def record_text(record, text_key: str = TEXT_KEY, stats: DataStats | None = None) -> str:
    """A source record ({'text': bytes}, bytes or str) -> text, invalid UTF-8 replaced."""
    if isinstance(record, dict):
        if text_key not in record:
            raise KeyError(f"pipeline: record has no {text_key!r} field (fields: {sorted(record)}); pass text_key=")
        raw = record[text_key]
    else:
        raw = record
    if isinstance(raw, np.ndarray):  # TFDS gives 0-d arrays
        raw = raw.item()
    return decode_text(raw, stats)


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Splits text into pieces of <= max_chars at line boundaries (hard cuts inside longer lines)."""
    if len(text) <= max_chars:
        return [text]
    pieces, current = [], []
    size = 0
    for line in text.split("\n"):
        while len(line) > max_chars:
            if current:
                pieces.append("\n".join(current))
                current, size = [], 0
            pieces.append(line[:max_chars])
            line = line[max_chars:]
        if size + len(line) + bool(current) > max_chars:
            pieces.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + (len(current) > 1)
    if current:
        pieces.append("\n".join(current))
    return [p for p in (p.strip() for p in pieces) if p]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


def split_sentences(text: str) -> list[str]:
    """Document text -> sentences: lines are paragraphs, split further after . ! ? + capital."""
    sentences = []
    for line in text.split("\n"):
        if line.strip():
            sentences.extend(s for s in _SENTENCE_END.split(line) if s.strip())
    return sentences


def _split_of(key: str, validation_percent: float) -> str:
    """Deterministic hash split: the same document lands in the same split on every machine."""
    bucket = int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "little") % 10000
    return "validation" if bucket < validation_percent * 100 else "train"


def _bucket(key: str) -> int:
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "little") % 10000


# ----------------------------------------------------------------------------- documents
def pydoc_documents() -> Iterator[tuple[str, str]]:
    """(key, text) for each section of the Python reference manual shipped with CPython.

    Hard-wrapped prose paragraphs are joined into one line; indented blocks (code, grammar) keep
    their lines; heading underlines are dropped. Lines of the result are paragraphs.
    """
    from pydoc_data import topics

    heading = re.compile(r"\n(?=[^\n]+\n[=*\-^~]{3,}\n)")
    underline = re.compile(r"^[=*\-^~]{3,}$")
    for topic in sorted(topics.topics):
        for s, section in enumerate(heading.split(topics.topics[topic])):
            paragraphs = []
            for block in re.split(r"\n\s*\n", section):
                lines = [ln.rstrip() for ln in block.split("\n")
                         if ln.strip() and not underline.match(ln.strip())]
                if not lines:
                    continue
                if any(ln.startswith(" ") for ln in lines):
                    paragraphs.extend(lines)
                else:
                    paragraphs.append(" ".join(ln.strip() for ln in lines))
            yield f"{topic}:{s}", "\n".join(paragraphs)


def _text_file_documents(files: Sequence[str], separator: str, stats: DataStats | None
                         ) -> Iterator[tuple[str, str]]:
    """(key, raw text) per document; empty ones counted and skipped, UTF-8 repaired."""
    root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        rel = os.path.relpath(path, root)
        # (blank lines at the start/end of a file separate nothing: no empty documents there)
        chunks = [raw] if separator == "file" else re.split(rb"\r?\n[ \t\r]*\r?\n", raw.strip())
        for i, chunk in enumerate(chunks):
            replaced_before = stats.invalid_utf8_replaced if stats is not None else 0
            text = decode_text(chunk, stats).replace("\r\n", "\n").strip()
            if not text:
                if stats is not None:
                    stats.add("empty_skipped")
                continue
            if stats is not None:
                has_nul = b"\0" in chunk
                if has_nul:
                    stats.add("nul_bytes")
                if has_nul or stats.invalid_utf8_replaced > replaced_before:
                    stats.add_bad(f"{path} (document {i})")
            yield f"{rel}:{i}", text


def tail_split_offset(num_chars: int, validation_percent: float) -> int:
    """The first validation character of a `validation_split='tail'` corpus of num_chars characters: the train
    part is text[:offset], as nanoGPT's `data[:int(n*0.9)]` for 10%."""
    return int(num_chars * (1.0 - validation_percent / 100.0))


def _tail_split_documents(files: Sequence[str], separator: str, validation_percent: float,
                          stats: DataStats | None) -> Iterator[tuple[str, str, str]]:
    """(split, key, text) per document when the last validation_percent% of the characters are the validation
    split: the files' texts (UTF-8 repaired, CRLF as LF) in sorted order are cut at one character, then each
    part of each file is split into documents (file boundaries stay document boundaries)."""
    root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    texts = []
    for path in files:
        with open(path, "rb") as f:
            raw = f.read()
        replaced_before = stats.invalid_utf8_replaced if stats is not None else 0
        texts.append(decode_text(raw, stats).replace("\r\n", "\n"))
        if stats is not None and (b"\0" in raw or stats.invalid_utf8_replaced > replaced_before):
            if b"\0" in raw:
                stats.add("nul_bytes")
            stats.add_bad(f"{path} (the file)")
    cut = tail_split_offset(sum(len(t) for t in texts), validation_percent)
    start = 0
    for path, text in zip(files, texts):
        rel = os.path.relpath(path, root)
        parts = (("train", text[:max(0, cut - start)]), ("validation", text[max(0, cut - start):]))
        start += len(text)
        for split, part in parts:
            chunks = [part] if separator == "file" else re.split(r"\n[ \t\r]*\n", part.strip())
            for i, chunk in enumerate(chunks):
                chunk = chunk.strip()
                if chunk:
                    yield split, f"{rel}:{split}:{i}", chunk
                elif part and stats is not None:
                    stats.add("empty_skipped")


def _pieces(key: str, text: str, max_chars: int, stats: DataStats | None
            ) -> Iterator[tuple[str, dict]]:
    pieces = split_long_text(text, max_chars)
    if len(pieces) > 1 and stats is not None:
        stats.add("long_split")
    for j, piece in enumerate(pieces):
        yield f"{key}:{j}", {TEXT_KEY: piece, "id": f"{key}:{j}"}


# ----------------------------------------------------------------------------- TFDS builders
_FEATURES = lambda: tfds.features.FeaturesDict(  # noqa: E731
    {TEXT_KEY: tfds.features.Text(), "id": tfds.features.Text()})


class _DocumentsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared split logic: a deterministic hash split with at least one validation document."""

    # TFDS 4.9.10's own `code_path` needs the `importlib_resources` backport (not installed,
    # not needed on Python >= 3.9) for builders that live in a package; give the path directly.
    @tfds_utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    def _documents(self, stats: DataStats | None) -> Iterator[tuple[str, str]]:
        raise NotImplementedError

    def _validation_percent(self) -> float:
        raise NotImplementedError

    def _max_document_chars(self) -> int:
        raise NotImplementedError

    def _check_documents(self, num_documents: int, stats: DataStats) -> None:
        """Raises before anything is written when the corpus cannot make a train and a validation split."""
        if not num_documents:
            raise ValueError(f"{self.name}: no non-empty documents to prepare")

    def _split_generators(self, dl_manager):
        # One counting pass: stats of bad data, and the fallback validation document for tiny
        # corpora whose hash split would leave validation empty.
        self.jaxlm_stats = DataStats()
        keys = [key for key, _ in self._documents(self.jaxlm_stats)]
        self._check_documents(len(keys), self.jaxlm_stats)
        pct = self._validation_percent()
        self._forced_validation = None
        if len(keys) > 1 and not any(_split_of(k, pct) == "validation" for k in keys):
            self._forced_validation = min(keys, key=_bucket)
        return {"train": self._generate_examples("train"),
                "validation": self._generate_examples("validation")}

    def _generate_examples(self, split: str):
        pct, count = self._validation_percent(), 0
        for key, text in self._documents(None):
            # (when a document is forced into validation, no other one hashes there)
            doc_split = "validation" if key == self._forced_validation else _split_of(key, pct)
            if doc_split != split:
                continue
            for piece_key, example in _pieces(key, text, self._max_document_chars(), self.jaxlm_stats):
                count += 1
                yield piece_key, example
        self.jaxlm_stats.split_documents[split] = count
        self.jaxlm_stats.add("documents", count)


class JaxlmPydoc(_DocumentsBuilder):
    """The Python reference manual topics (CPython's pydoc_data), one document per section."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Sections of pydoc_data.topics; 5% hash-split validation."}
    VALIDATION_PERCENT = 5.0
    MAX_DOCUMENT_CHARS = 100_000

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=_FEATURES(),
            description="Python reference manual topics shipped with CPython (offline corpus).")

    def _documents(self, stats):
        for key, text in pydoc_documents():
            if text.strip():
                yield key, text
            elif stats is not None:
                stats.add("empty_skipped")

    def _validation_percent(self):
        return self.VALIDATION_PERCENT

    def _max_document_chars(self):
        return self.MAX_DOCUMENT_CHARS


@dataclasses.dataclass
class TextFilesConfig(tfds.core.BuilderConfig):
    """Which files, how they split into documents, and the split / length policy."""

    files: tuple = ()
    document_separator: str = "file"  # 'file': one document per file; 'blank_line'
    validation_percent: float = 2.0
    validation_split: str = "hash"  # 'hash': documents by key hash; 'tail': the last validation_percent% of chars
    max_document_chars: int = 100_000
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION


class JaxlmTextFiles(_DocumentsBuilder):
    """Local text files; the config (built by `prepare_text_files`) names the files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Local text files; hash-split validation."}

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=_FEATURES(),
                                     description=f"Local text files: {len(self.builder_config.files)}")

    def _documents(self, stats):
        cfg = self.builder_config
        if cfg.validation_split == "tail":
            return ((key, text) for _, key, text in
                    _tail_split_documents(list(cfg.files), cfg.document_separator, cfg.validation_percent, stats))
        return _text_file_documents(list(cfg.files), cfg.document_separator, stats)

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        if cfg.validation_split != "tail":
            return super()._split_generators(dl_manager)
        self.jaxlm_stats = DataStats()
        splits = [split for split, _, _ in _tail_split_documents(list(cfg.files), cfg.document_separator,
                                                                  cfg.validation_percent, self.jaxlm_stats)]
        self._check_documents(len(splits), self.jaxlm_stats)
        for split in ("train", "validation"):
            if split not in splits:
                raise ValueError(f"text files: validation_split='tail' with validation_percent="
                                 f"{cfg.validation_percent:g} leaves the {split} split empty")
        return {split: self._generate_tail_examples(split) for split in ("train", "validation")}

    def _generate_tail_examples(self, split: str):
        cfg, count = self.builder_config, 0
        for doc_split, key, text in _tail_split_documents(list(cfg.files), cfg.document_separator,
                                                          cfg.validation_percent, None):
            if doc_split == split:
                for piece_key, example in _pieces(key, text, cfg.max_document_chars, self.jaxlm_stats):
                    count += 1
                    yield piece_key, example
        self.jaxlm_stats.split_documents[split] = count
        self.jaxlm_stats.add("documents", count)

    def _validation_percent(self):
        return self.builder_config.validation_percent

    def _max_document_chars(self):
        return self.builder_config.max_document_chars

    def _check_documents(self, num_documents, stats):
        cfg = self.builder_config
        files = list(cfg.files)
        named = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        if not num_documents:
            raise ValueError(f"text files {named}: no text to prepare (every document is empty or whitespace)")
        fraction = stats.bad_documents / num_documents
        if fraction > cfg.max_bad_fraction:
            raise ValueError(
                f"text files {named}: {stats.bad_documents} of {num_documents} documents ({fraction:.1%}) hold "
                f"invalid UTF-8 or NUL bytes, more than config.data.max_bad_document_fraction="
                f"{cfg.max_bad_fraction:g}: is this text? e.g. {', '.join(stats.bad_examples)}")
        if num_documents == 1 and cfg.validation_split != "tail":  # (a tail split cuts every corpus in two)
            raise ValueError(
                f"text files {named}: one document, so nothing is left for a validation split: give several "
                "files, or separate the documents of one file by blank lines "
                "(config.data.document_separator='blank_line')")


# ----------------------------------------------------------------------------- prepare / load
@dataclasses.dataclass
class PreparedCorpus:
    name: str  # what load_data_source / tfds.data_source take, e.g. 'jaxlm_text_files/abc123'
    data_dir: str | None
    stats: DataStats | None  # None when the stats file is missing (prepared elsewhere)

    def source(self, split: str):
        return load_data_source(self.name, split, self.data_dir)


def _prepare(builder: tfds.core.DatasetBuilder, name: str, data_dir) -> PreparedCorpus:
    stats_path = os.path.join(os.fspath(builder.data_dir), STATS_FILE)
    if not builder.is_prepared():
        new_dirs = [d for d in _dirs_tfds_creates(builder) if not d.exists()]
        # Small corpora: TFDS's tqdm bars only add noise to logs (restored afterwards).
        was_active = getattr(tfds_tqdm, "_active", True)
        tfds.display_progress_bar(False)
        try:
            builder.download_and_prepare(file_format="array_record")
        except BaseException:
            _remove_if_empty(new_dirs)  # a refused corpus leaves no empty dataset folders behind
            raise
        finally:
            tfds.display_progress_bar(was_active)
        stats = builder.jaxlm_stats
        with open_text(os.path.join(os.fspath(builder.data_dir), STATS_FILE), "w") as f:  # gs:// data_dirs too
            json.dump(stats.as_dict(), f, indent=1)
        stats.log(f"prepared {name} in {builder.data_dir}")
    elif is_file(stats_path):
        with open_text(stats_path) as f:
            stats = DataStats(**json.load(f))
    else:
        stats = None
    return PreparedCorpus(name, None if data_dir is None else os.fspath(data_dir), stats)


def _dirs_tfds_creates(builder: tfds.core.DatasetBuilder) -> list[epath.Path]:
    """The folders download_and_prepare makes on its way, deepest first."""
    root, version_dir = epath.Path(builder._data_dir_root), epath.Path(builder.data_dir)
    chain = [version_dir, *[p for p in version_dir.parents if len(p.parts) > len(root.parts)]]
    return chain + [root / "downloads" / "extracted", root / "downloads", root]


def _remove_if_empty(dirs: Sequence[epath.Path]) -> None:
    for d in dirs:  # deepest first, so a parent is empty once its children are gone
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def prepare_pydoc(data_dir: str | os.PathLike | None = None) -> PreparedCorpus:
    """Prepares (once) the embedded Python-manual corpus; works offline."""
    builder = JaxlmPydoc(data_dir=data_dir, file_format="array_record")
    return _prepare(builder, PYDOC_NAME, data_dir)


def _expand(files) -> list[str]:
    if isinstance(files, os.PathLike):
        files = [files]
    patterns = [p for p in files.split(",") if p] if isinstance(files, str) else [os.fspath(p) for p in files]
    out = []
    for pattern in patterns:
        matches = sorted(m for m in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(m))
        if not matches:
            raise FileNotFoundError(f"prepare_text_files: no file matches {pattern!r}")
        out.extend(os.path.abspath(m) for m in matches)
    return sorted(set(out))


def prepare_text_files(
    files: str | Sequence[str | os.PathLike],
    data_dir: str | os.PathLike,
    *,
    name: str | None = None,
    document_separator: str = "file",
    validation_percent: float = 2.0,
    max_document_chars: int = 100_000,
    max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
    validation_split: str = "hash",
) -> PreparedCorpus:
    """Prepares local text files as `jaxlm_text_files/<name>` array_record data in data_dir.

    files: path, glob, comma-separated list, or list of them.
    validation_split: 'hash' (validation_percent% of the documents, by a hash of their key) or 'tail' (the last
      validation_percent% of the characters of the files concatenated in sorted order, cut at one character;
      each part then split into documents; nanoGPT's shakespeare_char split at 10).
    name: the config name; default is a hash of the file list and options (file sizes and
      modification times included), so a changed corpus never reuses stale data.
    max_bad_fraction: the share of documents with invalid UTF-8 or NUL bytes above which preparation stops.
    """
    if document_separator not in ("file", "blank_line"):
        raise ValueError(f"prepare_text_files: document_separator must be 'file' or 'blank_line', "
                         f"got {document_separator!r}")
    if validation_split not in ("hash", "tail"):
        raise ValueError(f"prepare_text_files: validation_split must be 'hash' or 'tail', got {validation_split!r}")
    if not 0 < validation_percent < 100:
        raise ValueError(f"prepare_text_files: validation_percent={validation_percent} must be in (0, 100)")
    paths = _expand(files)
    if name is None:
        h = hashlib.sha1()
        for p in paths:
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        h.update(f"{document_separator}\0{validation_percent}\0{max_document_chars}".encode())
        if validation_split != "hash":  # (so the names of hash-split corpora prepared before stay the same)
            h.update(f"\0{validation_split}".encode())
        name = "h" + h.hexdigest()[:12]
    if not re.fullmatch(r"[A-Za-z0-9_\-.]+", name):
        raise ValueError(f"prepare_text_files: name {name!r} must match [A-Za-z0-9_.-]+")
    config = TextFilesConfig(name=name, version="1.0.0", files=tuple(paths),
                             document_separator=document_separator,
                             validation_percent=validation_percent, validation_split=validation_split,
                             max_document_chars=max_document_chars,
                             max_bad_fraction=max_bad_fraction)
    builder = JaxlmTextFiles(config=config, data_dir=data_dir, file_format="array_record")
    return _prepare(builder, f"{TEXT_FILES_NAME}/{name}", data_dir)


def load_data_source(name: str, split: str, data_dir: str | os.PathLike | None = None):
    """Random-access source of {'text': bytes, ...} records for a prepared TFDS dataset.

    jaxlm_pydoc is prepared on first use; everything else must already be prepared as
    array_record in data_dir (nothing is downloaded here).
    """
    if name.split("/")[0].split(":")[0] == PYDOC_NAME:
        prepare_pydoc(data_dir)
    data_dir = None if data_dir is None else os.fspath(data_dir)
    hint = (f"prepare it first, e.g. `tfds build {name} --file_format=array_record "
            f"--data_dir={data_dir or '~/tensorflow_datasets'}` (may need TensorFlow/Beam for catalog "
            "datasets; can run on another machine), or jaxlm.data.prepare_text_files for local text")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except ValueError as e:  # DatasetNotFoundError, or a jaxlm_text_files config never prepared here
        raise DataNotPreparedError(f"dataset {name!r} is not prepared in data_dir={data_dir!r}: "
                                   f"{hint}") from e
    if not builder.is_prepared():
        raise DataNotPreparedError(f"dataset {name!r} is not prepared in data_dir={data_dir!r}: {hint}")
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except NotImplementedError as e:  # prepared, but as tfrecord
        raise DataNotPreparedError(f"dataset {name!r} in {builder.data_dir} is not in array_record "
                                   f"format (random access needs it): {hint}") from e
    except (ValueError, KeyError) as e:
        raise DataNotPreparedError(f"dataset {name!r} in {builder.data_dir} has no split {split!r}: "
                                   f"{e}") from e
