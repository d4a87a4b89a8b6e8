"""Fine-tuning data: readers on the real shared files and on bad input, features, batches, postprocessing."""
import json
import os
import unicodedata

import numpy as np
import pytest

from jaxlm import tasks
from jaxlm.data.corpus import DataNotPreparedError
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.tasks import BadInputError, QAExample, TextExample, TextLayout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"shared test data not found at {DATA}")


@pytest.fixture(scope="module")
def sp(tmp_path_factory) -> Tokenizer:
    """A small unigram model: many pieces per word, so windows, splits and truncation all happen."""
    from pydoc_data.topics import topics

    texts = list(topics.values())[:120] + ["Héllo wörld café naïve ﬁne 1/2 ½ Zürich"]
    return train_tokenizer(iter(texts), tmp_path_factory.mktemp("sp") / "sp", vocab_size=300)


@pytest.fixture(scope="module")
def wordpiece(tmp_path_factory):
    """A BERT-style WordPiece tokenizer (HFTokenizer) with a vocabulary of letters and a few words."""
    from jaxlm.data import load_tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["the", "of", "and", "in", "to", "was", "super", "bowl", "denver", "broncos", "##s", "##ing", "##ed"]
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(letters) + ["##" + c for c in letters]
             + list(".,;:!?'\"()-$%&/") + words)
    model_dir = tmp_path_factory.mktemp("wordpiece")
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return load_tokenizer(str(model_dir))


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


# ----- readers on the real files -----


@needs_data
def test_glue_readers_on_the_shared_files():
    sst2, stats = tasks.read_glue(os.path.join(DATA, "glue/SST-2/dev.tsv"), "sst2")
    assert len(sst2) == 872 and stats.num_skipped == 0
    assert sum(e.label == 1 for e in sst2) == 444
    assert sst2[0] == TextExample(f"{DATA}/glue/SST-2/dev.tsv:2", "it 's a charming and often affecting journey .",
                                  None, 1)  # trailing space before the tab stripped
    train, _ = tasks.read_glue(os.path.join(DATA, "glue/MRPC/train.tsv"), "MRPC")
    dev, _ = tasks.read_glue(os.path.join(DATA, "glue/MRPC/dev.tsv"), "mrpc")
    assert (len(train), sum(e.label for e in train)) == (3668, 2474)  # BOM header, unbalanced quotes
    assert (len(dev), sum(e.label for e in dev)) == (408, 279)
    assert dev[0].text_b.startswith('"The foodservice pie business')
    sts_train, _ = tasks.read_glue(os.path.join(DATA, "glue/STS-B/train.tsv"), "sts-b")
    sts_dev, _ = tasks.read_glue(os.path.join(DATA, "glue/STS-B/dev.tsv"), "stsb")
    assert (len(sts_train), len(sts_dev)) == (5749, 1500)
    assert sts_dev[1].label == 4.75 and sts_dev[1].text_b == "A child is riding a horse."
    assert min(e.label for e in sts_train) == 0.0 and max(e.label for e in sts_train) == 5.0


@needs_data
def test_conll_reader_on_the_shared_files():
    train, stats = tasks.read_conll(os.path.join(DATA, "conll2003/eng.train"), to_bio=False)
    assert (len(train), sum(len(e.words) for e in train), stats.documents) == (14041, 203621, 946)
    tags = [t for e in train for t in e.tags]
    assert (tags.count("I-PER"), tags.count("B-LOC"), tags.count("B-ORG")) == (11128, 11, 24)  # IOB1 as is
    assert train[0].words[:2] == ("EU", "rejects") and train[0].tags[0] == "I-ORG"
    assert train[-1].document == 945
    # testb's separator is '-DOCSTART- -X- -X- O' and it ends in two blank lines
    test, stats = tasks.read_conll(os.path.join(DATA, "conll2003/eng.testb"), labels=tasks.CONLL2003_BIO_LABELS)
    assert (len(test), sum(len(e.words) for e in test), stats.documents) == (3453, 46435, 231)
    assert all(e.words and "-DOCSTART-" not in e.words for e in test)
    bio = [t for e in test for t in e.tags]
    # BIO: one B- per entity; the published testb entity counts (PER 1617, LOC 1668, ORG 1661, MISC 702)
    assert [bio.count(f"B-{k}") for k in ("PER", "LOC", "ORG", "MISC")] == [1617, 1668, 1661, 702]


