"""Text-to-text fine-tuning: parallel / column readers, the T5 and GPT-2 batch layouts, BLEU / ROUGE, T5's
text-to-text GLUE / SQuAD, config errors; end to end on Multi30k en-de (tiny T5 and GPT-2 from scratch beat
copying the source) and SST-2 as label words, with the evaluate / predict / generate commands reading the runs
back."""
import json
import os

import numpy as np
import pytest

from jaxlm import tasks
from jaxlm.config_defaults import finetune_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MULTI30K = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "multi30k"))
needs_multi30k = pytest.mark.skipif(not os.path.isdir(MULTI30K), reason=f"Multi30k not found at {MULTI30K} "
                                    "(../shared/data/multi30k: train_first5000, val, test_2016_flickr .en/.de)")
TINY_T5 = dict(d_model=64, d_ff=256, d_kv=16, num_heads=4, num_layers=2)
TINY_GPT2 = dict(hidden_size=64, intermediate_size=256, num_heads=4, num_layers=2, max_position_embeddings=64)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    """A 1000-piece sentencepiece model of the Multi30k training pairs (both languages)."""
    if not os.path.isdir(MULTI30K):
        pytest.skip(f"Multi30k not found at {MULTI30K}")
    from jaxlm import data

    texts = []
    for lang in ("en", "de"):
        with open(os.path.join(MULTI30K, f"train_first5000.{lang}"), encoding="utf-8") as f:
            texts += [line.strip() for line in f]
    prefix = str(tmp_path_factory.mktemp("tok") / "multi30k")
    data.train_tokenizer(iter(texts), prefix, 1000)
    return prefix + ".model"


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    from jaxlm.data import Tokenizer

    return Tokenizer(tokenizer_file)


# ----------------------------------------------------------------------------------------------------------------
# Readers

@needs_multi30k
def test_read_parallel_pairs_multi30k_lines():
    examples, stats = tasks.read_parallel(*tasks.parallel_paths(os.path.join(MULTI30K, "val"), "en", "de"))
    assert stats.examples == len(examples) == 1014 and not stats.num_skipped
    assert examples[0].source == "A group of men are loading cotton onto a truck"
    assert examples[0].target == "Eine Gruppe von Männern lädt Baumwolle auf einen Lastwagen"
    assert examples[0].guid == os.path.join(MULTI30K, "val.en") + ":1"
    sources, _ = tasks.read_parallel(os.path.join(MULTI30K, "val.en"))
    assert [e.source for e in sources] == [e.source for e in examples] and sources[0].target is None


def test_read_parallel_errors_name_files_and_lines(tmp_path):
    (tmp_path / "x.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "x.de").write_text("eins\nzwei\n")
    with pytest.raises(tasks.BadInputError, match=r"x\.en has 3 lines but .*x\.de has 2"):
        tasks.read_parallel(tmp_path / "x.en", tmp_path / "x.de")
    (tmp_path / "x.de").write_text("eins\n\ndrei\n\n")  # a blank pair line; trailing blank lines are fine
    with pytest.raises(tasks.BadInputError, match=r"x\.de:2: empty line"):
        tasks.read_parallel(tmp_path / "x.en", tmp_path / "x.de")
    examples, stats = tasks.read_parallel(tmp_path / "x.en", tmp_path / "x.de", skip_bad_lines=True)
    assert [(e.source, e.target) for e in examples] == [("one", "eins"), ("three", "drei")]
    assert stats.skipped == {"empty_text": 1}
    with pytest.raises(FileNotFoundError, match=r"x\.fr"):
        tasks.read_parallel(tmp_path / "x.en", tmp_path / "x.fr")


def test_read_seq2seq_columns(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"article": "A long text.", "summary": "Short."}) + "\n"
                    + json.dumps({"article": "Other text."}) + "\n")
    with pytest.raises(tasks.BadInputError, match=r"pairs\.jsonl:2: missing key\(s\) \['summary'\]"):
        tasks.read_seq2seq(path, "article", "summary")
    examples, _ = tasks.read_seq2seq(path, "article", None)
    assert [(e.source, e.target) for e in examples] == [("A long text.", None), ("Other text.", None)]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("src\ttgt\nHello .\tHallo .\n")
    examples, _ = tasks.read_seq2seq(tsv, "src", "tgt")
    assert (examples[0].source, examples[0].target, examples[0].guid) == ("Hello .", "Hallo .", f"{tsv}:2")


