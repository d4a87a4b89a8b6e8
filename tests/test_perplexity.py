"""Sliding-window perplexity (`python -m jaxlm.evaluate --checkpoint`): the numbers Hugging Face's perplexity guide
and lm-evaluation-harness's loglikelihood_rolling compute with transformers, the normalisations, the errors.

The model is a tiny random GPT-2 (32 positions) with a byte-level BPE trained here, saved and imported with
`jaxlm.convert from-hf`; nothing is downloaded.
"""
import json
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="the reference numbers come from transformers' PyTorch GPT-2")
transformers = pytest.importorskip("transformers", reason="the reference numbers come from transformers")
pytest.importorskip("tokenizers", reason="the test tokenizer is a byte-level BPE trained with tokenizers")

from jaxlm import evaluate  # noqa: E402
from jaxlm.convert.__main__ import main as convert_main  # noqa: E402
from jaxlm.models import get_model_config  # noqa: E402
from jaxlm.train import perplexity as ppl  # noqa: E402
from jaxlm.workdir import Run, open_run  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 300
POSITIONS = 32
CORPUS = ["the quick brown fox jumps over the lazy dog.", "a lazy dog sleeps; the fox jumps again!",
          "quick foxes, lazy dogs and brown jumps.", "Über den Fuchs: naïve façades, 3 dogs & 2 foxes."]
TEXT = ("The quick brown fox jumps over the lazy dog. A lazy dog sleeps; the fox jumps again! Quick foxes, lazy "
        "dogs and brown jumps: the dog sleeps, the fox jumps over it, and again. Über den Fuchs, naïve façades.\n")
SHORT = "the lazy dog sleeps again."


