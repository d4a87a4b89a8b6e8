"""ByteTokenizer and CharTokenizer: lossless round trips, ByT5's byte ids, nanoGPT's character order, offsets,
specials and sentinels, word starts, pickling, save/load."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from jaxlm.data import load_tokenizer
from jaxlm.data.byte_tokenizer import (
    ByteTokenizer,
    CharTokenizer,
    is_char_tokenizer_file,
)

TINYSHAKESPEARE = Path(__file__).resolve().parents[1].parent / "shared/data/tinyshakespeare/input.txt"
TEXTS = [
    "",
    "Hello, world!",
    "line one\nline two\r\n\tindented\t\ttabs",
    "runs   of    spaces  ",
    "  leading and trailing \n\n",
    "café naïve Ångström façade",
    "日本語のテキストと中文",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷",
    "specials spelled out: [MASK] <extra_id_0> </s> <pad>",
]
REPLACEMENT = "\ufffd"


def _tokenizers(num_sentinels=0):
    return [ByteTokenizer(num_sentinels), CharTokenizer.from_texts(TEXTS, num_sentinels)]


def _shakespeare() -> str:
    if not TINYSHAKESPEARE.is_file():
        pytest.skip(f"tinyshakespeare not found at {TINYSHAKESPEARE} (the shared data folder is absent)")
    return TINYSHAKESPEARE.read_text(encoding="utf-8")


@pytest.mark.parametrize("tok", _tokenizers(num_sentinels=3), ids=["bytes", "chars"])
@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_is_exact(tok, text):
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode(np.asarray(ids, dtype=np.int32)) == text  # arrays, as the pipelines hand them over
    assert not set(ids) & set(tok.special_ids)  # spelled-out specials stay text


def test_round_trip_tinyshakespeare():
    text = _shakespeare()
    byte_tok, char_tok = ByteTokenizer(), CharTokenizer.from_texts([text])
    byte_ids = byte_tok.encode(text)
    assert byte_ids == [b + 3 for b in text.encode("utf-8")]
    assert byte_tok.decode(byte_ids) == text
    char_ids = char_tok.encode(text)
    assert len(char_ids) == len(text)
    assert char_tok.decode(char_ids) == text


def test_byte_ids_are_byt5s():
    assert ByteTokenizer().encode("Hello") == [75, 104, 111, 111, 114]  # 'H' = 72, 'e' = 101, 'l' = 108, 'o' = 111
    # é = C3 A9, € = E2 82 AC, 😀 = F0 9F 98 80; each byte b -> b + 3
    assert ByteTokenizer().encode("é€😀") == [198, 172, 229, 133, 175, 243, 162, 155, 131]
    tok = ByteTokenizer()
    for text in TEXTS:
        assert tok.encode(text) == [b + 3 for b in text.encode("utf-8")]
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.id_to_piece(3) == "\x00" and tok.id_to_piece(258) == "\xff" and tok.piece_to_id("A") == 68


def test_byte_ids_match_transformers_byt5():
    transformers = pytest.importorskip("transformers")
    byt5 = transformers.ByT5Tokenizer()
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (byt5.pad_token_id, byt5.eos_token_id, byt5.unk_token_id)
    for text in TEXTS[:-1]:  # the last one spells '<extra_id_0>', which ByT5 reads as its sentinel
        assert tok.encode(text) == byt5(text, add_special_tokens=False).input_ids, text
    assert [tok.id_to_piece(i) for i in range(3, 259)] == byt5.convert_ids_to_tokens(list(range(3, 259)))


def test_char_tokenizer_on_tinyshakespeare_matches_nanogpt():
    text = _shakespeare()
    tok = CharTokenizer.from_texts([text])
    chars = sorted(set(text))  # nanoGPT's data/shakespeare_char/prepare.py
    assert len(chars) == 65 and tok.chars == tuple(chars)
    assert tok.vocab_size == 65 + 7
    stoi = {ch: i for i, ch in enumerate(chars)}
    sample = text[:2000]
    assert tok.encode(sample) == [7 + stoi[c] for c in sample]
    assert CharTokenizer.from_texts([text[:500_000], text[500_000:]]).chars == tok.chars


@pytest.mark.parametrize("tok", _tokenizers(), ids=["bytes", "chars"])
def test_offsets_are_characters(tok):
    for text in TEXTS:
        ids, offsets = tok.encode_with_offsets(text)
        assert ids == tok.encode(text) and len(offsets) == len(ids)
        covered = []
        for k in range(len(text)):  # the tokens of character k are consecutive and map to (k, k + 1)
            mine = [i for i, span in zip(ids, offsets) if span == (k, k + 1)]
            assert tok.decode(mine) == text[k], (text, k)
            covered += mine
        assert covered == ids
    ids, offsets = ByteTokenizer().encode_with_offsets("aé😀b")
    assert offsets == [(0, 1), (1, 2), (1, 2), (2, 3), (2, 3), (2, 3), (2, 3), (3, 4)]


def test_layout_special_ids_distinct_and_outside_units():
    tok = ByteTokenizer(num_sentinels=4)
    assert tok.vocab_size == 263 + 4
    assert tok.special_tokens() == {"pad": 0, "unk": 2, "bos": 259, "eos": 1, "cls": 260, "sep": 261, "mask": 262,
                                    "num_sentinels": 4}
    assert tok.sentinel_ids == (263, 264, 265, 266)
    named = [tok.pad_id, tok.eos_id, tok.unk_id, tok.bos_id, tok.cls_id, tok.sep_id, tok.mask_id, *tok.sentinel_ids]
    assert len(set(named)) == len(named) and max(named) < tok.vocab_size
    assert not set(named) & set(range(3, 259))  # no special is a byte
    assert set(tok.special_ids) == set(named) - {tok.unk_id}

    chars = CharTokenizer("ba c", num_sentinels=2)
    assert chars.chars == (" ", "a", "b", "c") and chars.vocab_size == 7 + 2 + 4
    assert (chars.pad_id, chars.eos_id, chars.unk_id, chars.bos_id, chars.cls_id, chars.sep_id, chars.mask_id) == \
        (0, 1, 2, 3, 4, 5, 6)
    assert chars.sentinel_ids == (7, 8)
    assert chars.encode("a b c") == [10, 9, 11, 9, 12]
    assert set(chars.special_ids) == {0, 1, 3, 4, 5, 6, 7, 8}
    assert chars.piece_to_id("[MASK]") == 6 and chars.piece_to_id("c") == 12 and chars.piece_to_id("zz") == 2
    with pytest.raises(ValueError, match="single characters"):
        CharTokenizer(["ab"])


@pytest.mark.parametrize("tok", _tokenizers(num_sentinels=2), ids=["bytes", "chars"])
def test_decode_of_specials_and_sentinels(tok):
    s0, s1 = tok.sentinel_ids
    assert [tok.id_to_piece(i) for i in tok.sentinel_ids] == ["<extra_id_0>", "<extra_id_1>"]
    assert tok.piece_to_id("<extra_id_1>") == s1
    ab, cd = tok.encode("ab"), tok.encode("cé")
    # A span-corruption target reads as T5's; structural specials leave no text.
    target = [tok.bos_id, s0] + ab + [s1] + cd + [tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(target) == "<extra_id_0>ab<extra_id_1>cé"
    assert tok.decode(target, skip_special_tokens=True) == "abcé"
    assert tok.decode([tok.cls_id] + ab + [tok.sep_id, tok.mask_id] + cd + [tok.sep_id]) == "abcé"
    assert tok.decode([tok.unk_id]) == REPLACEMENT
    assert tok.encode("<extra_id_0>") != [s0] and tok.decode(tok.encode("<extra_id_0>")) == "<extra_id_0>"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        tok.id_to_piece(-1)


def test_byte_decode_replaces_partial_characters():
    tok = ByteTokenizer(num_sentinels=1)
    e_acute = tok.encode("é")
    assert tok.decode(e_acute[:1]) == REPLACEMENT
    assert tok.decode(e_acute[:1] + tok.encode("x")) == REPLACEMENT + "x"
    # A sentinel splits the bytes into separate runs; a dropped pad does not.
    assert tok.decode(e_acute[:1] + [tok.sentinel_ids[0]] + e_acute[1:]) == REPLACEMENT + "<extra_id_0>" + REPLACEMENT
    assert tok.decode(e_acute[:1] + [tok.pad_id] + e_acute[1:]) == "é"


def test_char_unknowns_become_unk_and_are_counted():
    tok = CharTokenizer("abc ")
    ids = tok.encode("ab xé c!")
    assert [i == tok.unk_id for i in ids] == [False, False, False, True, True, False, False, True]
    assert tok.decode(ids) == f"ab {REPLACEMENT}{REPLACEMENT} c{REPLACEMENT}"
    assert tok.unknown_chars("ab xé c!!") == {"x": 1, "é": 1, "!": 2}
    assert sum(tok.unknown_chars("ab xé c!").values()) == ids.count(tok.unk_id)
    _, offsets = tok.encode_with_offsets("ab xé c!")
    assert offsets == [(k, k + 1) for k in range(8)]
    assert tok.word_starts(ids).tolist() == [True, False, True, True, False, True, True, False]  # unk stays in its word


def test_word_starts_example():
    text = "Hi, wö\n  ok"
    # H i , ␠ w ö ö \n ␠ ␠ o k  (ö is two bytes)
    assert ByteTokenizer().word_starts(ByteTokenizer().encode(text)).tolist() == \
        [True, False, False, True, True, False, False, True, True, True, True, False]
    chars = CharTokenizer.from_texts([text])
    assert chars.word_starts(chars.encode(text)).tolist() == \
        [True, False, False, True, True, False, True, True, True, True, False]


@pytest.mark.parametrize("tok", _tokenizers(num_sentinels=1), ids=["bytes", "chars"])
def test_word_starts_give_whole_words(tok):
    """Cutting at word starts gives exactly str.split()'s words, plus single whitespace tokens and specials."""
    for text in TEXTS:
        ids = [tok.cls_id] + tok.encode(text) + [tok.sep_id, tok.sentinel_ids[0]] + tok.encode(text)
        starts = tok.word_starts(ids)
        assert starts.dtype == bool and starts.shape == (len(ids),) and starts[0]
        cuts = np.flatnonzero(starts).tolist() + [len(ids)]
        units = [ids[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
        specials = [u for u in units if u[0] in tok.special_ids]
        assert all(len(u) == 1 for u in specials) and len(specials) == 3
        texts = [tok.decode(u) for u in units if u[0] not in tok.special_ids]
        assert [t for t in texts if not t.isspace()] == text.split() * 2
        assert all(len(t) == 1 for t in texts if t.isspace())
    batch = [tok.encode("ab cd"), tok.encode("x  y\tz")[:5]]
    batch_BxL = np.array([row + [tok.pad_id] * (6 - len(row)) for row in batch])
    starts_BxL = tok.word_starts(batch_BxL)
    assert starts_BxL.shape == batch_BxL.shape
    assert [tok.word_starts(row).tolist() for row in batch_BxL] == starts_BxL.tolist()
    assert starts_BxL[0].tolist() == [True, False, True, True, False, True]  # a, b, ' ', c, d, <pad>
    assert tok.word_starts(np.zeros((2, 0), dtype=np.int32)).shape == (2, 0)


@pytest.mark.parametrize("tok", _tokenizers(num_sentinels=2), ids=["bytes", "chars"])
def test_encode_batch_and_pickle(tok):
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode_batch([]) == []
    copy = pickle.loads(pickle.dumps(tok))
    assert type(copy) is type(tok) and repr(copy) == repr(tok) and copy.model_file == tok.model_file
    assert copy.special_tokens() == tok.special_tokens() and copy.sentinel_ids == tok.sentinel_ids
    for text in TEXTS:
        assert copy.encode(text) == tok.encode(text)
        assert copy.decode(tok.encode(text)) == text
    assert len(pickle.dumps(tok)) < 5_000  # the state travels, not the lookup tables


def test_byte_model_file_and_repr():
    tok = ByteTokenizer(num_sentinels=5)
    assert ByteTokenizer().model_file == "bytes" and tok.model_file == "bytes:5"
    assert repr(tok) == "ByteTokenizer(num_sentinels=5, vocab_size=268)"
    with pytest.raises(ValueError):
        ByteTokenizer(-1)
    # what config.data.tokenizer and a saved run config name: the same table back
    for name, vocab in (("bytes", 263), ("bytes:5", 268)):
        loaded = load_tokenizer(name)
        assert isinstance(loaded, ByteTokenizer) and loaded.vocab_size == vocab and loaded.model_file == name
    with pytest.raises(ValueError, match="'bytes' or 'bytes:N'"):
        load_tokenizer("bytes:five")


def test_char_save_and_load(tmp_path):
    tok = CharTokenizer.from_texts(TEXTS, num_sentinels=3)
    assert tok.model_file == "<in-memory chars>"
    path = tmp_path / "sub" / "chars.json"
    tok.save(path)
    assert tok.model_file == str(path)
    data = json.loads(path.read_text(encoding="ascii"))
    assert data == {"kind": "chars", "chars": list(tok.chars), "num_sentinels": 3}
    assert is_char_tokenizer_file(path) and is_char_tokenizer_file(str(path))
    for loaded in (load_tokenizer(str(path)), CharTokenizer.load(str(path))):
        assert loaded.model_file == str(path) and loaded.chars == tok.chars
        assert loaded.special_tokens() == tok.special_tokens() and loaded.vocab_size == tok.vocab_size
        for text in TEXTS:
            assert loaded.encode(text) == tok.encode(text) and loaded.decode(tok.encode(text)) == text

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"kind": "sentencepiece"}))
    binary = tmp_path / "tok.model"
    binary.write_bytes(b"\n\x0b\x00\xff not json")
    broken = tmp_path / "broken.json"
    broken.write_bytes(b'{"kind": "chars", ')
    for path in (other, binary, broken, tmp_path / "missing.json", tmp_path, ""):
        assert not is_char_tokenizer_file(path), path
    with pytest.raises(ValueError, match="not a CharTokenizer file"):
        CharTokenizer.load(other)