@needs_data
def test_squad_reader_on_the_shared_file():
    examples, stats = tasks.read_squad(os.path.join(DATA, "squad/dev-v1.1.json"))
    assert len(examples) == 10570 and stats.num_skipped == 0
    assert sum(len(e.answers) for e in examples) == 34726
    assert len({e.title for e in examples}) == 48 and len({e.context for e in examples}) == 2067
    first = examples[0]
    assert first.question == "Which NFL team represented the AFC at Super Bowl 50?"
    assert first.answers[0] == tasks.Answer("Denver Broncos", 177)


# ----- readers on bad input -----


def test_text_reader_errors_name_file_and_line(tmp_path):
    path = write(tmp_path, "bad.tsv", "sentence\tlabel\ngood one\t1\nthree\tcolumns\t0\nnice\t2\n  \t0\nlast\t0\n")
    layout = tasks.glue_layout("sst2")
    with pytest.raises(BadInputError, match=r"bad\.tsv:3: 3 columns, expected 2"):
        tasks.read_text_classification(path, layout)
    ok = write(tmp_path, "label.tsv", "sentence\tlabel\ngood\t1\nnice\t2\n")
    with pytest.raises(BadInputError, match=r"label\.tsv:3: label '2' is not in the label list \['0', '1'\]"):
        tasks.read_text_classification(ok, layout)
    empty = write(tmp_path, "empty.tsv", "sentence\tlabel\ngood\t1\n \t0\n")
    with pytest.raises(BadInputError, match=r"empty\.tsv:3: empty text"):
        tasks.read_text_classification(empty, layout)
    examples, stats = tasks.read_text_classification(path, layout, skip_bad_lines=True)
    assert [(e.text_a, e.label) for e in examples] == [("good one", 1), ("last", 0)]
    assert stats.skipped == {"malformed_line": 1, "bad_label": 1, "empty_text": 1}
    assert stats.examples == 2 and len(stats.first_errors) == 3
    with pytest.raises(BadInputError, match=r"no column 'sentence1'"):
        tasks.read_glue(path, "rte")
    with pytest.raises(ValueError, match="unknown GLUE task 'sst5'"):
        tasks.read_glue(path, "sst5")


def test_csv_and_jsonl_text_classification(tmp_path):
    csv_path = write(tmp_path, "spam.csv", 'label,text\nham,"Hi, see you\nat 5"\nspam,WIN cash\neggs,what\n')
    layout = TextLayout("text", "label", labels=("ham", "spam"))
    examples, stats = tasks.read_text_classification(csv_path, layout, skip_bad_lines=True)
    assert [(e.text_a, e.label, e.guid.rsplit(":", 1)[1]) for e in examples] == [
        ("Hi, see you\nat 5", 0, "2"), ("WIN cash", 1, "4")]  # a quoted newline: the next record is on line 4
    assert stats.first_errors == [f"{csv_path}:5: label 'eggs' is not in the label list ['ham', 'spam']"]
    jsonl = write(tmp_path, "topic.jsonl", "\n".join(json.dumps(r) for r in [
        {"title": "Stocks up", "body": "Markets rose.", "topic": 2},
        {"title": "Cup final", "body": "", "topic": 1}]) + "\n{not json\n")
    layout = TextLayout("title", "topic", "body", labels=(0, 1, 2))
    with pytest.raises(BadInputError, match=r"topic\.jsonl:2: empty text_b"):
        tasks.read_text_classification(jsonl, layout)
    examples, stats = tasks.read_text_classification(jsonl, layout, skip_bad_lines=True)
    assert examples == [TextExample(f"{jsonl}:1", "Stocks up", "Markets rose.", 2)]
    assert stats.skipped == {"empty_text": 1, "malformed_line": 1}
    # CoLA has no header: columns by index
    cola = write(tmp_path, "cola.tsv", "gj04\t1\t\tOur friends won't buy this analysis.\ngj04\t0\t*\tThey drank.\n")
    examples, _ = tasks.read_glue(cola, "cola")
    assert [(e.text_a, e.label) for e in examples] == [("Our friends won't buy this analysis.", 1), ("They drank.", 0)]


