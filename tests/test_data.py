"""Data: TFDS array_record corpora (offline, no TensorFlow), bad-data handling, and each objective's grain
pipeline: batch format, packing, process sharding, exact resume, eval batches."""

import json
import threading

import numpy as np
import pytest

from jaxlm.data import (
    DataNotPreparedError,
    DataStats,
    Tokenizer,
    load_data_source,
    prepare_pydoc,
    prepare_text_files,
    train_tokenizer,
)
from jaxlm.data.corpus import pydoc_documents, split_long_text
from jaxlm.objectives import get_objective

SEQ_LEN, BATCH, MAX_PRED = 32, 4, 6
SETTINGS = ("seq_len", "max_predictions", "mask_rate", "whole_word_masking", "pairs_per_document")


def _objective(name, kw):
    """The objective `name` with the settings among `kw` (popped), the rest being stream options."""
    return get_objective(name).from_config({k: kw.pop(k) for k in list(kw) if k in SETTINGS})


def make_pretraining_iterator(source, *, objective, tokenizer, split="train", data_dir=None, **kw):
    return _objective(objective, kw).iterator(source, tokenizer, split=split, data_dir=data_dir, **kw)


def make_eval_iterator(source, *, objective, tokenizer, split="validation", data_dir=None, **kw):
    return _objective(objective, kw).eval_iterator(source, tokenizer, split=split, data_dir=data_dir, **kw)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def pydoc(data_dir):
    return prepare_pydoc(data_dir)


@pytest.fixture(scope="session")
def tok(tmp_path_factory) -> Tokenizer:
    texts = iter([text for _, text in pydoc_documents()])
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok") / "sp300", vocab_size=300)


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    (d / "a.txt").write_text("Alpha is the first letter. It comes before beta.\n\n"
                             "Second document here.\n\n\n   \n\nThird document after blank lines.\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "bad.txt").write_bytes(b"Invalid bytes \xff\xfe in here.\n\nA clean paragraph.\n")
    long_lines = [f"Line {i} of a very long document about gamma and delta." for i in range(300)]
    (d / "long.txt").write_text("\n".join(long_lines))
    return d


@pytest.fixture(scope="session")
def text_corpus(text_dir, data_dir):
    # bad.txt's invalid bytes are 1 document in 6: above the default 1% refusal threshold, allowed here
    return prepare_text_files(str(text_dir / "*.txt"), data_dir, document_separator="blank_line",
                              max_document_chars=4000, max_bad_fraction=0.2)


# ----------------------------------------------------------------------------- corpora
def test_pydoc_corpus_builds_offline(pydoc, data_dir, tmp_path):
    train, val = pydoc.source("train"), pydoc.source("validation")
    n_sections = sum(1 for _ in pydoc_documents())
    assert len(train) + len(val) == n_sections == pydoc.stats.documents
    assert pydoc.stats.split_documents == {"train": len(train), "validation": len(val)}
    assert 0 < len(val) < 0.15 * n_sections
    record = train[0]
    assert isinstance(record["text"], bytes) and len(record["text"]) > 0
    # the same code path as any catalog dataset, and a deterministic split on every machine
    again = load_data_source("jaxlm_pydoc", "validation", data_dir)
    assert sorted(r["id"] for r in again) == sorted(r["id"] for r in val)
    other = prepare_pydoc(tmp_path).source("validation")
    assert sorted(r["id"] for r in other) == sorted(r["id"] for r in val)


def test_text_files_builder_handles_bad_data(text_corpus, text_dir, data_dir):
    stats = text_corpus.stats
    train, val = text_corpus.source("train"), text_corpus.source("validation")
    texts = [r["text"].decode("utf-8") for src in (train, val) for r in src]
    long_text = (text_dir / "long.txt").read_text()
    long_pieces = split_long_text(long_text, 4000)
    assert len(long_pieces) == 5 and all(len(p) <= 4000 for p in long_pieces)
    # a.txt: 3 docs (+ 1 whitespace-only block), bad.txt: 2 docs, empty.txt: 1 empty, long.txt: 5 pieces
    assert (stats.documents, stats.empty_skipped, stats.invalid_utf8_replaced, stats.long_split) == (
        10, 2, 1, 1)
    assert len(texts) == 10 and len(val) >= 1
    assert "Invalid bytes \ufffd\ufffd in here." in texts
    assert "Third document after blank lines." in texts
    assert sorted(t for t in texts if t.startswith("Line ")) == sorted(long_pieces)
    # prepared once: a second call reuses the files and the saved stats
    again = prepare_text_files(str(text_dir / "*.txt"), data_dir, document_separator="blank_line",
                               max_document_chars=4000, max_bad_fraction=0.2)
    assert again.name == text_corpus.name and again.stats.as_dict() == stats.as_dict()
    assert stats.bad_documents == 1 and stats.bad_examples == [f"{text_dir / 'bad.txt'} (document 0)"]


def _leftover_dirs(data_dir):
    return sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*"))


@pytest.mark.parametrize("separator", ["file", "blank_line"])
def test_a_binary_file_as_corpus_is_refused_naming_it_and_leaves_nothing(tmp_path, separator):
    """An executable passed as text_files (the /bin/ls case): its NUL and invalid UTF-8 bytes are counted and
    preparation stops naming the file and the threshold's config key; no dataset folders are left behind."""
    binary = tmp_path / "ls"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 40 + b"\n\n" + b"\x00\xff" * 300)
    (tmp_path / "notes.txt").write_text("A real document.\n")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=rf"{binary}.*documents .* hold invalid UTF-8 or NUL bytes, more than "
                                         r"config.data.max_bad_document_fraction=0.01"):
        prepare_text_files([binary, tmp_path / "notes.txt"], data_dir, document_separator=separator)
    assert not data_dir.exists() or _leftover_dirs(data_dir) == []