# ----------------------------------------------------------------------------------------------------------------
# Features: the pretraining batch formats

def test_encoder_decoder_features(tokenizer):
    examples = [tasks.Seq2SeqExample("a", "A man rides a bike .", "Ein Mann fährt Rad ."),
                tasks.Seq2SeqExample("b", "word " * 50, "Wort " * 50), tasks.Seq2SeqExample("c", "Hello .")]
    prompt = "translate English to German: {source}"
    f = tasks.seq2seq_features(examples, tokenizer, 40, 12, encoder_decoder=True, prompt=prompt,
                               decoder_start_id=0, pad_id=0)
    eos = tokenizer.eos_id
    source = tokenizer.encode(prompt.replace("{source}", examples[0].source))
    target = tokenizer.encode(examples[0].target)
    assert len(source) < 39 and len(target) < 11
    np.testing.assert_array_equal(f["inputs"][0, :len(source) + 1], source + [eos])
    assert f["segment_ids"][0].sum() == len(source) + 1 and f["inputs"][0, len(source) + 1:].max() == 0
    np.testing.assert_array_equal(f["targets"][0, :len(target) + 1], target + [eos])
    np.testing.assert_array_equal(f["decoder_inputs"][0, :len(target) + 1], [0] + target)  # shifted right
    assert f["weights"][0].sum() == len(target) + 1
    np.testing.assert_array_equal(f["decoder_segment_ids"][0], f["weights"][0])
    # Long texts are cut to S - 1 / T - 1 tokens and still end with EOS.
    assert f["inputs"][1, -1] == eos and f["segment_ids"][1].all()
    assert f["targets"][1, -1] == eos and f["weights"][1].all()
    # No target: nothing to learn, the decoder starts from its start token.
    assert f["weights"][2].sum() == 0 and f["decoder_segment_ids"][2].sum() == 1
    np.testing.assert_array_equal(f["prompt_inputs"], f["inputs"])
    np.testing.assert_array_equal(f["prompt_lengths"], f["segment_ids"].sum(1))


def test_decoder_only_features_weigh_only_the_target(tokenizer):
    examples = [tasks.Seq2SeqExample("a", "A man rides a bike .", "Ein Mann fährt Rad .")]
    f = tasks.seq2seq_features(examples, tokenizer, 16, 12, encoder_decoder=False)
    eos = tokenizer.eos_id
    source, target = tokenizer.encode(examples[0].source), tokenizer.encode(examples[0].target)
    row = source + [eos] + target + [eos]
    assert f["inputs"].shape == (1, 16 + 12 - 1)
    np.testing.assert_array_equal(f["inputs"][0, :len(row) - 1], row[:-1])
    np.testing.assert_array_equal(f["targets"][0, :len(row) - 1], row[1:])
    weighted = f["targets"][0][f["weights"][0] > 0]
    np.testing.assert_array_equal(weighted, target + [eos])  # never trained to write the source
    assert f["segment_ids"][0].sum() == len(row) - 1
    np.testing.assert_array_equal(f["prompt_inputs"][0, :f["prompt_lengths"][0]], source + [eos])


def test_prompt_template_must_name_the_source(tokenizer):
    with pytest.raises(ValueError, match=r"must contain '\{source\}'"):
        tasks.seq2seq_features([], tokenizer, 8, 8, encoder_decoder=True, prompt="translate: ")


# ----------------------------------------------------------------------------------------------------------------
# Metrics