def test_conll_errors_and_iob1_to_bio(tmp_path):
    text = "-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP I-PER\nBlackburn NNP I-NP\n"
    path = write(tmp_path, "bad.conll", text)
    with pytest.raises(BadInputError, match=r"bad\.conll:7: 3 columns, expected 4"):
        tasks.read_conll(path)
    examples, stats = tasks.read_conll(path, skip_bad_lines=True)
    assert [e.words for e in examples] == [("EU", "rejects")] and stats.skipped == {"malformed_line": 1}
    bad_tag = write(tmp_path, "tag.conll", "EU NNP B-NP X-ORG\n")
    with pytest.raises(BadInputError, match=r"tag\.conll:1: tag 'X-ORG' is not O, B-TYPE or I-TYPE"):
        tasks.read_conll(bad_tag)
    with pytest.raises(BadInputError, match=r"bad\.conll:3: tag\(s\) \['B-ORG'\] not in the label list"):
        tasks.read_conll(path, labels=["O", "B-PER"], skip_bad_lines=False)
    assert tasks.iob1_to_bio(["I-ORG", "B-ORG", "I-ORG", "O", "I-PER", "I-LOC", "I-LOC"]) == [
        "B-ORG", "B-ORG", "I-ORG", "O", "B-PER", "B-LOC", "I-LOC"]


def test_squad_reader_checks_answer_offsets(tmp_path):
    data = {"version": "1.1", "data": [{"title": "T", "paragraphs": [{"context": "Denver won the game.", "qas": [
        {"id": "a", "question": "Who won?", "answers": [{"answer_start": 0, "text": "Denver"}]},
        {"id": "b", "question": "What?", "answers": [{"answer_start": 3, "text": "game"}]}]}]}]}
    path = write(tmp_path, "squad.json", json.dumps(data))
    with pytest.raises(BadInputError, match=r"paragraphs\[0\]\.qas\[1\] \(id 'b'\): answer 'game' is not at "
                                            r"answer_start=3"):
        tasks.read_squad(path)
    examples, stats = tasks.read_squad(path, skip_bad_lines=True)
    assert [e.id for e in examples] == ["a"] and stats.skipped == {"bad_answer": 1}


def test_squad_questions_without_answers_must_say_they_are_unanswerable(tmp_path):
    """A question with no 'answers' key (or an empty list and no is_impossible) was once kept as unanswerable."""
    qas = [{"id": "a", "question": "Who won?", "answers": [{"answer_start": 0, "text": "Denver"}]},
           {"id": "v2", "question": "Who lost?", "answers": [], "is_impossible": True},
           {"id": "nokey", "question": "Where?"},
           {"id": "empty", "question": "When?", "answers": []}]
    data = {"version": "2.0", "data": [{"title": "T", "paragraphs": [{"context": "Denver won.", "qas": qas}]}]}
    path = write(tmp_path, "squad.json", json.dumps(data))
    with pytest.raises(BadInputError, match=r"qas\[2\] \(id 'nokey'\): no 'answers' key"):
        tasks.read_squad(path)
    examples, stats = tasks.read_squad(path, skip_bad_lines=True)
    assert [(e.id, len(e.answers)) for e in examples] == [("a", 1), ("v2", 0)]
    assert stats.skipped == {"no_answers": 2} and "'is_impossible' is not true" in stats.first_errors[1]