def test_a_few_bad_documents_are_counted_and_kept(tmp_path):
    """1 document with a NUL byte among 150 (0.7%, under the 1% threshold): kept, counted, named in the stats."""
    corpus = tmp_path / "corpus.txt"
    docs = [f"Document {i} talks about topic {i % 7}." for i in range(150)]
    docs[42] = "A document with a stray \x00 NUL byte."
    corpus.write_text("\n\n".join(docs))
    prepared = prepare_text_files(corpus, tmp_path / "tfds", document_separator="blank_line")
    s = prepared.stats
    assert (s.documents, s.nul_bytes, s.bad_documents, s.bad_examples) == (150, 1, 1, [f"{corpus} (document 42)"])


def test_a_single_small_file_or_an_empty_one_is_refused_naming_it(tmp_path):
    """One document leaves no validation split (TFDS's own error was an assertion about 'validation'); an empty
    file has no text. Both errors name the file, and nothing is left in the data_dir."""
    small, empty = tmp_path / "small.txt", tmp_path / "empty.txt"
    small.write_text("hello world, one short document\n")
    empty.write_text("  \n\n")
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=rf"{small}: one document.*document_separator='blank_line'"):
        prepare_text_files(small, data_dir)
    with pytest.raises(ValueError, match=rf"{empty}: no text to prepare"):
        prepare_text_files(empty, data_dir, document_separator="blank_line")
    assert not data_dir.exists() or _leftover_dirs(data_dir) == []


