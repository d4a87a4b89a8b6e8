"""A pretraining config's data section -> the prepared dataset it names and the tokenizer it reads it with.

    dataset='jaxlm_pydoc'   the Python reference manual (embedded, offline), prepared on first use
    dataset='text_files'    local text files (text_files: a path, glob or comma-separated list)
    anything else           a TFDS dataset already prepared as array_record in data_dir (c4/en, ...)
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping

from absl import logging
from etils import epath

from jaxlm.data import corpus
from jaxlm.data.byte_tokenizer import ByteTokenizer, CharTokenizer
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.data.tokenizer_io import CHARS_FILE, SENTENCEPIECE_FILE, load_tokenizer
from jaxlm.paths import is_remote


def data_dir(data: Mapping[str, Any]) -> str:
    return data["data_dir"] or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepare_dataset(data: Mapping[str, Any]) -> str:
    """The dataset name the pipeline reads, preparing jaxlm's own builders first (offline)."""
    if data["dataset"] == corpus.PYDOC_NAME:
        return corpus.prepare_pydoc(data_dir(data)).name
    if data["dataset"] == "text_files":
        if not data["text_files"]:
            raise ValueError("config.data.dataset='text_files' needs config.data.text_files (a path or glob)")
        return corpus.prepare_text_files(data["text_files"], data_dir(data),
                                         document_separator=data["document_separator"],
                                         validation_split=data.get("validation_split", "hash"),
                                         validation_percent=data.get("validation_percent", 2.0),
                                         max_bad_fraction=data.get("max_bad_document_fraction",
                                                                   corpus.DEFAULT_MAX_BAD_FRACTION)).name
    return data["dataset"]


def texts_of(dataset_name: str, split: str, directory: str):
    """Every document of a prepared split, as text (to train a tokenizer on)."""
    source = corpus.load_data_source(dataset_name, split, directory)
    return (corpus.record_text(source[i]) for i in range(len(source)))


def _char_tokenizer(data: Mapping[str, Any], workdir: str, dataset_name: str, process_count: int) -> CharTokenizer:
    path = epath.Path(workdir) / CHARS_FILE
    if path.exists():
        return CharTokenizer.load(path)
    if process_count > 1:
        raise ValueError("multi-process runs need a character tokenizer file every host can read: build one "
                         "(jaxlm.data.byte_tokenizer.CharTokenizer.from_texts(...).save(PATH)) and pass "
                         "config.data.tokenizer=PATH")
    tokenizer = CharTokenizer.from_texts(texts_of(dataset_name, data["train_split"], data_dir(data)),
                                         data["tokenizer_num_sentinels"])
    tokenizer.save(path)
    logging.info("character tokenizer of %s: %d characters -> %s", dataset_name, len(tokenizer.chars), path)
    return tokenizer


def load_or_train_tokenizer(data: Mapping[str, Any], workdir: str, dataset_name: str, *, process_count: int = 1):
    """config.data.tokenizer if given; else the one in the workdir (a resumed run); else one trained on the
    training split and kept in the workdir, so that a resumed run tokenizes exactly as before.

    'bytes' (ByT5's byte ids, config.data.tokenizer_num_sentinels sentinels) and 'chars' (the training split's
    characters, as nanoGPT's shakespeare_char, kept in the workdir) need no training run."""
    if data["tokenizer"] == "bytes":
        return ByteTokenizer(data["tokenizer_num_sentinels"])
    if data["tokenizer"] == "chars":
        return _char_tokenizer(data, workdir, dataset_name, process_count)
    if data["tokenizer"]:
        return load_tokenizer(data["tokenizer"], extra_ids=data["tokenizer_extra_ids"])
    model_file = epath.Path(workdir) / SENTENCEPIECE_FILE
    if model_file.exists():
        return load_tokenizer(os.fspath(model_file))
    if process_count > 1:
        raise ValueError("multi-process runs need config.data.tokenizer (a .model file every host can read); "
                         "train one first with `python -m jaxlm.tokenizer train ...`")
    logging.info("training a %d-piece %s tokenizer on %s", data["tokenizer_vocab_size"],
                 data["tokenizer_model_type"], dataset_name)
    texts = texts_of(dataset_name, data["train_split"], data_dir(data))
    with tempfile.TemporaryDirectory() as tmp:  # sentencepiece writes local files: a remote workdir gets copies
        prefix = os.path.join(tmp if is_remote(workdir) else workdir, "tokenizer")
        train_tokenizer(texts, prefix, data["tokenizer_vocab_size"], data["tokenizer_model_type"],
                        num_sentinels=data["tokenizer_num_sentinels"])
        if is_remote(workdir):
            for suffix in (".model", ".vocab"):
                (epath.Path(workdir) / f"tokenizer{suffix}").write_bytes(epath.Path(prefix + suffix).read_bytes())
    return load_tokenizer(os.fspath(model_file))
