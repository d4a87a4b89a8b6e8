"""Tokenizers that need no training and lose nothing: UTF-8 bytes (ByT5's ids) and characters (nanoGPT's
shakespeare_char, generalised). Both have jaxlm.data.Tokenizer's interface, so every objective can use them.

    ByteTokenizer(num_sentinels=N): vocab_size = 263 + N
        0 <pad>   1 </s> (eos)   2 <unk>
        3..258    byte b -> id b + 3 (ByT5's ids)
        259 <s> (bos)   260 [CLS]   261 [SEP]   262 [MASK]
        263..     <extra_id_0> .. <extra_id_{N-1}>

    CharTokenizer(chars, num_sentinels=N): vocab_size = 7 + N + len(chars)
        0 <pad>   1 </s> (eos)   2 <unk>   3 <s> (bos)   4 [CLS]   5 [SEP]   6 [MASK]
        7..       <extra_id_0> .. <extra_id_{N-1}>
        7 + N..   the characters, sorted (nanoGPT's order: sorted(set(text)))

Ids 0..258 are ByT5's, so byte-level data and embeddings line up with ByT5's. From 259 on the layout is
jaxlm's: ByT5 (transformers' ByT5Tokenizer) puts its 125 <extra_id_*> there, jaxlm puts bos/cls/sep/mask first.

Choices both make:
- encode adds no specials, and text that spells one ('[MASK]', '<extra_id_0>') is encoded as its bytes or
  characters, never as the special id: encode is total and decode(encode(t)) == t. The objectives insert
  specials by id.
- decode drops pad/eos/bos/cls/sep/mask (structure, not text) but writes a sentinel as its piece
  ('<extra_id_0>'), so a span-corruption target reads as T5's does; skip_special_tokens=True drops the
  sentinels too. <unk> decodes as U+FFFD, as does a partial UTF-8 character (errors="replace").
- word_starts: a word is a run of non-whitespace tokens (what str.split() returns, punctuation included);
  each whitespace token and each special is a unit of its own. So a token starts a word at the start of a
  row, when it is whitespace or special, and when it follows whitespace or a special. Whole-word masking then
  masks whole words (or single whitespace tokens), never part of a word. Whitespace is the ASCII whitespace
  bytes for ByteTokenizer (UTF-8 never uses them inside a character; NBSP, U+3000 count as word bytes) and
  str.isspace() for CharTokenizer. <unk> is no special: it stands for a character inside its word.
- encode_with_offsets: character offsets; all bytes of one character share its (start, start + 1).
"""
from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

from jaxlm.data.tokenizer import sentinel_piece

BYTES_MODEL_FILE = "bytes"  # ByteTokenizer.model_file ("bytes:N" with N sentinels): what a run config records
CHARS_KIND = "chars"  # the "kind" of a CharTokenizer JSON file
SPECIAL_PIECES = {"pad": "<pad>", "eos": "</s>", "unk": "<unk>", "bos": "<s>", "cls": "[CLS]", "sep": "[SEP]",
                  "mask": "[MASK]"}
BYTE_SPECIAL_IDS = {"pad": 0, "eos": 1, "unk": 2, "bos": 259, "cls": 260, "sep": 261, "mask": 262}
CHAR_SPECIAL_IDS = {"pad": 0, "eos": 1, "unk": 2, "bos": 3, "cls": 4, "sep": 5, "mask": 6}
BYTE_OFFSET = 3  # byte b has id b + 3, as in ByT5
ASCII_WHITESPACE = " \t\n\r\v\f"  # bytes.isspace()
REPLACEMENT = "\ufffd"