def test_tfds_sources_map_records_and_say_when_not_prepared(tmp_path, monkeypatch):
    with pytest.raises(DataNotPreparedError, match="glue/sst2.*tfds build"):
        tasks.tfds_examples("glue/sst2", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match="not one of the supported TFDS datasets"):
        tasks.tfds_examples("imdb_reviews", "train", data_dir=tmp_path)

    class Names:  # stands in for a ClassLabel (and a Sequence of them)
        def __init__(self, names):
            self.names, self.feature = names, self

    class Source(list):
        dataset_info = type("Info", (), {"features": {
            "ner": Names(["O", "B-PER", "I-PER"]), "label": Names(["entailment", "neutral", "contradiction"])}})()

    records = {
        "glue/mnli": [{"premise": b"A b.", "hypothesis": b"C d.", "label": 1, "idx": 0},
                      {"premise": b"E.", "hypothesis": b"F.", "label": -1, "idx": 1},
                      {"premise": b"G.", "hypothesis": b"H.", "label": 2, "idx": 2}],
        "squad": [{"id": b"q1", "title": b"T", "context": b"Denver won.", "question": b"Who?",
                   "answers": {"text": np.array([b"Denver"]), "answer_start": np.array([0])}}],
        "conll2003": [{"tokens": np.array([b"Peter", b"Blackburn"]), "ner": np.array([1, 2])}],
        "wmt14_translate/de-en": [{"de": b"Hallo Welt .", "en": b"Hello world . "}],
    }
    import jaxlm.data.corpus

    monkeypatch.setattr(jaxlm.data.corpus, "load_data_source", lambda name, split, data_dir: Source(records[name]))
    glue, _ = tasks.tfds_examples("glue/mnli", "test")  # TFDS's class order mapped onto the GLUE files' order
    assert tasks.GLUE_LAYOUTS["mnli"].labels == ("contradiction", "entailment", "neutral")
    assert [(e.text_a, e.text_b, e.label) for e in glue] == [("A b.", "C d.", 2), ("E.", "F.", None), ("G.", "H.", 0)]
    from jaxlm.config_defaults import finetune_config
    from jaxlm.tasks.finetuning import task_spec

    config = finetune_config()
    config.data.format, config.data.tfds_name = "mnli", "glue/mnli"
    assert task_spec(config, "bert").labels[glue[0].label] == "neutral"  # TFDS's label 1, named in the spec
    pairs, stats = tasks.tfds_examples("wmt14_translate/de-en", "validation", seq2seq_fields=("en", "de"))
    assert [(e.source, e.target) for e in pairs] == [("Hello world .", "Hallo Welt .")] and stats.examples == 1
    with pytest.raises(ValueError, match=r"has no feature\(s\) \['fr'\] .* features are \['de', 'en'\]"):
        tasks.tfds_examples("wmt14_translate/de-en", "validation", seq2seq_fields=("en", "fr"))
    squad, _ = tasks.tfds_examples("squad", "validation")
    assert squad[0] == QAExample("q1", "Who?", "Denver won.", (tasks.Answer("Denver", 0),), "T")
    conll, _ = tasks.tfds_examples("conll2003", "dev")
    assert conll[0].words == ("Peter", "Blackburn") and conll[0].tags == ("B-PER", "I-PER")


# ----- features -----


def test_offsets_cover_the_text(sp, wordpiece):
    text = "Héllo  wörld, ﬁne café™ — Zürich's Super Bowl"
    ids, offsets = tasks.encode_with_offsets(sp, text)
    assert ids == sp.encode(text)
    # sentencepiece spans tile the original text (normalisation may give some pieces empty spans)
    assert offsets[0][0] == 0 and offsets[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(offsets, offsets[1:]))
    # each piece is the normalised text of its span (unknown pieces stand for their span's text)
    rebuilt = "".join(unicodedata.normalize("NFKC", text[s:e]) if i == sp.unk_id else sp.id_to_piece(i)
                      for i, (s, e) in zip(ids, offsets))
    assert rebuilt.replace("\u2581", " ").strip() == unicodedata.normalize("NFKC", text)
    ids, offsets = tasks.encode_with_offsets(wordpiece, text)
    assert ids == wordpiece.encode(text)
    for i, (start, end) in zip(ids, offsets):
        piece = wordpiece.id_to_piece(i)
        if piece != "[UNK]":  # lowercased, accents stripped, '##' continuation
            expected = unicodedata.normalize("NFD", text[start:end].lower())
            assert piece.removeprefix("##") == "".join(c for c in expected if not unicodedata.combining(c))


def test_truncate_longest_first():
    assert tasks.truncate_longest_first([1, 2, 3, 4, 5], [6, 7, 8, 9], 6) == ([1, 2, 3], [6, 7, 8])
    assert tasks.truncate_longest_first([1, 2], [3, 4, 5, 6, 7], 4) == ([1, 2], [3, 4])
    assert tasks.truncate_longest_first([1, 2, 3], None, 2) == ([1, 2], None)