def test_unprepared_dataset_errors_clearly(tmp_path):
    with pytest.raises(DataNotPreparedError, match="'lm1b' is not prepared.*array_record"):
        load_data_source("lm1b", "train", str(tmp_path))
    with pytest.raises(DataNotPreparedError, match="'c4/en' is not prepared"):
        load_data_source("c4/en", "train", str(tmp_path))
    with pytest.raises(DataNotPreparedError, match="'jaxlm_text_files/never_made' is not prepared"):
        load_data_source("jaxlm_text_files/never_made", "train", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        prepare_text_files(str(tmp_path / "nothing_here*.txt"), str(tmp_path))


# ----------------------------------------------------------------------------- batches
def _iterator(tok, data_dir, objective, **kw):
    args = dict(data_dir=data_dir, tokenizer=tok, objective=objective, seq_len=SEQ_LEN,
                batch_size=BATCH, max_predictions=MAX_PRED, seed=7)
    args.update(kw)
    return make_pretraining_iterator(kw.pop("source", "jaxlm_pydoc"), **args)


def _unmask(batch):
    """The MLM inputs before masking (targets put back at the masked positions)."""
    inputs = batch["inputs"].copy()
    for r in range(len(inputs)):
        w = batch["masked_weights"][r] > 0
        inputs[r, batch["masked_positions"][r][w]] = batch["masked_targets"][r][w]
    return inputs


def _check_spec(batch, objective):
    spec = get_objective(objective).from_config(dict(seq_len=SEQ_LEN, max_predictions=MAX_PRED)).batch_spec(BATCH)
    assert tuple(batch) == tuple(spec)
    for key, (shape, dtype) in spec.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key


@pytest.mark.parametrize("objective", ["mlm", "mlm_nsp"])
def test_mlm_batches_follow_spec_and_are_masked(tok, pydoc, data_dir, objective):
    it = _iterator(tok, data_dir, objective)
    batches = [next(it) for _ in range(4)]
    for b in batches:
        _check_spec(b, objective)
        w = b["masked_weights"] > 0
        assert w.sum(axis=1).min() >= 1  # every row has predictions
        rows = np.nonzero(w)[0]
        pos = b["masked_positions"][w]
        assert (b["segment_ids"][rows, pos] > 0).all()  # never predict padding
        assert not np.isin(b["masked_targets"][w], tok.special_ids).any()
        assert (b["inputs"] == tok.mask_id).sum() >= 0.5 * w.sum()  # most predictions are [MASK]
        assert (b["inputs"][:, 0] == tok.cls_id).all()
        assert (b["masked_weights"][~w] == 0).all()
    if objective == "mlm_nsp":
        labels = np.concatenate([b["nsp_labels"] for b in batches])
        assert set(labels.tolist()) == {0, 1}
        assert all((b["token_types"] == 1).any(axis=1).all() for b in batches)
        assert all((b["inputs"] == tok.sep_id).sum(axis=1).min() == 2 for b in batches)
    else:
        assert all((b["token_types"] == 0).all() for b in batches)


def test_whole_word_masking_masks_whole_words(tok, pydoc, data_dir):
    it = _iterator(tok, data_dir, "mlm", whole_word_masking=True, max_predictions=SEQ_LEN)
    complete = 0
    for _ in range(3):
        b = next(it)
        original = _unmask(b)
        for r in range(BATCH):
            masked = set(b["masked_positions"][r][b["masked_weights"][r] > 0].tolist())
            starts = tok.word_starts(original[r])
            for p in masked:
                # a masked piece's word is masked whole: the next piece too, unless it starts a
                # new word (or another document)
                q = p + 1
                if q < SEQ_LEN and b["segment_ids"][r, q] == b["segment_ids"][r, p] and not starts[q]:
                    assert q in masked, (r, p, [tok.id_to_piece(i) for i in original[r]])
            complete += len(masked)
    assert complete > 0


def test_clm_batches_pack_documents_with_segment_ids(tok, pydoc, data_dir):
    it = _iterator(tok, data_dir, "clm")
    multi_segment_rows = 0
    for _ in range(6):
        b = next(it)
        _check_spec(b, "clm")
        seg, pos, w = b["segment_ids"], b["positions"], b["weights"]
        np.testing.assert_array_equal(w, (seg > 0).astype(np.float32))
        same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
        # within a document the next input is the current target; positions count up from 0
        np.testing.assert_array_equal(b["targets"][:, :-1][same], b["inputs"][:, 1:][same])
        np.testing.assert_array_equal(pos[:, 1:][same], pos[:, :-1][same] + 1)
        assert (pos[:, 1:][~same & (seg[:, 1:] > 0)] == 0).all()
        assert (np.diff(seg, axis=1)[(seg[:, 1:] > 0)] >= 0).all()
        multi_segment_rows += int((seg.max(axis=1) > 1).sum())
    assert multi_segment_rows > 0


def test_clm_rows_hold_exactly_the_documents_tokens(tok):
    docs = [b"Alpha beta gamma.", b"", "delta \u00e9 epsilon zeta eta theta.".encode(),
            b"bad \xff byte", b"One more short document."] + [
        " ".join(["word"] * n).encode() for n in (3, 40, 9)]
    stats = DataStats()
    batches = list(make_eval_iterator(docs, tokenizer=tok, objective="clm", seq_len=16,
                                      batch_size=3, stats=stats))
    inputs = np.concatenate([b["inputs"][b["weights"] > 0] for b in batches])
    targets = np.concatenate([b["targets"][b["weights"] > 0] for b in batches])
    encoded = [tok.encode(d.decode("utf-8", errors="replace")) for d in docs if d]
    v = tok.vocab_size
    expect_inputs = sum(np.bincount(e, minlength=v) for e in encoded)
    expect_targets = sum(np.bincount(e[1:] + [tok.eos_id], minlength=v) for e in encoded)
    np.testing.assert_array_equal(np.bincount(inputs, minlength=v), expect_inputs)
    np.testing.assert_array_equal(np.bincount(targets, minlength=v), expect_targets)
    n_long = sum(len(e) > 16 for e in encoded)
    assert 0 < n_long < len(encoded)
    assert (stats.documents, stats.empty_skipped, stats.invalid_utf8_replaced, stats.long_split) == (
        7, 1, 1, n_long)


class _RecordingSource:
    """A list source that remembers which documents were read."""

    def __init__(self, records):
        self.records, self.read, self._lock = records, set(), threading.Lock()

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        with self._lock:
            self.read.add(int(i))
        return self.records[i]


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_processes_read_disjoint_documents(tok, pydoc, objective):
    records = [pydoc.source("train")[i] for i in range(40)]
    totals = []
    for count in (1, 2):
        sources = [_RecordingSource(records) for _ in range(count)]
        tokens = np.zeros(tok.vocab_size, np.int64)
        for p, src in enumerate(sources):
            one_epoch = make_pretraining_iterator(
                src, tokenizer=tok, objective=objective, seq_len=64, batch_size=BATCH, seed=3,
                process_index=p, process_count=count, num_epochs=1, drop_remainder=False)
            for b in one_epoch:
                inputs = _unmask(b) if objective == "mlm" else b["inputs"]
                tokens += np.bincount(inputs[b["segment_ids"] > 0], minlength=tok.vocab_size)
        if count == 2:
            assert sources[0].read.isdisjoint(sources[1].read)
            assert len(sources[0].read) == len(sources[1].read) == 20
        assert set().union(*(s.read for s in sources)) == set(range(40))
        totals.append(tokens)
    np.testing.assert_array_equal(totals[0], totals[1])  # together they read everything, once


def test_nsp_examples_are_keyed_by_global_index(tok, pydoc, data_dir):
    """NSP pairs and masks do not depend on the process count: process p gets examples p, p+2, ..."""
    single = _iterator(tok, data_dir, "mlm_nsp", batch_size=4)
    parts = [_iterator(tok, data_dir, "mlm_nsp", batch_size=2, process_index=p, process_count=2)
             for p in range(2)]
    for _ in range(2):
        whole = next(single)
        halves = [next(part) for part in parts]
        for key in whole:
            np.testing.assert_array_equal(whole[key][0::2], halves[0][key])
            np.testing.assert_array_equal(whole[key][1::2], halves[1][key])
    assert not np.array_equal(halves[0]["inputs"], halves[1]["inputs"])


# ----------------------------------------------------------------------------- resume
def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("objective", ["clm", "mlm", "mlm_nsp"])
def test_resume_gives_identical_batches(tok, pydoc, data_dir, objective):
    it = _iterator(tok, data_dir, objective)
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # what the checkpoint stores
    expected = [next(it) for _ in range(3)]
    resumed = _iterator(tok, data_dir, objective)
    resumed.set_state(state)
    _assert_same_batches([next(resumed) for _ in range(3)], expected)
    # a different seed gives different data (so the equality above is not vacuous)
    other = _iterator(tok, data_dir, objective, seed=8)
    other.set_state(state)
    assert not np.array_equal(next(other)["inputs"], expected[0]["inputs"])


@pytest.mark.parametrize("objective", ["clm", "mlm"])
def test_resume_across_epochs_of_a_tiny_corpus(tok, objective):
    docs = [f"Document number {i} talks about the statement and the class.".encode()
            for i in range(5)]
    make = lambda: make_pretraining_iterator(docs, tokenizer=tok, objective=objective, seq_len=16,  # noqa: E731
                                             batch_size=2, max_predictions=4, seed=11)
    it = make()
    for _ in range(9):  # several epochs in
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(5)]
    resumed = make()
    resumed.set_state(state)
    _assert_same_batches([next(resumed) for _ in range(5)], expected)