class _FixedVocabTokenizer:
    """The Tokenizer interface over a fixed id table: specials, sentinels, then one id per unit (a byte or a
    character). Subclasses call _init_tables and provide _encode_array, _units_per_char and _units_text."""

    model_file: str

    def _init_tables(self, special_ids: dict[str, int], sentinel_ids: Sequence[int], unit_start: int,
                     unit_pieces: Sequence[str], unit_is_space: Sequence[bool]):
        self._ids = dict(special_ids)
        self._sentinel_ids = tuple(sentinel_ids)
        vocab_size = len(self._ids) + len(self._sentinel_ids) + len(unit_pieces)
        pieces = [""] * vocab_size
        for name, i in self._ids.items():
            pieces[i] = SPECIAL_PIECES[name]
        for k, i in enumerate(self._sentinel_ids):
            pieces[i] = sentinel_piece(k)
        pieces[unit_start:unit_start + len(unit_pieces)] = unit_pieces
        assert len(pieces) == vocab_size and len(set(pieces)) == vocab_size, "overlapping id layout"
        self._pieces = pieces
        self._piece_ids = {p: i for i, p in enumerate(pieces)}
        self._special_ids = tuple(sorted({i for n, i in self._ids.items() if n != "unk"} | set(self._sentinel_ids)))
        # Per-vocab tables, so that decode and word_starts are vectorised gathers.
        self._special_V = np.zeros(vocab_size, dtype=bool)
        self._special_V[list(self._special_ids)] = True
        self._sentinel_V = np.zeros(vocab_size, dtype=bool)
        self._sentinel_V[list(self._sentinel_ids)] = True
        space_V = np.zeros(vocab_size, dtype=bool)
        space_V[unit_start:unit_start + len(unit_pieces)] = np.asarray(unit_is_space, dtype=bool)
        self._boundary_V = self._special_V | space_V  # tokens that are a word-masking unit of their own

    # ----- ids -----
    vocab_size = property(lambda self: len(self._pieces))
    pad_id = property(lambda self: self._ids["pad"])
    unk_id = property(lambda self: self._ids["unk"])
    bos_id = property(lambda self: self._ids["bos"])
    eos_id = property(lambda self: self._ids["eos"])
    cls_id = property(lambda self: self._ids["cls"])
    sep_id = property(lambda self: self._ids["sep"])
    mask_id = property(lambda self: self._ids["mask"])

    @property
    def sentinel_ids(self) -> tuple[int, ...]:
        """ids of <extra_id_0>, <extra_id_1>, ... (empty when num_sentinels=0)."""
        return self._sentinel_ids

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that are never masked or predicted: pad, bos, eos, cls, sep, mask, sentinels (not unk)."""
        return self._special_ids

    def special_tokens(self) -> dict[str, int | None]:
        return {name: self._ids[name] for name in ("pad", "unk", "bos", "eos", "cls", "sep", "mask")} | {
            "num_sentinels": len(self._sentinel_ids)}

    def id_to_piece(self, i: int) -> str:
        """A special's or sentinel's piece, a character, or (ByteTokenizer, as ByT5) chr(byte)."""
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"{self!r}: id {i} is outside the vocabulary [0, {self.vocab_size})")
        return self._pieces[i]

    def piece_to_id(self, piece: str) -> int:
        """The piece's id; unk_id for a piece not in the vocabulary (as sentencepiece does)."""
        return self._piece_ids.get(piece, self.unk_id)

    # ----- text <-> ids -----
    def encode(self, text: str) -> list[int]:
        return self._encode_array(text).tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in `text`: the character it (partly) encodes."""
        start_N = np.repeat(np.arange(len(text)), self._units_per_char(text))
        return self.encode(text), list(zip(start_N.tolist(), (start_N + 1).tolist()))

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of the ids; specials other than sentinels are dropped, sentinels written as their piece unless
        skip_special_tokens (see the module docstring)."""
        ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids_N.size and not (0 <= ids_N.min() and ids_N.max() < self.vocab_size):
            raise ValueError(f"{self!r}: decode got ids outside [0, {self.vocab_size}): "
                             f"{sorted(set(ids_N[(ids_N < 0) | (ids_N >= self.vocab_size)].tolist()))[:10]}")
        text = lambda seg_N: self._units_text(seg_N[~self._special_V[seg_N]])  # noqa: E731
        cuts = [] if skip_special_tokens else np.flatnonzero(self._sentinel_V[ids_N]).tolist()
        parts, begin = [], 0
        for cut in cuts:  # decode the runs between sentinels separately (a sentinel is no byte of a character)
            parts += [text(ids_N[begin:cut]), self._pieces[ids_N[cut]]]
            begin = cut + 1
        return "".join(parts + [text(ids_N[begin:])])

    def word_starts(self, ids) -> np.ndarray:
        """bool, same shape as ids ([L] or [B, L]): token starts a word (for whole-word masking): the first
        token of a row, a whitespace or special token, and the token after one."""
        ids_xL = np.asarray(ids, dtype=np.int64)
        boundary_xL = self._boundary_V[ids_xL]
        starts_xL = boundary_xL.copy()
        if ids_xL.ndim and ids_xL.shape[-1]:
            starts_xL[..., 1:] |= boundary_xL[..., :-1]
            starts_xL[..., 0] = True
        return starts_xL

    # ----- what the subclasses provide -----
    def _encode_array(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def _units_per_char(self, text: str):
        """How many ids each character of `text` becomes."""
        raise NotImplementedError

    def _units_text(self, ids_N: np.ndarray) -> str:
        """Text of ids that are units or unk (no specials)."""
        raise NotImplementedError


class ByteTokenizer(_FixedVocabTokenizer):
    """UTF-8 bytes with ByT5's ids (0 <pad>, 1 </s>, 2 <unk>, byte b -> b + 3), then <s> [CLS] [SEP] [MASK]
    and the sentinels: vocab_size = 263 + num_sentinels. model_file is "bytes", or "bytes:N" with N sentinels
    (what config.data.tokenizer accepts and a run config records, so a resumed run rebuilds the same table)."""

    def __init__(self, num_sentinels: int = 0):
        if num_sentinels < 0:
            raise ValueError(f"ByteTokenizer: num_sentinels must be >= 0, got {num_sentinels}")
        self.num_sentinels = int(num_sentinels)
        self.model_file = BYTES_MODEL_FILE + (f":{self.num_sentinels}" if self.num_sentinels else "")
        first_sentinel = max(BYTE_SPECIAL_IDS.values()) + 1
        self._init_tables(BYTE_SPECIAL_IDS, range(first_sentinel, first_sentinel + self.num_sentinels),
                          BYTE_OFFSET, [chr(b) for b in range(256)], [chr(b) in ASCII_WHITESPACE for b in range(256)])

    def __getstate__(self):
        return {"num_sentinels": self.num_sentinels}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self):
        return f"ByteTokenizer(num_sentinels={self.num_sentinels}, vocab_size={self.vocab_size})"

    def _encode_array(self, text):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32) + BYTE_OFFSET

    def _units_per_char(self, text):
        cp_N = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return 1 + (cp_N >= 0x80).astype(np.int64) + (cp_N >= 0x800) + (cp_N >= 0x10000)

    def _units_text(self, ids_N):
        # <unk> becomes byte 0xFF, never valid in UTF-8, so the one decode turns it into U+FFFD.
        bytes_N = np.where(ids_N == self.unk_id, 0xFF, ids_N - BYTE_OFFSET).astype(np.uint8)
        return bytes_N.tobytes().decode("utf-8", errors="replace")