def write_byte_level_bpe(directory):
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(CORPUS * 5, vocab_size=VOCAB, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok.save_model(directory)  # vocab.json + merges.txt; <|endoftext|> is id 0
    assert tok.get_vocab_size() <= VOCAB


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """(transformers model, opened jaxlm run, its workdir) of one tiny random GPT-2."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=POSITIONS,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # noise on every parameter: a sharper, less uniform distribution than the init's
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    model_dir, workdir = tmp_path_factory.mktemp("hf_gpt2"), tmp_path_factory.mktemp("runs") / "gpt2"
    model.save_pretrained(model_dir)
    write_byte_level_bpe(str(model_dir))
    assert convert_main(["from-hf", "--model_dir", str(model_dir), "--workdir", str(workdir)]) == 0
    return model, open_run(str(workdir)), str(workdir)


def token_log_probs(model, rows):
    """float64 log p(row[i+1] | row[:i+1]) of equal-length rows [R, T] -> [R, T-1] (the model reads row[:-1])."""
    rows = torch.tensor(rows)
    with torch.no_grad():
        logits = model(rows[:, :-1]).logits.double()
    return torch.gather(torch.log_softmax(logits, -1), -1, rows[:, 1:, None])[..., 0].numpy()


def hf_guide(model, ids, max_length, stride):
    """The guide's loop on `ids`, each window's NLL summed over its scored labels (reduction='sum'); also the
    guide's own figure, the window's mean loss times num_valid_tokens - 1. -> (nll, tokens, guide's nll)."""
    input_all = torch.tensor([ids])
    seq_len = len(ids)
    nll, tokens, guide, prev_end = 0.0, 0, 0.0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = input_all[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            out = model(input_ids, labels=target_ids)
        labels = target_ids[:, 1:]
        log_p = torch.log_softmax(out.logits[:, :-1].double(), -1)
        valid = labels != -100
        nll -= torch.gather(log_p, -1, labels.clamp(min=0)[..., None])[..., 0][valid].sum().item()
        tokens += int(valid.sum())
        guide += out.loss.item() * (int((target_ids != -100).sum()) - 1)
        prev_end = end
        if end == seq_len:
            break
    return nll, tokens, guide


def lm_eval_rolling_windows(token_list, prefix_token, max_seq_len, context_len):
    """lm-evaluation-harness's get_rolling_token_windows followed by make_disjoint_window, as lm_eval/utils.py
    defines them: (context, continuation) token lists."""
    pred_len = max_seq_len - context_len + 1
    first = min(max_seq_len, len(token_list))
    windows = [([prefix_token] + token_list[:first - 1], token_list[:first])]
    predicted = first
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        windows.append((token_list[window_end - max_seq_len - 1:window_end - 1],
                        token_list[window_end - window_pred_len:window_end]))
        predicted += window_pred_len
    return [(context[:len(context) - (len(continuation) - 1)], continuation) for context, continuation in windows]


def lm_eval_nll(model, ids, prefix, max_length, context_len=1):
    """-sum of loglikelihood_rolling's window log-likelihoods, scored as HFLM._loglikelihood_tokens does: the
    model reads (context + continuation)[-(max_length + 1):][:-1], the last len(continuation) logits count."""
    total = 0.0
    for context, continuation in lm_eval_rolling_windows(ids, prefix, max_length, context_len):
        whole = (context + continuation)[-(max_length + 1):]
        total -= token_log_probs(model, [whole])[0, -len(continuation):].sum()
    return total


def close(a, b, rtol=1e-4):
    return abs(a - b) <= rtol * abs(b)


# ----------------------------------------------------------------------------------------------------------
# The window layouts alone

def test_hf_windows_score_every_token_but_the_first_once_and_lm_eval_windows_match_the_harness():
    # hf: stride < max_length scores tokens 1..n-1 once; disjoint windows also drop each window's first token
    for n, length, stride in [(10, 4, 2), (10, 4, 1), (11, 4, 3), (3, 4, 2), (100, 32, 16), (100, 32, 32)]:
        plan = ppl.plan_windows([n], length, stride, "hf")
        scored = [t for w in plan for t in range(w.score_from, w.end)]
        assert all(w.end - w.begin <= length for w in plan)
        if stride < length or n <= length:
            assert scored == list(range(1, n)), (n, length, stride)
        else:
            assert scored == [t for t in range(1, n) if t % length], (n, length, stride)
    assert [(w.begin, w.end, w.score_from) for w in ppl.plan_windows([10], 4, 2, "hf")] == [
        (0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    # lm_eval: the same (input, target) tokens as the harness's windows, for every context_len
    for n in (1, 5, 31, 32, 33, 100):
        tokens = list(range(10, 10 + n))
        for length in (1, 4, 32):
            for context_len in sorted({1, 2, length}):
                if context_len > length:
                    continue
                stride = length - context_len + 1
                seq = ppl.sequences([tokens], "lm_eval", prefix_id=7)[0]
                plan = ppl.plan_windows([len(seq)], length, stride, "lm_eval")
                rows = ppl.window_rows([seq], plan, length)
                expected = lm_eval_rolling_windows(tokens, 7, length, context_len)
                assert len(plan) == len(expected)
                for r, (context, continuation) in enumerate(expected):
                    whole = (context + continuation)[-(length + 1):]
                    real = len(whole) - 1
                    assert rows["inputs"][r, :real].tolist() == whole[:-1]
                    assert rows["targets"][r, :real].tolist() == whole[1:]
                    weights = rows["weights"][r]
                    assert weights[:real].tolist() == [0.0] * (real - len(continuation)) + [1.0] * len(continuation)
                    assert not weights[real:].any()


# ----------------------------------------------------------------------------------------------------------
# Against transformers

def test_sliding_window_nll_equals_the_hf_guide_loop_with_transformers(gpt2):
    model, run, _ = gpt2
    ids = run.tokenizer.encode(TEXT)
    assert 90 <= len(ids) <= 160, len(ids)
    for stride in (16, 32, 7):
        got = evaluate.perplexity(run, [TEXT], max_length=POSITIONS, stride=stride)
        nll, tokens, guide = hf_guide(model, ids, POSITIONS, stride)
        assert got["tokens"] == tokens and close(got["nll"], nll), (stride, got, nll, tokens)
        assert close(got["token_perplexity"], math.exp(nll / tokens))
        if stride == POSITIONS:  # disjoint windows: the guide's own mean x (valid - 1) is the same sum
            assert close(got["nll"], guide) and tokens == len(ids) - math.ceil(len(ids) / POSITIONS)
        else:  # overlapping windows score all trg_len tokens but the guide weighs their mean by trg_len - 1
            assert tokens == len(ids) - 1 and not close(guide, nll, 1e-3)
    # the default: the model's positions, disjoint windows; the batch size changes nothing
    default = evaluate.perplexity(run, [TEXT], batch_size=16)
    assert (default["max_length"], default["stride"]) == (POSITIONS, POSITIONS)
    assert close(default["nll"], hf_guide(model, ids, POSITIONS, POSITIONS)[0])


def test_stride_one_scores_each_token_once_with_the_full_window_before_it(gpt2):
    """stride=1: token j is scored from the max_length - 1 tokens before it (all of them while j < max_length)."""
    model, run, _ = gpt2
    ids = run.tokenizer.encode(TEXT)
    first = token_log_probs(model, [ids[:POSITIONS]])[0]  # tokens 1..31, from everything before them
    later = token_log_probs(model, [ids[j - POSITIONS + 1:j + 1] for j in range(POSITIONS, len(ids))])[:, -1]
    got = evaluate.perplexity(run, [TEXT], max_length=POSITIONS, stride=1)
    assert got["tokens"] == len(ids) - 1 and got["windows"] == len(ids) - POSITIONS + 1
    assert close(got["nll"], -(first.sum() + later.sum()))


def test_a_text_that_fits_one_window_is_the_no_window_computation_for_every_stride(gpt2):
    model, run, _ = gpt2
    ids = run.tokenizer.encode(SHORT)
    assert len(ids) < POSITIONS
    direct = -token_log_probs(model, [ids])[0].sum()
    for stride in (1, 5, 16, 32):
        got = evaluate.perplexity(run, [SHORT], max_length=POSITIONS, stride=stride)
        assert got["tokens"] == len(ids) - 1 and got["windows"] == 1 and close(got["nll"], direct), stride


def test_lm_eval_windows_equal_loglikelihood_rolling_with_transformers(gpt2):
    """EOS prefix, every token scored: the harness's rolling log-likelihood, summed over documents."""
    model, run, _ = gpt2
    docs = [TEXT, SHORT]
    got = evaluate.perplexity(run, docs, windows="lm_eval")  # lm-eval's max_length: the model's positions
    ids = [run.tokenizer.encode(d) for d in docs]
    expected = sum(lm_eval_nll(model, i, 0, POSITIONS) for i in ids)
    assert got["tokens"] == sum(map(len, ids)) and close(got["nll"], expected)
    # lm-eval's context_len > 1 is a stride below max_length
    got = evaluate.perplexity(run, [TEXT], max_length=16, stride=5, windows="lm_eval")
    assert close(got["nll"], lm_eval_nll(model, ids[0], 0, 16, context_len=12))


# ----------------------------------------------------------------------------------------------------------
# Normalisation, documents and files

def test_word_and_byte_normalisation_by_hand(gpt2, tmp_path):
    _, run, _ = gpt2
    docs = ["Hello wörld  foo\n", "a b"]  # lm-eval's words: re.split(r'\s+'): 4 (the trailing '' counts) + 2
    assert [ppl.count_words(d) for d in docs] == [4, 2]
    assert [ppl.count_bytes(d) for d in docs] == [18, 3]  # ö is two UTF-8 bytes
    got = evaluate.perplexity(run, docs, max_length=POSITIONS)
    nll, tokens = got["nll"], got["tokens"]
    assert (got["words"], got["bytes"], got["documents"]) == (6, 21, 2)
    assert tokens == sum(len(run.tokenizer.encode(d)) - 1 for d in docs)  # each document's first token unscored
    assert got["token_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-12)
    assert got["word_perplexity"] == pytest.approx(math.exp(nll / 6), rel=1e-12)
    assert got["byte_perplexity"] == pytest.approx(math.exp(nll / 21), rel=1e-12)
    assert got["bits_per_byte"] == pytest.approx(nll / 21 / math.log(2), rel=1e-12)
    # documents are windowed separately: the sum of each alone
    alone = [evaluate.perplexity(run, [d], max_length=POSITIONS)["nll"] for d in docs]
    assert close(nll, sum(alone), 1e-6)

    # files: each read whole (newlines kept), or one document per non-blank line
    (tmp_path / "a.txt").write_text("Hello wörld  foo\n", encoding="utf-8")
    (tmp_path / "b.txt").write_text("a b\n\nthe dog\n", encoding="utf-8")
    files = evaluate.expand_text_files(f"{tmp_path}/a.txt,{tmp_path}/*.txt")
    assert files == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]
    assert evaluate.read_documents(files)[0] == ["Hello wörld  foo\n", "a b\n\nthe dog\n"]
    texts, sources = evaluate.read_documents(files, document_per_line=True)
    assert texts == ["Hello wörld  foo", "a b", "the dog"]
    assert sources == [f"{files[0]}:1", f"{files[1]}:1", f"{files[1]}:3"]


def test_a_prepared_tfds_split_is_read_through_jaxlm_data(gpt2, tmp_path):
    from jaxlm.data import prepare_text_files

    _, run, _ = gpt2
    for i, text in enumerate(CORPUS):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    prepared = prepare_text_files(str(tmp_path / "doc*.txt"), str(tmp_path / "tfds"), name="ppl")
    texts = []
    for split in ("train", "validation"):
        split_texts, sources = evaluate.read_tfds_documents(prepared.name, split, "text", str(tmp_path / "tfds"))
        assert sources[0] == f"tfds:{prepared.name}[{split}][0]"
        texts += split_texts
    assert sorted(texts) == sorted(CORPUS)
    got = evaluate.perplexity(run, split_texts, max_length=POSITIONS)
    assert got["documents"] == len(split_texts) and got["tokens"] > 0


# ----------------------------------------------------------------------------------------------------------
# Bad input

def test_bad_input_is_a_named_error(gpt2, tmp_path):
    _, run, _ = gpt2
    with pytest.raises(ValueError, match=r"--stride=40 is larger than --max_length=32"):
        evaluate.perplexity(run, [TEXT], max_length=32, stride=40)
    with pytest.raises(ValueError, match=r"--max_length=64 is longer than the model's 32 positions"):
        evaluate.perplexity(run, [TEXT], max_length=64)
    with pytest.raises(ValueError, match="--windows must be one of"):
        evaluate.perplexity(run, [TEXT], windows="rolling")
    with pytest.raises(ValueError, match=r"texts\[1\]: empty document"):
        evaluate.perplexity(run, [TEXT, " \n"])
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"{empty}: empty file"):
        evaluate.read_documents([str(empty)])
    with pytest.raises(FileNotFoundError, match="no file matches"):
        evaluate.expand_text_files(str(tmp_path / "missing*.txt"))
    # not a causal LM: a BERT run and a T5 model, each named with its family
    bert_dir, bert_run = tmp_path / "hf_bert", tmp_path / "bert_run"
    torch.manual_seed(0)
    transformers.BertForPreTraining(transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32)).save_pretrained(bert_dir)
    (bert_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dog"]))
    assert convert_main(["from-hf", "--model_dir", str(bert_dir), "--workdir", str(bert_run)]) == 0
    with pytest.raises(ValueError, match=r"model family 'bert' is an encoder .*perplexity needs a causal LM"):
        evaluate.perplexity(str(bert_run), ["the dog"])
    t5 = Run(path="t5-run", step=0, saved={}, model_config=get_model_config("t5", None, vocab_size=64), params=None,
             tokenizer=None, tokenizer_path="", mesh=None, rules=None)
    with pytest.raises(ValueError, match=r"model family 't5' is an encoder-decoder"):
        evaluate.perplexity(t5, ["the dog"])


# ----------------------------------------------------------------------------------------------------------
# The command line

def _command(*args):
    return subprocess.run([sys.executable, "-m", "jaxlm.evaluate", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


def test_the_command_writes_the_json_and_refuses_bad_usage(gpt2, tmp_path):
    _, run, workdir = gpt2
    (tmp_path / "held_out.txt").write_text(TEXT, encoding="utf-8")
    out = _command("--checkpoint", workdir, "--text_files", str(tmp_path / "held_*.txt"), "--max_length", "32",
                   "--stride", "16")
    assert out.returncode == 0, out.stderr
    written = json.load(open(os.path.join(workdir, "perplexity_held_out.json")))
    printed = json.loads(out.stdout[out.stdout.index("{"):])
    assert written == printed and written["files"] == [str(tmp_path / "held_out.txt")]
    api = evaluate.perplexity(run, [TEXT], max_length=32, stride=16)
    assert written["tokens"] == api["tokens"] and close(written["nll"], api["nll"], 1e-6)
    for key in ("token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert close(written[key], api[key], 1e-6), key

    (tmp_path / "empty.txt").write_text("")
    out = _command("--checkpoint", workdir, "--text_files", str(tmp_path / "empty.txt"))
    assert out.returncode == 2 and f"{tmp_path / 'empty.txt'}: empty file" in out.stderr
    out = _command("--checkpoint", workdir, "--workdir", workdir, "--text_files", str(tmp_path / "held_out.txt"))
    assert out.returncode == 1 and "not both" in out.stderr
    out = _command("--workdir", workdir, "--stride", "4")
    assert out.returncode == 1 and "--stride: perplexity flags, for --checkpoint" in out.stderr