def test_a_character_level_run_keeps_its_tokenizer_and_resumes_with_it(tmp_path):
    """configs/pretrain/shakespeare_char.py's path on a small text: data.tokenizer='chars' builds the alphabet of
    the training split into the workdir (newlines included); the resumed run reads it back instead of rebuilding."""
    from jaxlm import pretrain
    from jaxlm.config_defaults import load_config_file
    from jaxlm.data.tokenizer_io import CHARS_FILE

    corpus = tmp_path / "plays.txt"
    corpus.write_text("\n\n".join(TEXTS[1:6]) * 40, encoding="utf-8")
    config = load_config_file(str(Path(__file__).resolve().parents[1] / "configs" / "pretrain" / "shakespeare_char.py"))
    config.data.update(text_files=str(corpus), data_dir=str(tmp_path / "tfds"))
    config.model.update(num_layers=1, hidden_size=32, num_heads=2, intermediate_size=64)
    config.train.update(num_steps=6, batch_size=8, log_every=3, eval_every=0, eval_batches=1, checkpoint_every=6,
                        progress_bar=False)
    workdir = tmp_path / "run"
    first = pretrain.run(config, str(workdir))
    saved = CharTokenizer.load(workdir / CHARS_FILE)
    # (text files are read with universal newlines: \r\n is \n)
    assert "\n" in saved.chars and saved.vocab_size == 7 + len(set("".join(TEXTS[1:6]) + "\n") - {"\r"})
    assert first["status"] == "completed" and np.isfinite(first["final_train_loss"])
    kept = (workdir / CHARS_FILE).read_bytes()
    corpus.write_text(corpus.read_text(encoding="utf-8") + "\n\nZ€ß new letters\n", encoding="utf-8")  # a rebuild
    config.train.num_steps = 8  # would give other ids (and an embedding table the checkpoint does not fit)
    resumed = pretrain.run(config, str(workdir))
    assert resumed["start_step"] == 6 and resumed["final_step"] == 8
    assert (workdir / CHARS_FILE).read_bytes() == kept
