"""Which tokenizer a path names, and the copy of it a run directory keeps (so a resumed or fine-tuned run
tokenizes exactly as before). Every command and run directory finds its tokenizer through here.

    FILE.model   a sentencepiece model (trained by jaxlm, or T5's spiece.model)
    DIR          a Hugging Face tokenizer directory (tokenizer.json, vocab.txt, vocab.json + merges.txt, spiece.model)
    bytes[:N]    UTF-8 bytes with ByT5's ids (N sentinels), nothing to read
    FILE.json    a character tokenizer (CharTokenizer.save: {"kind": "chars", ...})

Paths may be local or remote (gs://...).
"""
from __future__ import annotations

import os

from etils import epath

from jaxlm.data.byte_tokenizer import ByteTokenizer, CharTokenizer, is_char_tokenizer_file, parse_bytes_name
from jaxlm.data.hf_tokenizer import copy_tokenizer_files, load_hf_tokenizer
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.paths import absolute, is_nonempty

SENTENCEPIECE_FILE = "tokenizer.model"  # what a run directory holds: one of these
HF_TOKENIZER_DIR = "tokenizer"
CHARS_FILE = "tokenizer.chars.json"


def load_tokenizer(path: str, family: str | None = None, *, extra_ids: int = 0):
    """The tokenizer `path` names. `family` picks the special-token defaults of an HF directory whose config
    does not name them; `extra_ids` appends T5's sentinels to a sentencepiece model that has none."""
    path = os.fspath(path)
    sentinels = parse_bytes_name(path)
    if sentinels is not None:
        return ByteTokenizer(sentinels)
    if epath.Path(path).is_dir():
        tokenizer = load_hf_tokenizer(path, family)
        if tokenizer is None:
            raise FileNotFoundError(f"{path}: no tokenizer files (tokenizer.json, vocab.txt, vocab.json + "
                                    "merges.txt, spiece.model)")
        return tokenizer
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"tokenizer {path} not found (a sentencepiece .model file or an HF tokenizer "
                                "directory)")
    if is_char_tokenizer_file(path):
        return CharTokenizer.load(path)
    return Tokenizer(path, extra_ids=extra_ids)


def find_run_tokenizer(workdir: str, saved: dict | None = None) -> str:
    """The tokenizer that came with a run directory: WORKDIR/tokenizer.model (pretraining and fine-tuning runs),
    WORKDIR/tokenizer/ (imports), else the file the run's saved config names."""
    saved = saved or {}
    if parse_bytes_name(str(saved.get("tokenizer_file") or "")) is not None:
        return saved["tokenizer_file"]  # bytes: nothing on disk
    candidates = [os.path.join(workdir, SENTENCEPIECE_FILE), os.path.join(workdir, CHARS_FILE),
                  os.path.join(workdir, saved.get("tokenizer_dir") or HF_TOKENIZER_DIR)]
    candidates += [p for p in (saved.get("tokenizer_file"), (saved.get("data") or {}).get("tokenizer"),
                               saved.get("tokenizer")) if isinstance(p, str) and p]
    for path in candidates:
        if is_nonempty(path):
            return path
    raise FileNotFoundError(f"no tokenizer found with checkpoint {workdir} (tried {candidates}); pass one "
                            "(--config.tokenizer / --tokenizer: a .model file or an HF tokenizer directory)")


def keep_tokenizer(tokenizer_path: str, workdir: str) -> str:
    """Copies the tokenizer into `workdir` so the run is self-contained; returns its path there."""
    if parse_bytes_name(tokenizer_path) is not None:
        return tokenizer_path  # nothing to copy
    if epath.Path(tokenizer_path).is_dir():
        target = os.path.join(workdir, HF_TOKENIZER_DIR)
        if absolute(tokenizer_path) != absolute(target):
            copy_tokenizer_files(tokenizer_path, target)
        return target
    target = os.path.join(workdir, CHARS_FILE if is_char_tokenizer_file(tokenizer_path) else SENTENCEPIECE_FILE)
    if absolute(tokenizer_path) != absolute(target):
        epath.Path(target).write_bytes(epath.Path(tokenizer_path).read_bytes())
    return target