def test_classification_features_layout(sp):
    a, b = "the quick brown fox jumps", "over it"
    ids_a, ids_b = sp.encode(a), sp.encode(b)
    keep = len(ids_b) + 1  # longest-first cuts only a, down to one more token than b
    max_len = 3 + len(ids_b) + keep
    assert len(ids_a) > keep
    examples = [TextExample("x:1", a, b, 1), TextExample("x:2", "fox", None, 0)]
    f = tasks.classification_features(examples, sp, max_len)
    cls, sep = sp.cls_id, sp.sep_id
    expected = [cls, *ids_a[:keep], sep, *ids_b, sep]
    np.testing.assert_array_equal(f["inputs"][0], expected)
    np.testing.assert_array_equal(f["token_types"][0], [0] * (keep + 2) + [1] * (len(ids_b) + 1))
    row = [cls, *sp.encode("fox"), sep]
    np.testing.assert_array_equal(f["inputs"][1], row + [sp.pad_id] * (max_len - len(row)))
    np.testing.assert_array_equal(f["segment_ids"][1], [1] * len(row) + [0] * (max_len - len(row)))
    np.testing.assert_array_equal(f["positions"][1][:len(row)], np.arange(len(row)))
    assert f["labels"].tolist() == [1, 0] and f["labels"].dtype == np.int32
    assert all(f[k].dtype == np.int32 and f[k].shape == (2, max_len) for k in tasks.MODEL_INPUT_KEYS)
    # RoBERTa: <s> a </s></s> b </s>, token types all 0; regression labels float32
    f = tasks.classification_features([TextExample("x:1", "fox", "dog", 3.5)], sp, 16, regression=True,
                                      style="roberta")
    row = [cls, *sp.encode("fox"), sep, sep, *sp.encode("dog"), sep]
    np.testing.assert_array_equal(f["inputs"][0][:len(row)], row)
    assert not f["token_types"].any() and f["labels"].dtype == np.float32 and f["labels"][0] == 3.5
    with pytest.raises(ValueError, match="style='t5'"):
        tasks.classification_features(examples, sp, 16, style="t5")


def test_iterate_batches_is_deterministic_and_pads_the_last_batch():
    features = {"inputs": np.arange(10 * 3, dtype=np.int32).reshape(10, 3), "labels": np.arange(10),
                "example_index": np.arange(10, dtype=np.int32), "example_weights": np.ones(10, np.float32)}
    batches = list(tasks.iterate_batches(features, 4))
    assert len(batches) == 3 == tasks.num_batches(10, 4)
    last = batches[-1]
    assert last["labels"].tolist() == [8, 9, 0, 0] and last["example_weights"].tolist() == [1, 1, 0, 0]
    assert last["example_index"].tolist() == [8, 9, -1, -1] and last["inputs"].shape == (4, 3)
    order = lambda **kw: np.concatenate([b["labels"][b["example_weights"] > 0]  # noqa: E731
                                         for b in tasks.iterate_batches(features, 4, shuffle=True, **kw)])
    assert sorted(order(seed=1, epoch=0)) == list(range(10))
    np.testing.assert_array_equal(order(seed=1, epoch=0), order(seed=1, epoch=0))
    assert not np.array_equal(order(seed=1, epoch=0), order(seed=1, epoch=1))
    assert len(list(tasks.iterate_batches(features, 4, drop_remainder=True))) == 2
    halves = [list(tasks.iterate_batches(features, 4, shuffle=True, seed=3, process_index=p, process_count=2))
              for p in range(2)]
    for whole, first, second in zip(tasks.iterate_batches(features, 4, shuffle=True, seed=3), *halves):
        np.testing.assert_array_equal(whole["labels"], np.concatenate([first["labels"], second["labels"]]))
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        next(tasks.iterate_batches({"a": np.zeros(3), "b": np.zeros(4)}, 2))


@needs_data
def test_ner_first_subtoken_labels_round_trip_to_words(sp):
    examples, _ = tasks.read_conll(os.path.join(DATA, "conll2003/eng.testa"))
    examples = examples[:400]
    labels = tasks.CONLL2003_BIO_LABELS
    f = tasks.token_classification_features(examples, sp, 24, labels)
    assert len(f["inputs"]) > len(examples)  # long sentences were split into several rows
    assert f["label_weights"].sum() == sum(len(e.words) for e in examples)
    # labelled positions are exactly the first sub-token of each word
    previous = np.pad(f["word_ids"], ((0, 0), (1, 0)), constant_values=-1)[:, :-1]
    first = (f["word_ids"] >= 0) & (f["word_ids"] != previous)
    np.testing.assert_array_equal(f["label_weights"] > 0, first)
    assert (f["inputs"][:, 0] == sp.cls_id).all()
    words = tasks.ner_word_predictions(examples, f, f["labels"], labels)
    assert words == [list(e.tags) for e in examples]
    # logits work too, and a wrong prediction on a non-first sub-token changes nothing
    logits = np.eye(len(labels))[f["labels"]]
    logits[(f["label_weights"] == 0) & (f["word_ids"] >= 0)] = np.eye(len(labels))[1]
    assert tasks.ner_word_predictions(examples, f, logits, labels) == words
    scores = tasks.conll_entity_scores([e.tags for e in examples], words)
    assert scores["f1"] == 1.0 and scores["true_chunks"] > 500


