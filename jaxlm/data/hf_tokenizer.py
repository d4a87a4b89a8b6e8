"""An imported model's own tokenizer, with the interface of jaxlm.data.Tokenizer (encode/decode, special ids).

Hugging Face directories carry one of: tokenizer.json (the `tokenizers` library's full serialisation, used as
is), vocab.txt (WordPiece: BERT), vocab.json + merges.txt (byte-level BPE: GPT-2, RoBERTa), or spiece.model
(sentencepiece, read by jaxlm.data.Tokenizer). The vocabulary files are rebuilt into a `tokenizers.Tokenizer`
the way transformers' BertTokenizer / GPT2Tokenizer / RobertaTokenizer build theirs, so the ids agree.

`encode` adds no special tokens (jaxlm's objectives insert [CLS]/[SEP] themselves); pass
`add_special_tokens=True` to get what `transformers`' tokenizer(text) returns.

The directory may be local or remote (gs://...): every file is read through etils.epath.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np
from etils import epath

from jaxlm.data.tokenizer import Tokenizer
from jaxlm.paths import open_text

# Files that make up an HF tokenizer; the converter copies those present.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
SPECIAL_NAMES = ("pad", "unk", "bos", "eos", "cls", "sep", "mask")
WORDPIECE_DEFAULTS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
ROBERTA_DEFAULTS = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "cls": "<s>", "sep": "</s>",
                    "mask": "<mask>"}
GPT2_DEFAULTS = {"unk": "<|endoftext|>", "bos": "<|endoftext|>", "eos": "<|endoftext|>"}
BYTE_LEVEL_SPACE = "\u0120"  # 'Ġ': byte-level BPE's "a space preceded this piece"


def _is_file(path: str) -> bool:
    return epath.Path(path).is_file()


def _read_json(path: str) -> dict:
    if not _is_file(path):
        return {}
    with open_text(path) as f:
        return json.load(f)


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # serialised AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A `tokenizers.Tokenizer` plus the special-token ids the objectives use. Picklable (for grain workers)."""

    def __init__(self, backend, special_tokens: dict[str, str | None], *, kind: str, source: str = "<memory>"):
        self._backend = backend
        self.kind = kind  # 'wordpiece' | 'byte_level_bpe' | 'tokenizer_json'
        self.model_file = source
        self._special_tokens = dict(special_tokens)
        self._init_tables()

    def __getstate__(self):
        return {"backend": self._backend.to_str(), "special_tokens": self._special_tokens, "kind": self.kind,
                "source": self.model_file}

    def __setstate__(self, state):
        from tokenizers import Tokenizer

        self.__init__(Tokenizer.from_str(state["backend"]), state["special_tokens"], kind=state["kind"],
                      source=state["source"])

    def __repr__(self):
        return f"HFTokenizer({self.model_file!r}, kind={self.kind}, vocab_size={self.vocab_size})"

    def _init_tables(self):
        self._ids = {}
        for name in SPECIAL_NAMES:
            token = self._special_tokens.get(name)
            self._ids[name] = self._backend.token_to_id(token) if token is not None else None
        sentinels = []  # T5's <extra_id_0>, <extra_id_1>, ... (added tokens in its tokenizer.json)
        while (i := self._backend.token_to_id(f"<extra_id_{len(sentinels)}>")) is not None:
            sentinels.append(i)
        self.sentinel_ids = tuple(sentinels)
        added = [t.content for t in self._backend.get_added_tokens_decoder().values() if t.special]
        specials = {i for i in self._ids.values() if i is not None}
        specials |= {self._backend.token_to_id(t) for t in added}
        self._special_ids = tuple(sorted(i for i in specials if i is not None and i != self._ids["unk"]))
        pieces = [self._backend.id_to_token(i) or "" for i in range(self.vocab_size)]
        prefix = getattr(self._backend.model, "continuing_subword_prefix", None)
        if prefix:  # WordPiece: '##' marks a continuation
            starts = [not p.startswith(prefix) for p in pieces]
        else:  # byte-level BPE ('Ġ') or sentencepiece-style metaspace ('▁') marks a word start
            starts = [p.startswith((BYTE_LEVEL_SPACE, "\u2581")) for p in pieces]
        self._starts_word_V = np.array(starts, dtype=bool)
        if self._special_ids:
            self._starts_word_V[list(self._special_ids)] = True

    def _required(self, name: str) -> int:
        i = self._ids[name]
        if i is None:
            raise ValueError(f"Tokenizer {self.model_file}: has no {name} token "
                             f"(token {self._special_tokens.get(name)!r}); special tokens: {self.special_tokens()}")
        return i

    @property
    def vocab_size(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    pad_id = property(lambda self: self._required("pad"))
    unk_id = property(lambda self: self._required("unk"))
    bos_id = property(lambda self: self._required("bos"))
    eos_id = property(lambda self: self._required("eos"))
    cls_id = property(lambda self: self._required("cls"))
    sep_id = property(lambda self: self._required("sep"))
    mask_id = property(lambda self: self._required("mask"))

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids never masked or predicted: pad, bos, eos, cls, sep, mask and other special added tokens (not unk)."""
        return self._special_ids

    def special_tokens(self) -> dict[str, int | None]:
        return {**self._ids, "num_sentinels": len(self.sentinel_ids)}

    @property
    def backend(self):
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids (no special tokens) and each token's (start, end) character span in `text`."""
        encoding = self._backend.encode(text, add_special_tokens=False)
        return list(encoding.ids), [tuple(o) for o in encoding.offsets]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._backend.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                                    skip_special_tokens=skip_special_tokens)

    def id_to_piece(self, i: int) -> str:
        return self._backend.id_to_token(int(i))

    def piece_to_id(self, piece: str) -> int | None:
        return self._backend.token_to_id(piece)

    def word_starts(self, ids) -> np.ndarray:
        """bool [L]: token i starts a word (for whole-word masking)."""
        ids_L = np.asarray(ids, dtype=np.int64)
        starts_L = self._starts_word_V[ids_L]
        if ids_L.size:
            starts_L[0] = True
        return starts_L