# ----------------------------------------------------------------------------- eval
def test_eval_iterator_pads_the_last_batch(tok):
    docs = [f"Sentence one of doc {i}. Sentence two of doc {i}. And a third one here.".encode()
            for i in range(5)]
    kw = dict(tokenizer=tok, objective="mlm_nsp", seq_len=SEQ_LEN, batch_size=BATCH,
              max_predictions=MAX_PRED)
    batches = list(make_eval_iterator(docs, **kw))
    assert len(batches) == 2  # 5 examples, batch 4: the last batch is padded, not dropped
    for b in batches:
        _check_spec(b, "mlm_nsp")
    last = batches[1]
    assert (last["segment_ids"][0] > 0).any()
    assert (last["segment_ids"][1:] == 0).all() and (last["masked_weights"][1:] == 0).all()
    _assert_same_batches(batches, list(make_eval_iterator(docs, **kw)))  # fixed masks
    fixed = list(make_eval_iterator(docs, num_batches=4, **kw))
    assert len(fixed) == 4
    _assert_same_batches(fixed[:2], batches)
    assert all((b["masked_weights"] == 0).all() and (b["segment_ids"] == 0).all() for b in fixed[2:])
    assert len(list(make_eval_iterator(docs, num_batches=1, **kw))) == 1


