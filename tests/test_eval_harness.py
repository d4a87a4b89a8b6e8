"""jaxlm in lm-evaluation-harness (jaxlm.eval_harness): on local tasks defined here (a multiple-choice task, a
generation task with a stop sequence, a rolling log-likelihood task over local JSON files), jaxlm's model and
lm-eval's own `hf` model give the same per-request log-likelihoods, the same greedy generations and the same
metrics, for a tiny random GPT-2 and a tiny random T5 built with transformers and imported into jaxlm.
Nothing is downloaded."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="lm-eval's hf model is the reference")
transformers = pytest.importorskip("transformers", reason="lm-eval's hf model is the reference")
lm_eval = pytest.importorskip("lm_eval", reason="the adapter is for lm-evaluation-harness (pip install 'jaxlm[eval]')")

from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from jaxlm.convert.__main__ import main as convert_main  # noqa: E402
from jaxlm.eval_harness import JaxlmLM, bucket  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ("the quick brown fox jumps over the lazy dog . a lazy dog sleeps ; the fox jumps again ! quick foxes , "
         "lazy dogs and brown jumps . over the hill the dog runs and the fox sleeps .").split()
POSITIONS = 64
TASKS = ("jaxlm_mc", "jaxlm_gen", "jaxlm_rolling")


def sentences(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12)))) for _ in range(n)]


def write_tasks(directory):
    """Three lm-eval task YAMLs over local JSONL files (the formats real task definitions use)."""
    rng = np.random.default_rng(0)
    mc = [{"question": q, "choices": [" " + c for c in sentences(3, i)], "answer": int(rng.integers(0, 3))}
          for i, q in enumerate(sentences(12, 1))]
    gen = [{"prompt": p, "target": "the"} for p in sentences(10, 2)]
    rolling = [{"text": " ".join(sentences(30, 10 + i))} for i in range(4)]  # several 64-token windows each
    files = {"mc": mc, "gen": gen, "rolling": rolling}
    for name, rows in files.items():
        with open(directory / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {path}\n"
    (directory / "mc.yaml").write_text(
        "task: jaxlm_mc\n" + common.format(path=directory / "mc.jsonl")
        + "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    (directory / "gen.yaml").write_text(
        "task: jaxlm_gen\n" + common.format(path=directory / "gen.jsonl")
        + "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
        "generation_kwargs:\n  until: [' the', '!']\n  max_gen_toks: 12\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    (directory / "rolling.yaml").write_text(
        "task: jaxlm_rolling\n" + common.format(path=directory / "rolling.jsonl")
        + "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")
    return str(directory)


def gpt2_dir(directory):
    from tokenizers import ByteLevelBPETokenizer

    directory.mkdir()
    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator([" ".join(WORDS)] * 20, vocab_size=320, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tok.save_model(str(directory))
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=320, n_embd=32, n_layer=2, n_head=4, n_positions=POSITIONS,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # a sharper distribution than the init's, so that argmaxes are not near-ties
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    return str(directory)


def t5_dir(directory, tmp):
    """A tiny random T5 with a spiece.model trained as Google's are (sentencepiece's defaults, which fold a
    leading space into the first piece; pad 0, EOS 1, UNK 2, no BOS)."""
    import sentencepiece as spm

    prefix = tmp / "sp"
    spm.SentencePieceTrainer.train(sentence_iterator=iter([" ".join(sentences(20, i)) for i in range(40)]),
                                   model_prefix=str(prefix), vocab_size=50, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2)
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, relative_attention_max_distance=16,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                                   feed_forward_proj="relu", tie_word_embeddings=True)
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(directory)
    shutil.copy(str(prefix) + ".model", directory / "spiece.model")
    return str(directory)


def evaluate(model, include_path):
    return lm_eval.simple_evaluate(model=model, tasks=list(TASKS), task_manager=TaskManager(include_path=include_path),
                                   log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=0,
                                   torch_random_seed=0)


def responses(result, task):
    return [s["resps"] for s in sorted(result["samples"][task], key=lambda s: s["doc_id"])]


def assert_same(theirs, ours, *, generations: bool = True):
    """Per-request log-likelihoods within 1e-4, identical generations, equal metrics (generation metrics only
    with `generations`)."""
    for task in ("jaxlm_mc", "jaxlm_rolling"):
        a, b = responses(theirs, task), responses(ours, task)
        flat_a = np.array([x[0] if isinstance(x, (list, tuple)) else x for r in a for x in r], float).ravel()
        flat_b = np.array([x[0] if isinstance(x, (list, tuple)) else x for r in b for x in r], float).ravel()
        np.testing.assert_allclose(flat_b, flat_a, rtol=1e-4, atol=1e-4, err_msg=task)
    if generations:
        assert responses(ours, "jaxlm_gen") == responses(theirs, "jaxlm_gen")
    for task in TASKS if generations else ("jaxlm_mc", "jaxlm_rolling"):
        for metric, value in theirs["results"][task].items():
            if metric.endswith(",none") and isinstance(value, float):
                assert ours["results"][task][metric] == pytest.approx(value, rel=1e-4), (task, metric)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    return write_tasks(tmp_path_factory.mktemp("tasks"))


def test_gpt2_through_lm_eval_equals_lm_evals_hf_model(tasks_dir, tmp_path):
    model_dir = gpt2_dir(tmp_path / "gpt2")
    workdir = str(tmp_path / "run")
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", workdir]) == 0
    theirs = evaluate(HFLM(pretrained=model_dir, backend="causal", batch_size=8, max_length=POSITIONS,
                           device="cpu", dtype="float32"), tasks_dir)
    ours = evaluate(JaxlmLM(checkpoint=workdir, batch_size=8), tasks_dir)
    assert_same(theirs, ours)
    # The stop sequences cut some generations: the comparison above is not between untouched 12-token texts.
    gens = [r[0][0] for r in responses(ours, "jaxlm_gen")]
    assert any(len(g.split()) < 6 for g in gens), gens
    # Every rolling document spans several 64-token windows, so the windows are stitched as lm-eval's.
    from lm_eval.utils import get_rolling_token_windows
    model = JaxlmLM(checkpoint=workdir)
    text = json.loads(open(os.path.join(tasks_dir, "rolling.jsonl")).readline())["text"]
    assert len(list(get_rolling_token_windows(model.tok_encode(text), 0, POSITIONS, 1))) >= 2


@pytest.mark.slow
def test_t5_through_lm_eval_equals_lm_evals_seq2seq_hf_model(tasks_dir, tmp_path):
    model_dir = t5_dir(tmp_path / "t5", tmp_path)
    workdir = str(tmp_path / "run")
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", workdir]) == 0
    theirs = evaluate(HFLM(pretrained=model_dir, backend="seq2seq", batch_size=8, max_length=POSITIONS,
                           device="cpu", dtype="float32"), tasks_dir)
    ours = evaluate(JaxlmLM(checkpoint=workdir, batch_size=8, max_length=POSITIONS), tasks_dir)
    assert_same(theirs, ours, generations=False)
    # lm-eval's hf seq2seq path lets the decoder run to (the batch's padded context width + max_gen_toks) tokens
    # (generate(max_length=...) counts decoder tokens there), so its texts depend on the batch; jaxlm generates
    # max_gen_toks, as the task asks. The reference is transformers' greedy T5 with max_new_tokens=max_gen_toks,
    # cut by lm-eval's own post-processing.
    from lm_eval.models.utils import postprocess_generated_text

    hf = HFLM(pretrained=model_dir, backend="seq2seq", batch_size=8, max_length=POSITIONS, device="cpu",
              dtype="float32")
    prompts = [json.loads(line)["prompt"] for line in open(os.path.join(tasks_dir, "gen.jsonl"))]
    expected = []
    for prompt in prompts:
        ids = hf.model.generate(torch.tensor([hf.tok_encode(prompt)]), max_new_tokens=12, do_sample=False)
        expected.append(postprocess_generated_text(hf.tok_decode(ids[0, 1:].tolist()), [" the", "!", "</s>"],
                                                   None))
    assert [r[0][0] for r in responses(ours, "jaxlm_gen")] == expected
    assert any(expected) and len(set(expected)) > 1


def test_a_masked_lm_is_refused_naming_the_family(tmp_path):
    config = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    model_dir = tmp_path / "bert"
    transformers.BertForMaskedLM(config).save_pretrained(model_dir)
    (model_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                                   + [f"w{i}" for i in range(35)]))
    workdir = str(tmp_path / "run")
    assert convert_main(["from-hf", "--model_dir", str(model_dir), "--workdir", workdir]) == 0
    with pytest.raises(ValueError, match="'bert' model is a masked LM"):
        JaxlmLM(checkpoint=workdir)


def test_bucketed_widths_and_the_command_line(tasks_dir, tmp_path):
    assert [bucket(n, 64) for n in (1, 16, 17, 40, 64, 90)] == [16, 16, 32, 64, 64, 64]
    model_dir = gpt2_dir(tmp_path / "gpt2")
    workdir = str(tmp_path / "run")
    assert convert_main(["from-hf", "--model_dir", model_dir, "--workdir", workdir]) == 0
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "jaxlm.eval_harness", "run", "--model", "jaxlm", "--model_args",
                           f"checkpoint={workdir}", "--batch_size", "8", "--tasks", "jaxlm_mc",
                           "--include_path", tasks_dir,
                           "--output_path", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "jaxlm_mc" in proc.stdout and "acc" in proc.stdout
