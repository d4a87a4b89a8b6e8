"""SentencePiece tokenizer with the special tokens jaxlm's objectives need.

Models trained here have a fixed layout, so that data code and models can rely on it:

    0 <pad>   1 <unk>   2 <s> (bos)   3 </s> (eos)   4 [CLS]   5 [SEP]   6 [MASK]
    7.. <extra_id_0> .. <extra_id_{N-1}>   (T5 sentinels, only when num_sentinels=N > 0)

[CLS]/[SEP]/[MASK] are user-defined symbols (always one piece, also when the literal text
appears in the input). Existing models (ALBERT, XLNet, T5, ...) load as they are: the ids are
looked up by piece ('[CLS]' or '<cls>', ...), and a token the model lacks raises an error that
names the model file when it is asked for.

T5's released spiece.model has no sentinel pieces: Hugging Face's T5Tokenizer appends 100 ids after
the 32,000 pieces, <extra_id_0> = 32099 down to <extra_id_99> = 32000. `Tokenizer(file, extra_ids=100)`
does the same (only for a model without <extra_id_*> pieces of its own), so span corruption can
continue pretraining an imported T5 with its own vocabulary.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm
from absl import logging
from etils import epath

WORD_START_MARK = "\u2581"  # '▁': sentencepiece's "a space preceded this piece"
CLS_PIECES = ("[CLS]", "<cls>")
SEP_PIECES = ("[SEP]", "<sep>")
MASK_PIECES = ("[MASK]", "<mask>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def sentinel_piece(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer:
    """A sentencepiece model plus the special-token ids the objectives use.

    Picklable (the serialized model travels, not the path), so it can be used inside grain
    worker processes.
    """

    def __init__(self, model_file: str | os.PathLike | None = None, *,
                 model_proto: bytes | None = None, extra_ids: int = 0):
        if (model_file is None) == (model_proto is None):
            raise ValueError("Tokenizer: pass exactly one of model_file or model_proto")
        self.model_file = os.fspath(model_file) if model_file is not None else "<in-memory model>"
        if model_proto is None:  # through epath: a model in a bucket (gs://...) loads as a local one does
            if not (self.model_file and epath.Path(self.model_file).exists()):
                raise FileNotFoundError(f"Tokenizer: sentencepiece model file not found: {self.model_file}")
            model_proto = epath.Path(self.model_file).read_bytes()
        self._model_proto = model_proto
        self._requested_extra_ids = extra_ids
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self._init_tables()

    @classmethod
    def load(cls, model_file: str | os.PathLike) -> "Tokenizer":
        return cls(model_file)

    def __getstate__(self):
        return {"model_file": self.model_file, "model_proto": self._model_proto,
                "extra_ids": self._requested_extra_ids}

    def __setstate__(self, state):
        self.model_file = state["model_file"]
        self._model_proto = state["model_proto"]
        self._requested_extra_ids = state.get("extra_ids", 0)
        self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
        self._init_tables()

    def __repr__(self):
        extra = f", extra_ids={self._extra_ids}" if self._extra_ids else ""
        return f"Tokenizer({self.model_file!r}, vocab_size={self.vocab_size}{extra})"

    def _init_tables(self):
        sp = self._sp
        self._ids = {}
        for name, pieces in (("cls", CLS_PIECES), ("sep", SEP_PIECES), ("mask", MASK_PIECES)):
            self._ids[name] = next((self._find(p) for p in pieces if self._find(p) is not None), None)
        sentinels = []
        while (i := self._find(sentinel_piece(len(sentinels)))) is not None:
            sentinels.append(i)
        # Appended sentinels (HF's T5 layout), only when the model has none of its own.
        self._num_pieces = sp.get_piece_size()
        self._extra_ids = 0 if sentinels else self._requested_extra_ids
        sentinels = sentinels or [self._num_pieces + self._extra_ids - 1 - i for i in range(self._extra_ids)]
        self._sentinel_ids = tuple(sentinels)
        specials = {self._ids["cls"], self._ids["sep"], self._ids["mask"], *sentinels}
        specials |= {i for i in (sp.pad_id(), sp.bos_id(), sp.eos_id()) if i >= 0}
        self._special_ids = tuple(sorted(i for i in specials if i is not None))
        # Per-vocab lookup tables so that word_starts is a vectorised gather.
        pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())] + [""] * self._extra_ids
        self._starts_word_V = np.array([p.startswith(WORD_START_MARK) for p in pieces], dtype=bool)
        self._starts_word_V[list(self._special_ids)] = True
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                self._starts_word_V[i] = True
        self._space_only_V = np.array(
            [len(p) > 0 and set(p) == {WORD_START_MARK} for p in pieces], dtype=bool)

    def _find(self, piece: str) -> int | None:
        i = self._sp.piece_to_id(piece)
        return i if self._sp.id_to_piece(i) == piece else None

    def _required(self, name: str, pieces: Sequence[str]) -> int:
        i = self._ids[name]
        if i is None:
            raise ValueError(
                f"Tokenizer {self.model_file}: has no {name} token (looked for pieces {list(pieces)}); "
                "train one with `python -m jaxlm.tokenizer train` or use an objective that does not need it")
        return i

    # ----- ids -----
    @property
    def vocab_size(self) -> int:
        return self._num_pieces + self._extra_ids

    @property
    def pad_id(self) -> int:
        if self._sp.pad_id() < 0:
            raise ValueError(f"Tokenizer {self.model_file}: the model has no pad token")
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        if self._sp.bos_id() < 0:
            raise ValueError(f"Tokenizer {self.model_file}: the model has no bos token")
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        if self._sp.eos_id() < 0:
            raise ValueError(f"Tokenizer {self.model_file}: the model has no eos token")
        return self._sp.eos_id()

    @property
    def cls_id(self) -> int:
        return self._required("cls", CLS_PIECES)

    @property
    def sep_id(self) -> int:
        return self._required("sep", SEP_PIECES)

    @property
    def mask_id(self) -> int:
        return self._required("mask", MASK_PIECES)

    @property
    def sentinel_ids(self) -> tuple[int, ...]:
        """ids of <extra_id_0>, <extra_id_1>, ... (empty when the model has none)."""
        return self._sentinel_ids

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids that are never masked or predicted: pad, bos, eos, cls, sep, mask, sentinels (not unk)."""
        return self._special_ids

    def special_tokens(self) -> dict[str, int | None]:
        """name -> id (None where the model lacks the token); what the CLI prints."""
        sp = self._sp
        neg = lambda i: i if i >= 0 else None  # noqa: E731
        return {"pad": neg(sp.pad_id()), "unk": neg(sp.unk_id()), "bos": neg(sp.bos_id()),
                "eos": neg(sp.eos_id()), "cls": self._ids["cls"], "sep": self._ids["sep"],
                "mask": self._ids["mask"], "num_sentinels": len(self._sentinel_ids)}

    # ----- text <-> ids -----
    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts))

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and each token's (start, end) character span in `text` (QA maps answers back with these).

        sentencepiece reports UTF-8 byte offsets; they are converted to character offsets. Pieces that
        normalisation invents (NFKC 'ﬁ' -> 'f' 'i') may have empty spans.
        """
        proto = self._sp.encode_as_proto(text) if hasattr(self._sp, "encode_as_proto") else \
            self._sp.encode_as_immutable_proto(text)
        ids = [p.id for p in proto.pieces]
        if len(text.encode("utf-8")) == len(text):  # ASCII: bytes are characters
            return ids, [(p.begin, p.end) for p in proto.pieces]
        lengths = np.fromiter((len(ch.encode("utf-8")) for ch in text), dtype=np.int64, count=len(text))
        to_char = np.append(np.repeat(np.arange(len(text), dtype=np.int64), lengths), len(text))
        return ids, [(int(to_char[p.begin]), int(to_char[p.end])) for p in proto.pieces]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if not self._extra_ids or all(i < self._num_pieces for i in ids):
            return self._sp.decode(ids)
        # Appended sentinels are no sentencepiece ids: decode the runs between them, as T5Tokenizer does (a
        # run after a sentinel keeps its word-start space, which sentencepiece drops at the start of a text).
        text, run = [], []
        for i in ids + [None]:
            if i is None or i >= self._num_pieces:
                space = bool(text and run and self._sp.id_to_piece(run[0]).startswith(WORD_START_MARK))
                text.append((" " if space else "") + self._sp.decode(run) if run else "")
                run = []
                if i is not None:
                    text.append(self.id_to_piece(i))
            else:
                run.append(i)
        return "".join(text)

    def id_to_piece(self, i: int) -> str:
        i = int(i)
        if self._num_pieces <= i < self.vocab_size:
            return sentinel_piece(self._num_pieces + self._extra_ids - 1 - i)
        return self._sp.id_to_piece(i)

    def piece_to_id(self, piece: str) -> int:
        if self._extra_ids and piece.startswith("<extra_id_") and piece.endswith(">"):
            k = piece[len("<extra_id_"):-1]
            if k.isdigit() and int(k) < self._extra_ids:
                return self._sentinel_ids[int(k)]
        return self._sp.piece_to_id(piece)

    def word_starts(self, ids) -> np.ndarray:
        """bool, same shape as ids ([L] or [B, L]): token starts a word (for whole-word masking).

        A piece starts a word when it carries the '▁' prefix, is a special/control token, or
        follows a whitespace-only piece (BPE with whitespace pieces: '▁▁▁', 'if'). The first
        token of a row always starts a word.
        """
        ids_xL = np.asarray(ids, dtype=np.int64)
        starts_xL = self._starts_word_V[ids_xL]
        if ids_xL.shape and ids_xL.shape[-1]:
            starts_xL[..., 1:] |= self._space_only_V[ids_xL[..., :-1]]
            starts_xL[..., 0] = True
        return starts_xL


def _expand_input_files(inputs) -> list[str]:
    """'a.txt,dir/*.txt' or a list of paths/globs -> sorted existing file names."""
    if isinstance(inputs, (str, os.PathLike)):
        patterns = [p for p in os.fspath(inputs).split(",") if p]
    else:
        patterns = [os.fspath(p) for p in inputs]
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.expanduser(pattern)))
        if not matches:
            raise FileNotFoundError(
                f"train_tokenizer: no file matches {pattern!r} (to train on in-memory text, pass an "
                "iterator of strings, e.g. iter(texts))")
        files.extend(m for m in matches if os.path.isfile(m))
    if not files:
        raise FileNotFoundError(f"train_tokenizer: {inputs!r} names no regular files")
    return files


def _text_lines(texts: Iterator[str]) -> Iterator[str]:
    """Texts may hold several lines; sentencepiece trains on non-empty lines."""
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                yield line


def train_tokenizer(
    inputs: str | os.PathLike | Sequence[str | os.PathLike] | Iterator[str],
    output_prefix: str | os.PathLike,
    vocab_size: int,
    model_type: str = "unigram",
    *,
    num_sentinels: int = 0,
    byte_fallback: bool = False,
    character_coverage: float = 0.9995,
    input_sentence_size: int = 2_000_000,
    max_sentence_length: int = 16384,
    num_threads: int | None = None,
    extra_options: dict | None = None,
) -> Tokenizer:
    """Trains a sentencepiece model with jaxlm's special-token layout; writes PREFIX.model/.vocab.

    inputs: a file name, glob, comma-separated list of them, or a list of them (sentencepiece reads
      files natively, one sentence per line); or an *iterator* of texts (e.g. iter(list_of_docs)).
    byte_fallback: unknown characters become <0xNN> byte pieces instead of <unk> (costs 256 ids,
      so it needs vocab_size comfortably above 256 + the alphabet).
    Whitespace is kept as is (remove_extra_whitespaces=False), so code indentation round-trips;
    normalization is NFKC (newlines and tabs become spaces).
    """
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"train_tokenizer: model_type must be 'unigram' or 'bpe', got {model_type!r}")
    user_symbols = ["[CLS]", "[SEP]", "[MASK]"] + [sentinel_piece(i) for i in range(num_sentinels)]
    min_vocab = 4 + len(user_symbols) + (256 if byte_fallback else 0) + 1
    if vocab_size <= min_vocab:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size} leaves no room for pieces: the "
                         f"special tokens{' and 256 byte pieces' if byte_fallback else ''} take {min_vocab - 1}")
    output_prefix = os.fspath(output_prefix)
    os.makedirs(os.path.dirname(os.path.abspath(output_prefix)), exist_ok=True)
    options = dict(
        model_prefix=output_prefix, vocab_size=vocab_size, model_type=model_type,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        user_defined_symbols=user_symbols, byte_fallback=byte_fallback,
        character_coverage=character_coverage, input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True, max_sentence_length=max_sentence_length,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        normalization_rule_name="nmt_nfkc", hard_vocab_limit=True,
        num_threads=num_threads or min(os.cpu_count() or 1, 16), minloglevel=2,
    )
    options.update(extra_options or {})
    if isinstance(inputs, Iterator):
        options["sentence_iterator"] = _text_lines(inputs)
        source = "<iterator>"
    else:
        files = _expand_input_files(inputs)
        options["input"] = ",".join(files)
        source = f"{len(files)} file(s)"
    try:
        spm.SentencePieceTrainer.train(**options)
    except RuntimeError as e:
        raise RuntimeError(f"train_tokenizer: sentencepiece failed on {source} with "
                           f"vocab_size={vocab_size}, model_type={model_type}: {e}") from e
    tokenizer = Tokenizer(output_prefix + ".model")
    logging.info("Trained %s tokenizer on %s: %s.model, vocab %d, specials %s", model_type, source,
                 output_prefix, tokenizer.vocab_size, tokenizer.special_tokens())
    return tokenizer