def test_nsp_survives_empty_documents(tok):
    docs = [b"", b"First sentence here. Second sentence there.", b"  \n ",
            b"Another doc. With two sentences.", b"Third doc is here. Yes it is."]
    kw = dict(tokenizer=tok, objective="mlm_nsp", seq_len=SEQ_LEN, batch_size=2,
              max_predictions=MAX_PRED)
    stats = DataStats()
    batches = list(make_eval_iterator(docs, stats=stats, **kw))
    assert sum(int((b["segment_ids"][:, 0] > 0).sum()) for b in batches) == 3  # one per real doc
    assert (stats.documents, stats.empty_skipped) == (3, 2)
    # random "next" sentences never come from an empty document, however often they are drawn
    it = make_pretraining_iterator(docs, seed=5, **kw)
    labels = np.concatenate([next(it)["nsp_labels"] for _ in range(20)])
    assert 0 < labels.mean() < 1


def test_eval_on_validation_split(tok, pydoc, data_dir):
    batches = list(make_eval_iterator("jaxlm_pydoc", data_dir=data_dir, tokenizer=tok,
                                      objective="clm", seq_len=128, batch_size=BATCH))
    assert len(batches) >= 2
    n_tokens = sum(b["weights"].sum() for b in batches)
    val_tokens = sum(len(tok.encode(r["text"].decode())) for r in pydoc.source("validation"))
    assert n_tokens == val_tokens  # every validation token once (EOS targets replace first tokens)