def test_bleu_and_rouge_scores():
    assert tasks.bleu(["Ein Mann fährt Rad ."], ["Ein Mann fährt Rad ."]) == pytest.approx(100.0)
    assert tasks.bleu(["Ein Mann fährt Rad ."], ["Hunde bellen laut"]) == 0.0
    # One 6-word reference, a 4-word hypothesis with 4/4 unigrams .. 1/1 4-gram right: precisions are 1 and
    # BLEU is the brevity penalty exp(1 - 6/4).
    reference, hypothesis = "the cat sat on the mat", "the cat sat on"
    assert tasks.bleu([reference], [hypothesis]) == pytest.approx(100 * np.exp(1 - 6 / 4), rel=1e-6)
    with pytest.raises(ValueError, match="2 hypotheses for 1 references"):
        tasks.bleu(["a"], ["a", "b"])
    pytest.importorskip("rouge_score", reason="ROUGE needs the rouge extra")
    scores = tasks.rouge(["a cat sat on the mat"], ["the cat sat"], ("rouge1", "rouge2", "rougeL"))
    # unigrams: 3 of 3 hypothesis words in the 6-word reference -> P 1, R 1/2; bigrams: 'cat sat' of 2 / of 5;
    # LCS 'the cat sat'? no: 'cat sat' (the reference's 'the' comes later) -> P 2/3, R 2/6.
    f1 = lambda p, r: 100 * 2 * p * r / (p + r)  # noqa: E731
    assert scores["rouge1"] == pytest.approx(f1(1, 1 / 2))
    assert scores["rouge2"] == pytest.approx(f1(1 / 2, 1 / 5))
    assert scores["rougeL"] == pytest.approx(f1(2 / 3, 2 / 6))
    with pytest.raises(ValueError, match="unknown text metric"):
        tasks.text_metrics(["meteor"], ["a"], ["a"])


# ----------------------------------------------------------------------------------------------------------------
# GLUE and SQuAD as text to text (T5's preprocessors and scores)

GLUE_DIR = os.path.join(os.path.dirname(MULTI30K), "glue")


def test_glue_and_squad_as_text_pairs():
    from jaxlm.tasks import text_to_text as t2t

    mnli = tasks.TextExample("m:2", "A cat was sitting.", "The cat sat.", 1)  # file order: entailment = 1
    [pair] = t2t.to_text_pairs("mnli", [mnli])
    assert (pair.source, pair.target) == ("mnli hypothesis: The cat sat. premise: A cat was sitting.", "entailment")
    sts = t2t.to_text_pairs("stsb", [tasks.TextExample("s", "A b.", "C d.", 3.73), tasks.TextExample("t", "x", "y")])
    assert (sts[0].source, sts[0].target, sts[1].target) == ("stsb sentence1: A b. sentence2: C d.", "3.8", None)
    qa = tasks.QAExample("q1", "Who won?", "Denver won.", (tasks.Answer("Denver", 0), tasks.Answer("Denver", 0)))
    [pair] = t2t.to_text_pairs("squad", [qa])
    assert (pair.guid, pair.source, pair.target) == ("q1", "question: Who won? context: Denver won.", "Denver")
    assert pair.example is qa  # scored against every reference answer
    with pytest.raises(ValueError, match="no text-to-text form for format 'conll2003'"):
        t2t.to_text_pairs("conll2003", [])


@pytest.mark.skipif(not os.path.isdir(GLUE_DIR), reason=f"GLUE files not found at {GLUE_DIR}")
def test_glue_text_scores_on_real_rows():
    from jaxlm.tasks import text_to_text as t2t

    examples, _ = tasks.read_glue(os.path.join(GLUE_DIR, "SST-2", "dev.tsv"), "sst2")
    pairs = t2t.to_text_pairs("sst2", examples)
    assert pairs[0].source == "sst2 sentence: " + examples[0].text_a
    assert {p.target for p in pairs} == {"negative", "positive"}
    perfect = [p.target for p in pairs]
    assert t2t.scores("sst2", examples, perfect) == {"accuracy": 1.0}
    # a word that is no label is wrong; here: the first 100 answers are 'neutral'
    assert t2t.scores("sst2", examples, ["neutral"] * 100 + perfect[100:])["accuracy"] == \
        pytest.approx(1 - 100 / len(examples))
    examples, _ = tasks.read_glue(os.path.join(GLUE_DIR, "STS-B", "dev.tsv"), "stsb")
    pairs = t2t.to_text_pairs("stsb", examples)
    result = t2t.scores("stsb", examples, [p.target for p in pairs])  # rounded to 0.2: nearly, not exactly, 1
    assert 0.99 < result["pearson"] < 1.0 and 0.99 < result["spearman"] < 1.0
    assert t2t.scores("stsb", examples, ["n/a"] * len(examples))["pearson"] == 0.0  # all -1: no correlation


# ----------------------------------------------------------------------------------------------------------------
# Config errors