def _special_token_names(model_dir: str, defaults: dict, vocab) -> dict[str, str | None]:
    """tokenizer_config.json / special_tokens_map.json, else the family's defaults that exist in the vocab."""
    names = {k: v for k, v in defaults.items() if v in vocab}
    for filename in ("special_tokens_map.json", "tokenizer_config.json"):
        config = _read_json(os.path.join(model_dir, filename))
        for name in SPECIAL_NAMES:
            if f"{name}_token" in config:
                names[name] = _token_text(config[f"{name}_token"])
    return names


def _added_token_options(model_dir: str) -> dict[str, dict]:
    """token text -> AddedToken options (lstrip, rstrip, ...) as the tokenizer files state them; e.g. the released
    RoBERTa files give '<mask>' lstrip=True. Tokens without stated options get transformers' defaults."""
    options = {}
    for filename in ("special_tokens_map.json", "tokenizer_config.json"):
        config = _read_json(os.path.join(model_dir, filename))
        entries = [v for k, v in config.items() if k.endswith("_token")]
        entries += list((config.get("added_tokens_decoder") or {}).values())
        for entry in entries:
            if isinstance(entry, dict) and "content" in entry:
                options[entry["content"]] = {k: entry[k] for k in ("lstrip", "rstrip", "single_word", "normalized")
                                             if k in entry}
    return options


def _add_special_tokens(backend, names: dict, model_dir: str):
    """Special tokens match as whole strings in the text, before normalisation (as transformers adds them)."""
    from tokenizers import AddedToken

    options = _added_token_options(model_dir)
    extra = _read_json(os.path.join(model_dir, "added_tokens.json"))  # old format: token -> id
    tokens = []
    for text in dict.fromkeys(t for t in names.values() if t is not None):
        if backend.token_to_id(text) is not None:
            tokens.append(AddedToken(text, special=True, **{"normalized": False, **options.get(text, {})}))
    for text, index in sorted(extra.items(), key=lambda kv: kv[1]):
        if backend.token_to_id(text) is None and index != backend.get_vocab_size(with_added_tokens=True):
            raise ValueError(f"{model_dir}/added_tokens.json: token {text!r} has id {index}, expected "
                             f"{backend.get_vocab_size(with_added_tokens=True)} (the next free id)")
        tokens.append(AddedToken(text, special=True, **{"normalized": False, **options.get(text, {})}))
    backend.add_special_tokens(tokens)


