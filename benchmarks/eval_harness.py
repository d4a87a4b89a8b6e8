"""lm-evaluation-harness throughput of jaxlm's model (jaxlm.eval_harness.JaxlmLM) against lm-eval's own `hf`
model, on the same local tasks, the same GPT-2 weights and the same batch size.

    .venv/bin/python benchmarks/eval_harness.py             # GPT-2 256 wide x 4 layers, batch 16 (~3 min, 2 cores)
    .venv/bin/python benchmarks/eval_harness.py --rounds 1 --mc_docs 50 --gen_prompts 16 --rolling_docs 4
    .venv/bin/python benchmarks/eval_harness.py --n_embd 512 --n_layer 8 --n_head 8 --positions 512 --batch 32

The model is a random GPT-2 (fp32; --n_embd / --n_layer / --n_head / --positions) with a byte-level BPE
vocabulary (--vocab, EOS <|endoftext|>) trained on generated text (pseudo-words drawn Zipf-like, sentences ending
in '.'), saved with transformers and imported into jaxlm with `python -m jaxlm.convert from-hf`. Its weights get
extra Gaussian noise (--sharpen x N(0, 1), as the tests do), so that next-token distributions are sharp and
greedy argmaxes are not near-ties between the two implementations. Three local lm-eval tasks over JSONL files,
written to a temporary directory:
  mc        multiple_choice: --mc_docs questions x --mc_choices continuations (acc, acc_norm)
  gen       generate_until: --gen_prompts prompts, max_gen_toks --gen_tokens, until ['.'] (exact_match)
  rolling   loglikelihood_rolling: --rolling_docs documents of about --rolling_tokens tokens each, so every one
            spans several of lm-eval's disjoint --positions-token windows (word / byte perplexity)
Backends, both with batch_size --batch and max_length --positions:
  jaxlm     JaxlmLM(checkpoint=run, batch_size=B): batches of B rows, longest first, padded to bucketed widths
            (powers of two, so a few shapes compile), jitted scoring on the mesh of this host's devices (one CPU
            device here); generation: jaxlm.decoding.generate (KV cache, one compiled lax.while_loop per shape)
  hf        lm_eval.models.huggingface.HFLM(pretrained=dir, backend="causal", device="cpu", dtype="float32"):
            PyTorch eager, torch's default threads; generation: transformers' generate with lm-eval's
            stop-sequence criteria

Timed in one process, one sitting: one untimed warm-up evaluation of every task per backend (jaxlm compiles
there; datasets are built and cached), then --rounds rounds; in each, every task is evaluated by both backends
back to back (which goes first alternates from round to round), so a change in the machine's load hits both.
Each evaluation is one lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True, bootstrap_iters=0).
"model s" is the time inside the backend's request method (loglikelihood / generate_until /
loglikelihood_rolling: tokenization, batching, the forward passes, post-processing), which is where the two
differ; "evaluate s" is the whole simple_evaluate call around it (task building, dataset loading, metrics).
Each row's "others" is how many cores other processes kept busy while it ran (from /proc/stat; 0 = quiet).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # run from a checkout without installing jaxlm

from machine import cpu_snapshot, print_table, system_line  # noqa: E402  (benchmarks/machine.py)

PACKAGES = ("jax", "jaxlib", "flax", "torch", "transformers", "lm_eval")  # the versions the report names

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")  # lm-eval's and the backends' progress bars
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TASKS = ("mc", "gen", "rolling")
OUTPUT_TYPES = {"mc": "loglikelihood", "gen": "generate_until", "rolling": "loglikelihood_rolling"}
METRICS = {"mc": "acc", "gen": "exact_match", "rolling": "word_perplexity"}


# ----------------------------------------------------------------------------------------- timing


def _stats(start, end) -> dict:
    wall, own, busy = (e - s for e, s in zip(end, start))
    return {"wall": wall, "cpu": own, "others": max(busy - own, 0.0) / wall if wall > 0 else None}


def instrument(lm) -> list[dict]:
    """Wrap lm's three request methods (on the instance, where lm-eval's evaluator looks them up) so that each
    call appends {wall, cpu, others, requests, method} to the returned list."""
    calls: list[dict] = []
    for method in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        original = getattr(lm, method)

        def wrapped(requests, *args, _original=original, _method=method, **kwargs):
            start = cpu_snapshot()
            kwargs.setdefault("disable_tqdm", True)  # the same for both; lm-eval's evaluator passes nothing
            out = _original(requests, *args, **kwargs)
            calls.append(dict(_stats(start, cpu_snapshot()), requests=len(requests), method=_method))
            return out

        setattr(lm, method, wrapped)
    return calls


# ----------------------------------------------------------------------------------------- data and model
def make_lexicon(rng: random.Random, size: int) -> tuple[list[str], list[float]]:
    """`size` distinct pseudo-words of 1 to 4 syllables and Zipf-like weights for drawing them."""
    onsets = "b c d f g h j k l m n p r s t v w z br ch dr fl gr kl pl sh st th tr".split()
    vowels = "a e i o u ai ea ou".split()
    codas = ["", "", "", "n", "r", "s", "t", "ng", "ck"]
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < size:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                       for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 4))))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words, [1.0 / (rank + 1) for rank in range(size)]


class TextMaker:
    def __init__(self, seed: int = 0, lexicon: int = 3000):
        self.rng = random.Random(seed)
        self.words, self.weights = make_lexicon(self.rng, lexicon)

    def sentence(self, low: int = 4, high: int = 16) -> str:
        n = self.rng.randint(low, high)
        words = self.rng.choices(self.words, self.weights, k=n)
        if n > 6 and self.rng.random() < 0.4:
            words[self.rng.randrange(2, n - 2)] += ","
        words[0] = words[0].capitalize()
        return " ".join(words) + "."

    def phrase(self, low: int, high: int) -> str:
        return " ".join(self.rng.choices(self.words, self.weights, k=self.rng.randint(low, high)))


def build_model(directory: str, texts: TextMaker, args) -> tuple[str, str, object, int]:
    """(HF model directory, jaxlm run directory, the trained tokenizer, parameter count) of one random GPT-2."""
    import torch
    import transformers
    from tokenizers import ByteLevelBPETokenizer

    from jaxlm.convert.__main__ import main as convert_main

    hf_dir, run = os.path.join(directory, "gpt2"), os.path.join(directory, "run")
    os.makedirs(hf_dir)
    corpus = [" ".join(texts.sentence() for _ in range(8)) for _ in range(2000)]
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(corpus, vocab_size=args.vocab, min_frequency=2, special_tokens=["<|endoftext|>"],
                                  show_progress=False)
    tokenizer.save_model(hf_dir)  # vocab.json, merges.txt
    torch.manual_seed(args.seed)
    config = transformers.GPT2Config(vocab_size=tokenizer.get_vocab_size(), n_embd=args.n_embd,
                                     n_layer=args.n_layer, n_head=args.n_head, n_positions=args.positions,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(args.sharpen * torch.randn_like(p))
    model.save_pretrained(hf_dir)
    if convert_main(["from-hf", "--model_dir", hf_dir, "--workdir", run]) != 0:
        raise RuntimeError(f"jaxlm.convert from-hf failed on {hf_dir}")
    return hf_dir, run, tokenizer, sum(p.numel() for p in model.parameters())


def write_tasks(directory: str, texts: TextMaker, tokenizer, args) -> dict:
    """Three lm-eval task YAMLs over JSONL files in `directory`; returns token counts for the report."""
    mc = []
    for _ in range(args.mc_docs):
        mc.append({"question": texts.sentence(6, 20), "choices": [" " + texts.phrase(2, 8) for _ in
                                                                  range(args.mc_choices)],
                   "answer": texts.rng.randrange(args.mc_choices)})
    gen = [{"prompt": texts.sentence(6, 24) + " " + texts.phrase(3, 8), "target": texts.phrase(1, 1)}
           for _ in range(args.gen_prompts)]
    rolling = []
    for _ in range(args.rolling_docs):
        doc = texts.sentence()
        while len(tokenizer.encode(doc).ids) < args.rolling_tokens:
            doc += " " + texts.sentence()
        rolling.append({"text": doc})
    for name, rows in (("mc", mc), ("gen", gen), ("rolling", rolling)):
        with open(os.path.join(directory, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    common = "dataset_path: json\ntest_split: test\ndataset_kwargs:\n  data_files:\n    test: {path}\n"

    def write(name, body):
        with open(os.path.join(directory, f"{name}.yaml"), "w") as f:
            f.write(f"task: bench_{name}\n" + common.format(path=os.path.join(directory, f"{name}.jsonl")) + body)

    write("mc", "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\n"
          "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    write("gen", "output_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{target}}'\n"
          f"generation_kwargs:\n  until: {json.dumps(args.until)}\n  max_gen_toks: {args.gen_tokens}\n"
          "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    write("rolling", "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
          "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n")

    def count(text):
        return len(tokenizer.encode(text).ids)

    return {"mc": [count(d["question"]) + count(c) for d in mc for c in d["choices"]],
            "gen": [count(d["prompt"]) for d in gen],
            "rolling": [count(d["text"]) for d in rolling], "rolling_texts": [d["text"] for d in rolling]}


# ----------------------------------------------------------------------------------------- comparing
def _loglikelihoods(resps) -> list[float]:
    """The per-request log-likelihoods of one sample's resps: [[(ll, greedy)], ...] (loglikelihood) or
    [ll] / [[ll]] (loglikelihood_rolling)."""
    out = []
    for r in resps:
        while isinstance(r, (list, tuple)):
            r = r[0]
        out.append(float(r))
    return out


def compare(task: str, ours: dict, theirs: dict) -> str:
    import numpy as np

    name = f"bench_{task}"
    a = sorted(ours["samples"][name], key=lambda s: s["doc_id"])
    b = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
    if task == "gen":
        same = sum(x["resps"] == y["resps"] for x, y in zip(a, b))
        return f"{same}/{len(a)} same texts"
    la = np.array([v for s in a for v in _loglikelihoods(s["resps"])])
    lb = np.array([v for s in b for v in _loglikelihoods(s["resps"])])
    return f"max abs {np.abs(la - lb).max():.1e} (of {len(la)}; |ll| up to {np.abs(lb).max():.0f})"


def metric(result: dict, task: str) -> str:
    value = result["results"][f"bench_{task}"].get(f"{METRICS[task]},none")
    return f"{METRICS[task]} {value:.4g}" if isinstance(value, float) else "-"


# ----------------------------------------------------------------------------------------- report


def _summary(values) -> str:
    return f"mean {sum(values) / len(values):.0f}, min {min(values)}, max {max(values)}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n_embd", type=int, default=256)
    p.add_argument("--n_layer", type=int, default=4)
    p.add_argument("--n_head", type=int, default=4)
    p.add_argument("--positions", type=int, default=256, help="n_positions = max_length of both backends")
    p.add_argument("--vocab", type=int, default=1000, help="byte-level BPE vocabulary trained on the text (at most)")
    p.add_argument("--sharpen", type=float, default=0.1, help="std of the noise added to every weight")
    p.add_argument("--batch", type=int, default=16, help="batch_size of both backends")
    p.add_argument("--mc_docs", type=int, default=200)
    p.add_argument("--mc_choices", type=int, default=4)
    p.add_argument("--gen_prompts", type=int, default=32)
    p.add_argument("--gen_tokens", type=int, default=32, help="max_gen_toks of the generation task")
    p.add_argument("--until", default=".", help="comma-separated stop sequences of the generation task")
    p.add_argument("--rolling_docs", type=int, default=16)
    p.add_argument("--rolling_tokens", type=int, default=600, help="tokens per rolling document (at least)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per backend and task (best reported)")
    p.add_argument("--torch_threads", default="default,1",
                   help="comma-separated torch thread counts of the hf rows ('default': torch's own choice)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.until = [x for x in args.until.split(",") if x]

    start_time = time.time()
    shown = ["benchmarks/eval_harness.py"] + (sys.argv[1:] if argv is None else list(argv))
    print(f"# jaxlm lm-evaluation-harness benchmark\n\n{system_line(PACKAGES)}")
    print(f"command: python {' '.join(shown)}")
    print(f"load average at start (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    with tempfile.TemporaryDirectory(prefix="jaxlm-eval-bench-") as tmp:
        os.environ["HF_DATASETS_CACHE"] = os.path.join(tmp, "datasets")  # before datasets is imported
        import jax
        import lm_eval
        import torch
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import get_rolling_token_windows

        from jaxlm.eval_harness import JaxlmLM

        texts = TextMaker(args.seed)
        hf_dir, run, tokenizer, n_params = build_model(tmp, texts, args)
        tasks_dir = os.path.join(tmp, "tasks")
        os.makedirs(tasks_dir)
        lengths = write_tasks(tasks_dir, texts, tokenizer, args)
        task_manager = TaskManager(include_path=tasks_dir)
        jaxlm_lm = JaxlmLM(checkpoint=run, batch_size=args.batch)
        hf_lm = HFLM(pretrained=hf_dir, backend="causal", batch_size=args.batch, max_length=args.positions,
                     device="cpu", dtype="float32")
        default_threads = torch.get_num_threads()
        thread_counts = list(dict.fromkeys(default_threads if t.strip() == "default" else int(t)
                                           for t in args.torch_threads.split(",") if t.strip()))
        # backend name -> (model, torch threads); the hf rows share one HFLM (torch's thread count is global)
        backends = {"jaxlm": (jaxlm_lm, None)}
        backends.update({f"hf, {n} thread{'s' if n > 1 else ''}": (hf_lm, n) for n in thread_counts})
        reference = next(name for name in backends if name != "jaxlm")
        calls = {id(lm): instrument(lm) for lm in (jaxlm_lm, hf_lm)}

        def evaluate(backend: str, task: str) -> tuple[dict, dict]:
            lm, threads = backends[backend]
            torch.set_num_threads(threads or default_threads)
            log = calls[id(lm)]
            before = len(log)
            begin = cpu_snapshot()
            result = lm_eval.simple_evaluate(model=lm, tasks=[f"bench_{task}"], task_manager=task_manager,
                                             log_samples=True, bootstrap_iters=0, random_seed=0,
                                             numpy_random_seed=0, torch_random_seed=0, verbosity="ERROR")
            outer = _stats(begin, cpu_snapshot())
            torch.set_num_threads(default_threads)
            inner = log[before:]
            if len(inner) != 1 or inner[0]["method"] != OUTPUT_TYPES[task]:
                raise RuntimeError(f"{backend} {task}: expected one {OUTPUT_TYPES[task]} call, got {inner}")
            return result, dict(inner[0], evaluate=outer["wall"])

        warm = {}  # one warm-up per model (the hf rows share theirs)
        for backend in ("jaxlm", reference):
            for task in TASKS:
                warm[backend, task] = evaluate(backend, task)[1]
                print(f"  warm-up {backend} {task}: {warm[backend, task]['wall']:.2f} s", file=sys.stderr,
                      flush=True)
        names = list(backends)
        runs: dict[tuple[str, str], list[dict]] = {(b, t): [] for b in names for t in TASKS}
        results = {}
        for r in range(args.rounds):
            for task in TASKS:
                for backend in names[r % len(names):] + names[:r % len(names)]:  # who goes first rotates
                    results[backend, task], stats = evaluate(backend, task)
                    runs[backend, task].append(stats)
                    print(f"  round {r + 1} {backend} {task}: {stats['wall']:.2f} s", file=sys.stderr, flush=True)
        windows = sum(len(list(get_rolling_token_windows(tokenizer.encode(d).ids, 0, args.positions, 1)))
                      for d in lengths.pop("rolling_texts"))
        devices = len(jax.devices())

    rows = []
    for task in TASKS:
        hf_best = min(s["wall"] for name in names if name != "jaxlm" for s in runs[name, task])
        for backend in names:
            stats = runs[backend, task]
            best = min(stats, key=lambda s: s["wall"])
            others = [s["others"] for s in stats if s["others"] is not None]
            first = warm.get((backend, task))
            rows.append([task, backend, str(best["requests"]), f"{first['wall']:.2f}" if first else "-",
                         f"{best['wall']:.2f}", " / ".join(f"{s['wall']:.2f}" for s in stats),
                         f"{best['requests'] / best['wall']:.1f}", f"{hf_best / best['wall']:.2f}x",
                         f"{best['evaluate']:.2f}", f"{best['cpu']:.1f}", f"{max(others):.2f}" if others else "-",
                         metric(results[backend, task], task),
                         "-" if backend == reference else compare(task, results[backend, task],
                                                                  results[reference, task])])
    print(f"\nmodel: random GPT-2 {args.n_embd} wide x {args.n_layer} layers ({args.n_head} heads, "
          f"{args.positions} positions), vocab {tokenizer.get_vocab_size()} (byte-level BPE), "
          f"{n_params / 1e6:.1f}M parameters, fp32, weight noise {args.sharpen}; batch {args.batch} on both; "
          f"XLA devices: {devices} CPU; torch's default threads: {default_threads}")
    print(f"tasks: mc {args.mc_docs} docs x {args.mc_choices} choices (tokens per request, context + continuation: "
          f"{_summary(lengths['mc'])}); gen {args.gen_prompts} prompts (tokens: {_summary(lengths['gen'])}), "
          f"max_gen_toks {args.gen_tokens}, until {args.until}; rolling {args.rolling_docs} documents (tokens: "
          f"{_summary(lengths['rolling'])}) in {windows} disjoint windows of up to {args.positions} tokens\n")
    print_table(["task", "backend", "requests", "first call s", "model s", "rounds s", "requests/s",
                 "vs best hf", "evaluate s", "CPU s", "others", "metric", f"output vs {reference}"], rows)
    print(f"\nrequests: lm-eval's requests of the task (mc: one per choice; rolling: one per document); "
          "first call s: the untimed warm-up's model s (jaxlm compiles there; one warm-up per model, so the hf "
          f"rows share one); model s: the fastest of {args.rounds} rounds, time inside the backend's request "
          "method (rounds s: each, in order); requests/s and vs best hf (the fastest hf row's model s / this "
          "row's) from model s; evaluate s: the whole simple_evaluate call of that round; CPU s: this process's "
          "CPU seconds in the request method; others: cores kept busy by other processes (the worst round; "
          f"0 = quiet machine); metric: the last round's; output vs {reference}: the last round's per-request "
          "log-likelihoods against that row's (from log_samples; max abs difference, and the largest "
          "|log-likelihood| for scale), or its generations against that row's.")
    print(f"load average at end (1/5/15 min): {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"wall time {(time.time() - start_time) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
