"""Paths that may be local or remote (gs://, s3://, ...).

Workdirs, checkpoints, tokenizers and data files are reached through etils.epath, as Orbax and TFDS reach
theirs, so that a run can live in a bucket. These helpers cover where epath differs from the builtins.
"""
from __future__ import annotations

import io
import os
from typing import TextIO

from etils import epath


def is_remote(path: str | os.PathLike) -> bool:
    """A path with a scheme (gs://, s3://, ...): an object store, reached through epath's fsspec backend."""
    return "://" in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
    """os.path.abspath for a local path, recorded so the run can be found from another directory; a remote
    address is absolute already (abspath would turn gs://b/x into CWD/gs:/b/x)."""
    return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def resolved(path: str | os.PathLike) -> epath.Path:
    """epath.Path(path), absolute when local: Orbax's tensorstore refuses relative checkpoint paths ('Checkpoint
    path should be absolute'), so `--workdir=runs/x` must become /cwd/runs/x before a checkpoint is touched."""
    return epath.Path(absolute(path))


def open_text(path: str | os.PathLike, mode: str = "r", encoding: str = "utf-8", newline: str | None = None) -> TextIO:
    """open(path, mode, encoding=encoding, newline=newline) for 'r' or 'w', local or remote. epath's own text
    mode ignores `encoding` (the remote backend decodes with the locale's, 'utf-8-sig' would keep a BOM)."""
    if mode not in ("r", "w"):
        raise ValueError(f"open_text: mode {mode!r} is not 'r' or 'w'")
    return io.TextIOWrapper(epath.Path(path).open(mode + "b"), encoding=encoding, newline=newline)


def is_file(path: str | os.PathLike) -> bool:
    """os.path.isfile, local or remote ('' is no file; epath reads it as '.')."""
    return bool(os.fspath(path)) and epath.Path(path).is_file()


def is_nonempty(path: str | os.PathLike) -> bool:
    """A file, or a directory with something in it (a tokenizer that can be loaded from `path`)."""
    if not os.fspath(path):  # epath reads '' as '.'
        return False
    p = epath.Path(path)
    if p.is_dir():
        return any(True for _ in p.iterdir())
    return p.exists()