def _seq2seq_config(**data):
    config = finetune_config()
    config.task = "seq2seq"
    config.data.format = "parallel"
    config.data.source_field, config.data.target_field = "en", "de"
    for key, value in data.items():
        config.data[key] = value
    return config


def test_seq2seq_config_errors():
    from jaxlm.tasks import get_task
    from jaxlm.tasks.finetuning import task_spec

    spec = task_spec(_seq2seq_config(), "t5")
    assert (spec.task, spec.encoder_decoder, spec.text_metrics, spec.row_len) == ("seq2seq", True, ("bleu",), 128)
    spec = task_spec(_seq2seq_config(max_target_len=32), "gpt2")
    assert (spec.encoder_decoder, spec.row_len) == (False, 128 + 32 - 1)
    with pytest.raises(ValueError, match=r"needs a model that writes text .* a 'bert' model"):
        task_spec(_seq2seq_config(), "bert")
    with pytest.raises(ValueError, match=r"config.data.target_field is empty"):
        task_spec(_seq2seq_config(target_field=""), "t5")
    with pytest.raises(ValueError, match=r"config.data.metrics=\('sacrebleu',\)"):
        task_spec(_seq2seq_config(metrics=("sacrebleu",)), "t5")
    config = _seq2seq_config()
    config.task = "classification"
    with pytest.raises(ValueError, match=r"is a seq2seq format \(set --config.task=seq2seq\)"):
        task_spec(config, "t5")
    config = _seq2seq_config()
    config.data.format = "conll2003"
    with pytest.raises(ValueError, match=r"config.data.format='conll2003', which is a token_classification format "
                                         r"\(set --config.task=token_classification\)"):
        task_spec(config, "t5")
    config.data.format = "mrpc"  # T5's text-to-text MRPC: GLUE's metrics on the generated words
    spec = task_spec(config, "t5")
    best = get_task("seq2seq").best_metric(spec)
    assert (spec.task, spec.text_metrics, best) == ("seq2seq", ("accuracy", "f1"), "f1")


def test_decoder_only_rows_must_fit_the_position_table():
    from jaxlm.models import get_model_config
    from jaxlm.tasks import get_task
    from jaxlm.tasks.finetuning import task_spec

    spec = task_spec(_seq2seq_config(max_len=40, max_target_len=30), "gpt2")
    model_config = get_model_config("gpt2", None, **TINY_GPT2, vocab_size=1000)

    class Tok:
        vocab_size = 1000

    with pytest.raises(ValueError, match=r"max_len \+ max_target_len - 1 = 69 .* exceeds the 64 positions"):
        get_task(spec.task).check_fits(spec, model_config, Tok())


# ----------------------------------------------------------------------------------------------------------------
# End to end: Multi30k en-de from scratch, then evaluate / predict / generate on the run

def _finetune(family, workdir, tokenizer_file, **overrides):
    from jaxlm import finetune

    config = finetune_config()
    with config.unlocked():
        config.task = "seq2seq"
        config.tokenizer = tokenizer_file
        config.model.family, config.model.size = family, ""
        config.model.update(TINY_T5 if family == "t5" else TINY_GPT2)
        config.data.update(format="parallel", train_file=os.path.join(MULTI30K, "train_first5000"),
                           eval_file=os.path.join(MULTI30K, "val"), source_field="en", target_field="de",
                           max_len=32, max_target_len=32, eval_limit=64)
        config.optimizer.update(learning_rate=3e-3, weight_decay=0.0)
        config.train.update(batch_size=32, eval_batch_size=32, num_epochs=2.0, log_every=20, progress_bar=False)
        for key, value in overrides.items():
            config.train[key] = value
    return finetune.run(config, str(workdir))


def _copy_bleu(prefix, limit):
    examples, _ = tasks.read_parallel(*tasks.parallel_paths(prefix, "en", "de"))
    examples = examples[:limit]
    return tasks.bleu([e.target for e in examples], [e.source for e in examples])


def _train_losses(workdir):
    from jaxlm.train.metrics import read_metrics

    return [r["loss"] for r in read_metrics(str(workdir)) if r["split"] == "train"]