def _check_qa_features(examples, features, tokenizer):
    rows_with_answer = 0
    for row in range(len(features["inputs"])):
        example = examples[features["example_index"][row]]
        start, end = features["start_positions"][row], features["end_positions"][row]
        if start == 0:
            assert end == 0
            continue
        rows_with_answer += 1
        offsets = features["token_offsets"][row]
        assert start <= end and offsets[start, 0] >= 0 and offsets[end, 0] >= 0
        answer = example.answers[0]
        span = (offsets[start, 0], offsets[end, 1])
        assert span[0] <= answer.answer_start and answer.answer_start + len(answer.text) <= span[1]
        assert answer.text in example.context[span[0]:span[1]]
        assert features["token_types"][row, start] == 1 and features["inputs"][row, start] != tokenizer.sep_id
    return rows_with_answer


@needs_data
def test_qa_features_windows_offsets_and_postprocessing(sp, wordpiece):
    examples, _ = tasks.read_squad(os.path.join(DATA, "squad/dev-v1.1.json"))
    examples = examples[:120]
    f = tasks.qa_features(examples, sp, max_len=96, doc_stride=32, max_query_len=24)
    n = len(f["inputs"])
    assert n > 2 * len(examples)  # long contexts become several windows
    assert _check_qa_features(examples, f, sp) > len(examples) // 2
    # each context token has its maximum context in exactly one window
    for index in range(5):
        rows = np.flatnonzero(f["example_index"] == index)
        starts = [f["token_offsets"][r][f["token_offsets"][r][:, 0] >= 0] for r in rows]
        counts = {}
        for r, spans in zip(rows, starts):
            for span, best in zip(map(tuple, spans), f["max_context"][r][f["token_offsets"][r][:, 0] >= 0]):
                counts[span] = counts.get(span, 0) + int(best)
        assert set(counts.values()) == {1}
    # logits that point at the target tokens give back the answers of every example whose answer fits a window
    # where its first token has its maximum context (BERT's rule for which window's prediction counts)
    start_logits = np.full((n, 96), -5.0, np.float32)
    end_logits = np.full((n, 96), -5.0, np.float32)
    answered = (f["start_positions"] > 0) & f["max_context"][np.arange(n), f["start_positions"]]
    start_logits[np.flatnonzero(answered), f["start_positions"][answered]] = 5.0
    end_logits[np.flatnonzero(answered), f["end_positions"][answered]] = 5.0
    predictions = tasks.squad_predictions(examples, f, start_logits, end_logits, max_answer_length=1000)
    fits = {examples[i].id for i in f["example_index"][answered]}
    assert all(predictions[e.id] == e.answers[0].text for e in examples if e.id in fits)
    references = {e.id: [a.text for a in e.answers] for e in examples}
    assert tasks.squad_scores(references, predictions)["exact_match"] >= len(fits) / len(examples)
    # n-best over the windows of one example: random logits plus the planted answer
    rows = f["example_index"] == 0
    rng = np.random.default_rng(0)
    start0, end0 = rng.normal(size=(2, rows.sum(), 96)).astype(np.float32)
    target = np.flatnonzero(answered[rows])[0]
    start0[target, f["start_positions"][rows][target]] = 10.0
    end0[target, f["end_positions"][rows][target]] = 10.0
    length = f["end_positions"][rows][target] - f["start_positions"][rows][target] + 1
    features0 = {k: v[rows] for k, v in f.items()}
    nbest = tasks.squad_nbest(examples[:1], features0, start0, end0, n_best=5, max_answer_length=length)
    assert nbest[0][0]["text"] == "Denver Broncos" and nbest[0][0]["score"] == pytest.approx(20.0)
    shorter = tasks.squad_nbest(examples[:1], features0, start0, end0, n_best=5, max_answer_length=length - 1)
    assert "Denver Broncos" not in [c["text"] for c in shorter[0]]
    assert len(nbest[0]) == 5 and sum(c["probability"] for c in nbest[0]) == pytest.approx(1.0)
    assert [c["score"] for c in nbest[0]] == sorted((c["score"] for c in nbest[0]), reverse=True)
    assert all(examples[0].context[c["start"]:c["end"]] == c["text"] != "" for c in nbest[0])
    with pytest.raises(ValueError, match="one per feature row"):
        tasks.squad_predictions(examples, f, start_logits[:-1], end_logits[:-1])
    # the same with a WordPiece (HF) tokenizer's offsets
    f = tasks.qa_features(examples[:40], wordpiece, max_len=128, doc_stride=48, max_query_len=32)
    assert _check_qa_features(examples[:40], f, wordpiece) > 20