def test_pipeline_errors_name_the_argument(tok, pydoc, data_dir):
    with pytest.raises(ValueError, match=r"config.objective='mlm_typo' is not an objective; choose one of \[.*'clm'"):
        _iterator(tok, data_dir, "mlm_typo")
    with pytest.raises(ValueError, match="process_index=2"):
        _iterator(tok, data_dir, "clm", process_index=2, process_count=2)
    with pytest.raises(DataNotPreparedError, match="no split 'nope'|nope"):
        _iterator(tok, data_dir, "clm", split="nope")


def test_pairs_per_document_multiplies_an_epoch(tok, pydoc, data_dir):
    """k pairs per document per epoch, each with its own A chunk and label, drawn from that document."""
    def epoch(k):
        it = make_pretraining_iterator(pydoc.name, tokenizer=tok, objective="mlm_nsp", seq_len=SEQ_LEN,
                                       batch_size=1, split="validation", data_dir=data_dir, shuffle=False,
                                       num_epochs=1, drop_remainder=False, pairs_per_document=k)
        return [b for b in it if b["segment_ids"].any()]

    one, three = epoch(1), epoch(3)
    assert len(three) == 3 * len(one) > 0
    labels = [int(b["nsp_labels"][0]) for b in three]
    assert 0 < sum(labels) < len(labels)
    for i in range(len(one)):  # the 3 copies of document i differ (A chunk, label or mask)
        rows = [three[3 * i + j]["inputs"][0].tobytes() for j in range(3)]
        assert len(set(rows)) > 1


def test_tail_split_cuts_the_characters_as_nanogpt_and_keeps_hash_split_names(tmp_path):
    """validation_split='tail': the last validation_percent% of the characters (files in sorted order) are the
    validation split, cut at one character as nanoGPT's `data[:int(n*0.9)]`, then split into documents."""
    from jaxlm.data.corpus import tail_split_offset

    assert tail_split_offset(1_115_394, 10.0) == 1_003_854   # nanoGPT: "train has 1,003,854 tokens"
    d = tmp_path / "plays"
    d.mkdir()
    (d / "a.txt").write_text("FIRST:\nOne speech.\n\nSECOND:\nAnother one.\n")
    (d / "b.txt").write_text("THIRD:\nA speech cut across the two splits by the tail split.\n")
    text = (d / "a.txt").read_text() + (d / "b.txt").read_text()
    cut = tail_split_offset(len(text), 25.0)
    prepared = prepare_text_files(str(d / "*.txt"), tmp_path / "tfds", document_separator="blank_line",
                                  validation_split="tail", validation_percent=25.0)
    train = [r["text"].decode() for r in prepared.source("train")]
    val = [r["text"].decode() for r in prepared.source("validation")]
    assert "".join(val) == text[cut:].strip() and len(val) == 1
    assert sorted(train) == sorted(["FIRST:\nOne speech.", "SECOND:\nAnother one.", text[len(a := (
        d / "a.txt").read_text()):cut].strip()]) and len(a) < cut
    # one file, one document per file: still two splits (the cut makes them)
    one = prepare_text_files(str(d / "b.txt"), tmp_path / "tfds", validation_split="tail", validation_percent=10.0)
    assert len(one.source("train")) == len(one.source("validation")) == 1
    # the default (hash) split keeps its dataset names: corpora prepared before are reused
    assert prepare_text_files(str(d / "*.txt"), tmp_path / "tfds2").name != prepared.name
    with pytest.raises(ValueError, match="validation_split"):
        prepare_text_files(str(d / "*.txt"), tmp_path / "tfds", validation_split="last")


def test_shakespeare_char_splits_as_nanogpt():
    import os

    from jaxlm.config_defaults import REPOSITORY, load_config_file, shared_data

    config = load_config_file(os.path.join(REPOSITORY, "configs", "pretrain", "shakespeare_char.py"))
    assert (config.data.validation_split, config.data.validation_percent) == ("tail", 10.0)
    assert (config.train.eval_batches, config.train.steps_per_call) == (0, 10)
    path = shared_data("tinyshakespeare", "input.txt")
    if os.path.exists(path):
        assert os.path.getsize(path) == 1_115_394