def _wordpiece(model_dir: str, config: dict):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordPiece

    vocab = {}
    with open_text(os.path.join(model_dir, "vocab.txt")) as f:
        for index, line in enumerate(f):
            vocab[line.rstrip("\n")] = index
    names = _special_token_names(model_dir, WORDPIECE_DEFAULTS, vocab)
    backend = Tokenizer(WordPiece(vocab, unk_token=names.get("unk") or "[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"), lowercase=config.get("do_lower_case", True))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    _add_special_tokens(backend, names, model_dir)
    if names.get("cls") and names.get("sep"):
        from tokenizers import processors

        cls, sep = names["cls"], names["sep"]
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])])
    return backend, names


def _byte_level_bpe(model_dir: str, config: dict, family: str | None):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    with open_text(os.path.join(model_dir, "vocab.json")) as f:
        vocab = json.load(f)
    with open_text(os.path.join(model_dir, "merges.txt")) as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")
                  if line and not line.startswith("#version") and len(line.split()) == 2]
    roberta = family == "roberta" or (family is None and "<s>" in vocab and "<mask>" in vocab)
    names = _special_token_names(model_dir, ROBERTA_DEFAULTS if roberta else GPT2_DEFAULTS, vocab)
    add_prefix_space = config.get("add_prefix_space", False)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="", fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    _add_special_tokens(backend, names, model_dir)
    if roberta and names.get("cls") and names.get("sep"):
        backend.post_processor = processors.RobertaProcessing(
            (names["sep"], vocab[names["sep"]]), (names["cls"], vocab[names["cls"]]),
            trim_offsets=config.get("trim_offsets", True), add_prefix_space=add_prefix_space)
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend, names


def find_tokenizer_files(model_dir: str) -> list[str]:
    return [name for name in TOKENIZER_FILES if _is_file(os.path.join(model_dir, name))]


def load_hf_tokenizer(model_dir: str, family: str | None = None):
    """The tokenizer in an HF model directory: HFTokenizer, or jaxlm.data.Tokenizer for spiece.model.

    Returns None when the directory holds no tokenizer files. `family` ('bert', 'roberta', 'gpt2') picks the
    defaults for special tokens that tokenizer_config.json does not name.
    """
    config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    path = lambda name: os.path.join(model_dir, name)  # noqa: E731
    if _is_file(path("tokenizer.json")):
        import tokenizers

        # from_file opens local files only
        backend = tokenizers.Tokenizer.from_str(epath.Path(path("tokenizer.json")).read_bytes().decode("utf-8"))
        # Released tokenizer.json files often carry fixed padding and truncation (e.g. sentence-transformers'
        # "padding": {"strategy": {"Fixed": 128}}): with them on, encode() would return 128 ids ending in pad
        # ids and cut long texts. jaxlm's features pad, truncate and stride themselves, from its own config.
        backend.no_padding()
        backend.no_truncation()
        vocab = backend.get_vocab(with_added_tokens=True)
        defaults = WORDPIECE_DEFAULTS if "[CLS]" in vocab else ROBERTA_DEFAULTS if "<s>" in vocab else GPT2_DEFAULTS
        names = _special_token_names(model_dir, defaults, vocab)
        return HFTokenizer(backend, names, kind="tokenizer_json", source=path("tokenizer.json"))
    if _is_file(path("vocab.txt")):
        backend, names = _wordpiece(model_dir, config)
        return HFTokenizer(backend, names, kind="wordpiece", source=path("vocab.txt"))
    if _is_file(path("vocab.json")) and _is_file(path("merges.txt")):
        backend, names = _byte_level_bpe(model_dir, config, family)
        return HFTokenizer(backend, names, kind="byte_level_bpe", source=path("vocab.json"))
    for name in ("spiece.model", "sentencepiece.bpe.model"):
        if _is_file(path(name)):
            # T5Tokenizer appends `extra_ids` sentinels (100) after the sentencepiece pieces. Tokenizer reads
            # the model through epath itself.
            return Tokenizer(path(name), extra_ids=int(config.get("extra_ids", 0) or 0))
    return None


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
    """Copies the HF tokenizer files present in src_dir; returns their names. Either side may be remote: the
    bytes go through this process (epath's copy() works within one file system only), and the files are small."""
    names = find_tokenizer_files(src_dir)
    src, dst = epath.Path(src_dir), epath.Path(dst_dir)
    if names:
        dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        (dst / name).write_bytes((src / name).read_bytes())
    return names