@pytest.mark.slow
@needs_multi30k
def test_t5_translation_beats_copying_the_source(tokenizer_file, tmp_path, capsys):
    from jaxlm import evaluate, predict

    workdir = tmp_path / "t5"
    summary = _finetune("t5", workdir, tokenizer_file)
    losses = _train_losses(workdir)
    assert losses[-1] < losses[0] - 2.0, losses
    copy_val = _copy_bleu(os.path.join(MULTI30K, "val"), 64)
    assert summary["final_eval"]["bleu"] > copy_val + 1.0, (summary["final_eval"], copy_val)

    # The held-out test set, scored by the evaluate command's function: the run generalises past its dev set.
    test_prefix = os.path.join(MULTI30K, "test_2016_flickr")
    result = evaluate.evaluate(str(workdir), test_prefix, limit=64)
    assert result["bleu"] > _copy_bleu(test_prefix, 64) + 1.0, result
    with open(workdir / "eval_test_2016_flickr.json") as f:
        assert json.load(f)["bleu"] == result["bleu"]

    # predict (the run's latest step) and the generate command (the same checkpoint, greedy) write the same text.
    source = "A man in a blue shirt is standing on a ladder."
    [record] = predict.predict(str(workdir), [{"source": source}], step=summary["final_step"])
    assert record["source"] == source and record["prediction"].strip()
    from jaxlm.generate import main as generate_main

    capsys.readouterr()
    assert generate_main([f"--checkpoint={workdir}", f"--prompt={source}", "--strategy=greedy",
                          "--max_new_tokens=32"]) == 0
    printed = capsys.readouterr().out
    assert printed.strip().splitlines()[-1].strip() == record["prediction"].strip(), printed


@pytest.mark.slow
@needs_multi30k
def test_gpt2_writes_the_translation_after_the_prompt(tokenizer_file, tmp_path):
    from jaxlm import predict

    workdir = tmp_path / "gpt2"
    summary = _finetune("gpt2", workdir, tokenizer_file)
    losses = _train_losses(workdir)
    assert losses[-1] < losses[0] - 2.0, losses
    assert summary["final_eval"]["bleu"] > _copy_bleu(os.path.join(MULTI30K, "val"), 64) + 1.0, summary
    [record] = predict.predict(str(workdir), [{"source": "Two dogs play in the snow."}])
    assert record["prediction"].strip() and "Two dogs play" not in record["prediction"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(GLUE_DIR), reason=f"GLUE files not found at {GLUE_DIR}")
def test_t5_writes_sst2_label_words(tokenizer_file, tmp_path):
    """SST-2 in T5's text-to-text form through t5_glue.py, from scratch, counted in steps as T5 does: the decoder
    learns to write label words only, the dev accuracy is scored on those words, and predict (which reads the
    task's own fields) writes the same words."""
    from jaxlm import finetune, predict
    from jaxlm.config_defaults import load_config_file
    from jaxlm.tasks import text_to_text
    from jaxlm.train.metrics import read_metrics

    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "t5_glue.py") + ":sst2")
    with config.unlocked():
        config.tokenizer = tokenizer_file
        config.model.size = ""
        config.model.update(TINY_T5)
        config.data.update(max_len=48, train_limit=3000, eval_limit=128)
        config.optimizer.update(name="adamw", learning_rate=3e-3, schedule="constant")
        config.train.update(batch_size=32, eval_batch_size=64, num_steps=60, eval_every_steps=30, log_every=30,
                            progress_bar=False)
    summary = finetune.run(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records if r["split"] == "eval"] == [30, 60]
    train_losses = [r["loss"] for r in records if r["split"] == "train"]
    assert train_losses[-1] < train_losses[0] / 4, train_losses

    examples, _ = tasks.read_glue(os.path.join(GLUE_DIR, "SST-2", "dev.tsv"), "sst2")
    examples = examples[:128]
    predictions = predict.predict(str(tmp_path), [{"text": e.text_a} for e in examples], step=60)
    words = [p["prediction"] for p in predictions]
    assert set(words) <= set(text_to_text.T5_LABEL_WORDS["sst2"]), set(words)
    accuracy = np.mean([w == text_to_text.T5_LABEL_WORDS["sst2"][e.label] for w, e in zip(words, examples)])
    assert summary["final_eval"]["accuracy"] == pytest.approx(accuracy)
