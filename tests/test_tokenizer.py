"""Tokenizer: training on the embedded corpus, the special-id layout, round trips, word starts,
loading foreign .model files, and the CLI."""

import pickle
import unicodedata

import numpy as np
import pytest
import sentencepiece as spm

from jaxlm import tokenizer as tokenizer_cli
from jaxlm.data.corpus import pydoc_documents
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer

SAMPLES = [
    'The "if" statement is used for conditional execution.',
    "   if x:   return None  # indented code keeps its spaces",
    "Objects are Python's abstraction for data.",
]


def _pydoc_texts():
    return [text for _, text in pydoc_documents()]


@pytest.fixture(scope="session")
def unigram(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "unigram300"
    return train_tokenizer(iter(_pydoc_texts()), prefix, vocab_size=300, model_type="unigram")


@pytest.fixture(scope="session")
def bpe_bytes(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("tok") / "bpe600"
    return train_tokenizer(iter(_pydoc_texts()), prefix, vocab_size=600, model_type="bpe",
                           byte_fallback=True, num_sentinels=3)


def test_special_ids_follow_the_documented_layout(unigram, bpe_bytes):
    for tok in (unigram, bpe_bytes):
        assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
        assert (tok.cls_id, tok.sep_id, tok.mask_id) == (4, 5, 6)
        assert [tok.id_to_piece(i) for i in range(7)] == [
            "<pad>", "<unk>", "<s>", "</s>", "[CLS]", "[SEP]", "[MASK]"]
    assert unigram.vocab_size == 300 and bpe_bytes.vocab_size == 600
    assert unigram.sentinel_ids == ()
    assert unigram.special_ids == (0, 2, 3, 4, 5, 6)  # unk is maskable, not special
    assert bpe_bytes.sentinel_ids == (7, 8, 9)
    assert bpe_bytes.id_to_piece(9) == "<extra_id_2>"
    assert bpe_bytes.special_ids == (0, 2, 3, 4, 5, 6, 7, 8, 9)
    # the literal special text is one piece (user-defined symbol)
    assert unigram.encode("[MASK]")[-1] == 6


@pytest.mark.parametrize("which", ["unigram", "bpe_bytes"])
def test_encode_decode_round_trip(which, request):
    tok = request.getfixturevalue(which)
    for text in SAMPLES:
        ids = tok.encode(text)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
    batch = tok.encode_batch(SAMPLES)
    assert batch == [tok.encode(t) for t in SAMPLES]
    # padding ids are dropped by decode (they are control tokens)
    assert tok.decode(np.array([0, 0] + tok.encode(SAMPLES[0]) + [0])) == SAMPLES[0]


def test_byte_fallback_round_trips_unseen_characters(bpe_bytes, unigram):
    text = "Snowman \u2603 and caf\u00e9 \u4e2d\u6587"
    ids = bpe_bytes.encode(text)
    assert 1 not in ids  # no <unk>
    assert bpe_bytes.decode(ids) == unicodedata.normalize("NFKC", text)
    assert 1 in unigram.encode(text)  # without byte fallback the snowman is unknown


def test_word_starts(unigram, bpe_bytes):
    tok = unigram
    ids = [tok.cls_id] + tok.encode("conditional execution statement") + [tok.sep_id, tok.pad_id]
    pieces = [tok.id_to_piece(i) for i in ids]
    starts = tok.word_starts(ids)
    assert starts.dtype == bool and starts.shape == (len(ids),)
    assert starts[0] and starts[-2] and starts[-1]  # specials are word starts
    expected = [p.startswith("\u2581") for p in pieces[1:-2]]
    assert starts[1:-2].tolist() == expected
    assert sum(expected) == 3 and len(expected) > 3  # three words, some split into pieces
    np.testing.assert_array_equal(tok.word_starts(np.stack([ids, ids[::-1]])),
                                  np.stack([starts, tok.word_starts(ids[::-1])]))  # [B, L] too
    # BPE keeps runs of spaces as their own piece: the word after it starts a word too
    ids = bpe_bytes.encode("    if x")
    pieces = [bpe_bytes.id_to_piece(i) for i in ids]
    starts = bpe_bytes.word_starts(ids)
    ws = [i for i, p in enumerate(pieces) if set(p) == {"\u2581"}]
    assert ws and all(starts[i + 1] for i in ws if i + 1 < len(ids))


def test_load_model_file_and_pickle(unigram):
    loaded = Tokenizer.load(unigram.model_file)
    assert loaded.encode(SAMPLES[0]) == unigram.encode(SAMPLES[0])
    clone = pickle.loads(pickle.dumps(loaded))
    assert clone.encode(SAMPLES[1]) == unigram.encode(SAMPLES[1])
    assert clone.mask_id == 6
    with pytest.raises(FileNotFoundError, match="nope.model"):
        Tokenizer("/nonexistent/nope.model")


def test_foreign_model_loads_as_is(tmp_path):
    """A T5-style layout (pad 0, eos 1, unk 2, no bos, no [CLS]) keeps its own ids."""
    prefix = str(tmp_path / "t5like")
    lines = [ln for text in _pydoc_texts()[:60] for ln in text.split("\n")]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=prefix, vocab_size=200,
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2)
    tok = Tokenizer(prefix + ".model")
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
    assert tok.special_ids == (0, 1)
    with pytest.raises(ValueError, match="no bos"):
        tok.bos_id
    with pytest.raises(ValueError, match=r"t5like\.model.*no cls"):
        tok.cls_id
    assert tok.special_tokens()["mask"] is None


def test_train_errors_name_the_culprit(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        train_tokenizer(str(tmp_path / "no_such_dir" / "*.txt"), tmp_path / "x", 300)
    with pytest.raises(ValueError, match="vocab_size=200"):
        train_tokenizer(iter(["a b c"]), tmp_path / "x", 200, byte_fallback=True)
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer(iter(["a b c"]), tmp_path / "x", 300, model_type="wordpiece")


def test_cli_trains_from_files_and_prints_specials(tmp_path, capsys):
    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    texts = _pydoc_texts()
    (corpus_dir / "a.txt").write_text("\n".join(texts[:100]))
    (corpus_dir / "b.txt").write_text("\n".join(texts[100:]))
    out = tmp_path / "cli" / "bpe256"
    assert tokenizer_cli.main(["train", "--input", f"{corpus_dir}/a.txt,{corpus_dir}/b*.txt",
                               "--vocab_size", "256", "--model_type", "bpe",
                               "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vocab_size=256" in printed
    assert "pad=0 unk=1 bos=2 eos=3 cls=4 sep=5 mask=6" in printed
    assert Tokenizer(str(out) + ".model").vocab_size == 256
    assert tokenizer_cli.main(["info", str(out) + ".model"]) == 0
    assert "vocab_size=256" in capsys.readouterr().out


def test_encode_with_offsets_gives_character_spans(unigram):
    tok = unigram
    text = "Café déjà vu: the naïve coöperation of Python's dict."
    ids, spans = tok.encode_with_offsets(text)
    assert ids == tok.encode(text)
    assert all(0 <= a <= b <= len(text) for a, b in spans)
    assert [a for a, _ in spans] == sorted(a for a, _ in spans)
    pieces = "".join(text[a:b] for a, b in spans)
    assert pieces.replace(" ", "") == text.replace(" ", "")  # every character covered once, in order