class CharTokenizer(_FixedVocabTokenizer):
    """One id per character of a fixed alphabet (nanoGPT's shakespeare_char, with jaxlm's specials first):
    0 <pad> 1 </s> 2 <unk> 3 <s> 4 [CLS] 5 [SEP] 6 [MASK], sentinels 7.., then the characters, sorted.

    A character outside the alphabet encodes to <unk> (decoded as U+FFFD); unknown_chars(text) counts them.
    That count is a pure function, not a counter updated by encode: copies in grain workers would each keep
    their own.
    """

    def __init__(self, chars: Iterable[str], num_sentinels: int = 0, *, model_file: str | os.PathLike | None = None):
        chars = sorted(set(chars))
        if bad := [c for c in chars if not isinstance(c, str) or len(c) != 1]:
            raise ValueError(f"CharTokenizer: chars must be single characters, got {bad[:5]}")
        if num_sentinels < 0:
            raise ValueError(f"CharTokenizer: num_sentinels must be >= 0, got {num_sentinels}")
        self.chars = tuple(chars)
        self.num_sentinels = int(num_sentinels)
        self.model_file = os.fspath(model_file) if model_file is not None else "<in-memory chars>"
        first_sentinel = max(CHAR_SPECIAL_IDS.values()) + 1
        first_char = first_sentinel + self.num_sentinels
        self._init_tables(CHAR_SPECIAL_IDS, range(first_sentinel, first_char), first_char, self.chars,
                          [c.isspace() for c in self.chars])
        self._char_ids = {c: first_char + k for k, c in enumerate(self.chars)}
        self._text_V = np.array(self._pieces, dtype=object)
        self._text_V[self.unk_id] = REPLACEMENT

    @classmethod
    def from_texts(cls, texts: Iterable[str], num_sentinels: int = 0) -> "CharTokenizer":
        """The alphabet of a corpus: its distinct characters."""
        chars = set()
        for text in texts:
            chars.update(text)
        return cls(chars, num_sentinels)

    def save(self, path: str | os.PathLike) -> None:
        """Writes {"kind": "chars", "chars": [...], "num_sentinels": N} (ASCII JSON; local or gs://...). The
        tokenizer's model_file becomes `path`, so a run config that records model_file can reload it."""
        data = {"kind": CHARS_KIND, "chars": list(self.chars), "num_sentinels": self.num_sentinels}
        target = epath.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(json.dumps(data).encode("ascii"))
        self.model_file = os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        data = json.loads(epath.Path(path).read_bytes())
        if not isinstance(data, dict) or data.get("kind") != CHARS_KIND:
            raise ValueError(f"{os.fspath(path)}: not a CharTokenizer file (no \"kind\": \"{CHARS_KIND}\")")
        return cls(data["chars"], data.get("num_sentinels", 0), model_file=path)

    def __getstate__(self):
        return {"chars": self.chars, "num_sentinels": self.num_sentinels, "model_file": self.model_file}

    def __setstate__(self, state):
        self.__init__(state["chars"], state["num_sentinels"], model_file=state["model_file"])

    def __repr__(self):
        return (f"CharTokenizer({self.model_file!r}, chars={len(self.chars)}, num_sentinels={self.num_sentinels}, "
                f"vocab_size={self.vocab_size})")

    def unknown_chars(self, text: str) -> collections.Counter:
        """character -> count for the characters of `text` that encode to <unk>."""
        return collections.Counter(c for c in text if c not in self._char_ids)

    def _encode_array(self, text):
        get, unk = self._char_ids.get, self.unk_id
        return np.fromiter((get(c, unk) for c in text), dtype=np.int32, count=len(text))

    def _units_per_char(self, text):
        return 1

    def _units_text(self, ids_N):
        return "".join(self._text_V[ids_N].tolist())


def parse_bytes_name(name: str) -> int | None:
    """'bytes' -> 0, 'bytes:N' -> N sentinels, anything else -> None (not a ByteTokenizer name)."""
    head, _, count = name.partition(":")
    if head != BYTES_MODEL_FILE:
        return None
    if count and not count.isdigit():
        raise ValueError(f"tokenizer {name!r}: 'bytes' or 'bytes:N' (N sentinel tokens)")
    return int(count or 0)


def is_char_tokenizer_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a file CharTokenizer.save wrote. Reads one byte of anything else (a sentencepiece
    model), so a loader can ask this first."""
    if not os.fspath(path) or not epath.Path(path).is_file():
        return False
    with epath.Path(path).open("rb") as f:
        if f.read(1) != b"{":
            return False
        try:
            data = json.loads(b"{" + f.read())
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            return False
    return isinstance(data, dict) and data.get("kind") == CHARS_KIND
