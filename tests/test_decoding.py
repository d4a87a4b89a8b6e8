"""Generation: cached == recomputed, parity with transformers' generate, padding sides, EOS, beams, sampling, CLI,
and T5 through the same loops.

One tiny random GPT-2 built with transformers and imported with jaxlm.convert.load_hf serves the GPT-2 tests (its
initialiser range is raised so next-token distributions are peaked: argmax and top-k/top-p sets are then far
from float ties). Tests share prompt shapes and GenerationConfigs where they can, so compiles are reused.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm.decoding import GenerationConfig, adapter_for, filter_logits, generate, pad_prompts
from jaxlm.models import build_model

torch = pytest.importorskip("torch", reason="parity tests compare against transformers' generate")
transformers = pytest.importorskip("transformers", reason="parity tests compare against transformers' generate")

VOCAB, N_POSITIONS, NEW = 96, 48, 10
PROMPTS = [[5, 17, 33, 8, 61, 2, 40], [71, 12, 9], [3, 50, 14, 88, 27]]
PAD = 1  # not a token the model is ever expected to pick; distinct from EOS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(HF torch model, jaxlm config, params, adapter) of the same random GPT-2."""
    from jaxlm.convert import load_hf

    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=N_POSITIONS,
                                        bos_token_id=0, eos_token_id=0, initializer_range=0.25)
    model = transformers.GPT2LMHeadModel(hf_config).eval()
    model_dir = str(tmp_path_factory.mktemp("gpt2"))
    model.save_pretrained(model_dir)
    config, params, _ = load_hf(model_dir)
    return model, config, params, adapter_for(config), model_dir


def run(tiny, prompts=PROMPTS, side="left", rng=0, **kw):
    _, _, params, adapter, _ = tiny
    tokens, mask = pad_prompts(prompts, PAD, side)
    out = generate(adapter, params, tokens, mask, config=GenerationConfig(**{"pad_id": PAD, **kw}),
                   rng=jax.random.key(rng))
    return jax.device_get(out)


FULL = 24  # a fixed length for the no-cache reference: one compile; causal, so trailing filler changes nothing


@pytest.fixture(scope="module")
def full_forward(tiny):
    """Jitted full forward pass (no cache) over [B, FULL] ids: the reference every cached result is checked on."""
    model, params = build_model(tiny[1]), tiny[2]
    return jax.jit(lambda ids: model.apply({"params": params}, ids))


def reference_logits(full_forward, prompt, continuation):
    """Next-token logits after each prefix of `continuation`, from the full sequence (no cache, no padding)."""
    seq = list(prompt) + list(continuation)
    logits = full_forward(jnp.asarray([seq + [PAD] * (FULL - len(seq))], jnp.int32))[0]
    return np.asarray(logits[len(prompt) - 1:len(prompt) - 1 + len(continuation)])


def hf_generate(tiny, prompts, **kw):
    """transformers' generate on the left-padded batch: (new tokens padded to NEW, sequences_scores or None)."""
    model = tiny[0]
    tokens, mask = pad_prompts(prompts, PAD, "left")
    with torch.no_grad():
        out = model.generate(torch.tensor(tokens, dtype=torch.long), attention_mask=torch.tensor(mask).long(),
                             max_new_tokens=NEW, pad_token_id=PAD, output_scores=True,
                             return_dict_in_generate=True, **kw)
    new = out.sequences[:, tokens.shape[1]:].numpy()
    new = np.pad(new, ((0, 0), (0, NEW - new.shape[1])), constant_values=PAD)  # HF stops once all rows end
    scores = getattr(out, "sequences_scores", None)
    return new, None if scores is None else scores.numpy()


def first_eos_row0(tiny):
    """An EOS id that row 0 of the greedy output emits mid-way (and not before), so that rows end early."""
    tokens = run(tiny, max_new_tokens=NEW).tokens
    for i in range(2, NEW - 2):
        if tokens[0, i] not in tokens[0, :i]:
            return int(tokens[0, i]), i
    pytest.fail(f"no usable EOS in {tokens[0]}")


def test_filter_logits_keeps_exactly_the_top_k_and_nucleus_sets():
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    kept_k = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), top_k=5)))
    np.testing.assert_array_equal(kept_k, logits >= np.sort(logits, -1)[:, -5:-4])
    for top_p in (0.3, 0.9):
        kept_p = np.isfinite(np.asarray(filter_logits(jnp.asarray(logits), temperature=0.7, top_p=top_p)))
        probs = np.exp(logits / 0.7) / np.exp(logits / 0.7).sum(-1, keepdims=True)
        mass_ahead = np.array([[probs[b][probs[b] > p].sum() for p in probs[b]] for b in range(4)])
        np.testing.assert_array_equal(kept_p, mass_ahead < top_p)
        assert (kept_p.sum(-1) >= 1).all() and (kept_p.sum(-1) < 50).all()


def test_cached_greedy_equals_recomputing_the_full_sequence(tiny, full_forward):
    cached = run(tiny, max_new_tokens=NEW)
    recomputed = run(tiny, max_new_tokens=NEW, use_cache=False)  # compiled loop, whole buffer every step
    for row, prompt in enumerate(PROMPTS):  # a plain Python loop: full forward pass per token, no padding
        seq = list(prompt)
        for _ in range(NEW):
            seq.append(int(np.argmax(reference_logits(full_forward, seq, [0])[0])))
        new = seq[len(prompt):]
        np.testing.assert_array_equal(cached.tokens[row], new)
        np.testing.assert_array_equal(recomputed.tokens[row], new)
        logp = np.asarray(jax.nn.log_softmax(reference_logits(full_forward, prompt, new)))
        total = np.take_along_axis(logp, np.asarray(new)[:, None], 1).sum()
        np.testing.assert_allclose([cached.scores[row], recomputed.scores[row]], [total, total], rtol=1e-4)
    assert len({tuple(t) for t in cached.tokens}) == len(PROMPTS)  # the rows really differ


def test_greedy_matches_transformers_generate_with_left_padding_and_eos(tiny):
    ours = run(tiny, max_new_tokens=NEW)
    np.testing.assert_array_equal(ours.tokens, hf_generate(tiny, PROMPTS, do_sample=False)[0])
    eos, at = first_eos_row0(tiny)
    ours = run(tiny, max_new_tokens=NEW, eos_id=eos)
    np.testing.assert_array_equal(ours.tokens, hf_generate(tiny, PROMPTS, do_sample=False, eos_token_id=eos)[0])
    # EOS stops row 0: EOS then padding; the other rows are untouched unless they emit EOS themselves.
    assert ours.tokens[0, at] == eos and (ours.tokens[0, at + 1:] == PAD).all() and ours.lengths[0] == at + 1
    free = run(tiny, max_new_tokens=NEW).tokens
    for row in range(1, len(PROMPTS)):
        hits = np.flatnonzero(free[row] == eos)
        end = hits[0] + 1 if hits.size else NEW
        assert ours.lengths[row] == end
        np.testing.assert_array_equal(ours.tokens[row, :end], free[row, :end])


def test_left_and_right_padding_give_the_same_continuation(tiny):
    eos, _ = first_eos_row0(tiny)
    for kw in (dict(), dict(eos_id=eos)):
        left = run(tiny, side="left", max_new_tokens=NEW, **kw)
        right = run(tiny, side="right", max_new_tokens=NEW, **kw)
        np.testing.assert_array_equal(left.tokens, right.tokens)
        np.testing.assert_array_equal(left.lengths, right.lengths)
        np.testing.assert_allclose(left.scores, right.scores, rtol=1e-5)


def test_beam_search_with_one_beam_equals_greedy(tiny):
    eos, _ = first_eos_row0(tiny)
    greedy = run(tiny, max_new_tokens=NEW, eos_id=eos)
    beam = run(tiny, max_new_tokens=NEW, eos_id=eos, strategy="beam", num_beams=1, length_penalty=0.0)
    np.testing.assert_array_equal(beam.tokens, greedy.tokens)
    np.testing.assert_array_equal(beam.lengths, greedy.lengths)
    np.testing.assert_allclose(beam.scores, greedy.scores, rtol=1e-5)


@pytest.mark.parametrize("early_stopping,alpha", [("never", 1.5), (True, 0.8), (False, -0.5)])
def test_beam_search_matches_transformers(tiny, early_stopping, alpha):
    """Same hypotheses and scores as transformers with its length penalty (L ** alpha) and each early_stopping
    mode; right padding searches the same beams."""
    eos, _ = first_eos_row0(tiny)
    kw = dict(max_new_tokens=NEW, eos_id=eos, strategy="beam", num_beams=3, length_penalty=alpha,
              length_penalty_style="hf", early_stopping=early_stopping)
    ours = run(tiny, **kw)
    tokens, scores = hf_generate(tiny, PROMPTS, do_sample=False, num_beams=3, eos_token_id=eos,
                                 length_penalty=alpha, early_stopping=early_stopping)
    np.testing.assert_array_equal(ours.tokens, tokens)
    np.testing.assert_allclose(ours.scores, scores, rtol=1e-4)
    if alpha < 1:  # no strong preference for length: some best hypotheses end with EOS
        assert (ours.lengths < NEW).any()
    np.testing.assert_array_equal(run(tiny, side="right", **kw).tokens, ours.tokens)


def test_gnmt_length_penalty_scores_and_prefers_longer_hypotheses(tiny, full_forward):
    eos, _ = first_eos_row0(tiny)
    kw = dict(max_new_tokens=NEW, eos_id=eos, strategy="beam", num_beams=3)
    long = run(tiny, length_penalty=2.0, **kw)
    # (the short-favouring search of test_beam_search_matches_transformers: same beams, compiled once)
    short = run(tiny, length_penalty=-0.5, length_penalty_style="hf", early_stopping=False, **kw)
    assert (long.lengths >= short.lengths).all() and (long.lengths > short.lengths).any()
    for row, prompt in enumerate(PROMPTS):  # the score is the summed log-prob over ((5 + L) / 6) ** alpha
        cont = long.tokens[row, :long.lengths[row]]
        logp = np.asarray(jax.nn.log_softmax(reference_logits(full_forward, prompt, cont)))
        total = np.take_along_axis(logp, cont[:, None], 1).sum()
        np.testing.assert_allclose(long.scores[row], total / ((5 + len(cont)) / 6) ** 2.0, rtol=1e-4)


def test_scanned_layers_search_the_same_beams(tiny):
    """A scanned model's cache has a leading layers axis: beam reordering must gather rows on axis 1."""
    from jaxlm.convert import load_hf

    config, params, _ = load_hf(tiny[4], scan_layers=True)
    eos, _ = first_eos_row0(tiny)
    tokens, mask = pad_prompts(PROMPTS, PAD, "left")
    kw = dict(max_new_tokens=NEW, eos_id=eos, strategy="beam", num_beams=3, length_penalty=0.8,
              length_penalty_style="hf", early_stopping=True, pad_id=PAD)
    scanned = generate(adapter_for(config), params, tokens, mask, config=GenerationConfig(**kw))
    unrolled = run(tiny, **kw)
    np.testing.assert_array_equal(scanned.tokens, unrolled.tokens)
    np.testing.assert_allclose(scanned.scores, unrolled.scores, rtol=1e-5)


@pytest.mark.parametrize("limits", [dict(top_k=3), dict(top_p=0.7)])
def test_sampling_is_reproducible_and_never_leaves_the_allowed_set(tiny, full_forward, limits):
    prompts = [PROMPTS[1]] * 8 + PROMPTS[:2]
    kw = dict(strategy="sample", max_new_tokens=NEW, temperature=2.0, **limits)
    first, again = run(tiny, prompts, rng=0, **kw), run(tiny, prompts, rng=0, **kw)
    other = run(tiny, prompts, rng=1, **kw)
    np.testing.assert_array_equal(first.tokens, again.tokens)
    assert (first.tokens != other.tokens).any()
    for out in (first, other):
        for row, prompt in enumerate(prompts):
            logits = reference_logits(full_forward, prompt, out.tokens[row]) / 2.0
            chosen = logits[np.arange(NEW), out.tokens[row]]
            if "top_k" in limits:  # never below the k-th largest logit (1e-4: cached vs recomputed rounding)
                assert (chosen >= np.sort(logits, -1)[:, -limits["top_k"]] - 1e-4).all()
            else:  # the mass of the tokens strictly more likely than the chosen one is below top_p
                probs = np.exp(logits - logits.max(-1, keepdims=True))
                probs /= probs.sum(-1, keepdims=True)
                p_chosen = probs[np.arange(NEW), out.tokens[row]]
                ahead = np.where(probs > p_chosen[:, None] + 1e-6, probs, 0).sum(-1)
                assert (ahead < limits["top_p"] + 1e-5).all()
    # it samples: the 8 copies of one prompt do not all draw the same first tokens, within the allowed set
    draws = {tuple(t[:3]) for t in first.tokens[:8]}
    assert len(draws) > 1
    if "top_k" in limits:
        assert len({t[0] for t in first.tokens[:8]}) <= limits["top_k"]


def test_bad_settings_are_named_errors(tiny):
    with pytest.raises(ValueError, match="top_p"):
        GenerationConfig(top_p=0.0)
    with pytest.raises(ValueError, match="strategy"):
        GenerationConfig(strategy="nucleus")
    with pytest.raises(ValueError, match="early_stopping"):
        GenerationConfig(early_stopping="sometimes")
    with pytest.raises(ValueError, match="exceeds the model's 48 positions"):
        run(tiny, max_new_tokens=N_POSITIONS)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        pad_prompts([[3], []])


def test_cli_prints_the_continuations_of_an_imported_checkpoint(tiny, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from jaxlm.convert import import_hf, write_workdir
    from jaxlm.generate import main

    words = ["<|endoftext|>", "<unk>"] + [f"w{i}" for i in range(2, VOCAB)]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model_dir = tmp_path / "hf"
    tiny[0].save_pretrained(model_dir)
    tokenizer.save(str(model_dir / "tokenizer.json"))
    workdir = str(tmp_path / "imported")
    write_workdir(workdir, import_hf(str(model_dir)), str(model_dir))

    prompts = ["w5 w17 w33", "w71 w12 w9 w40"]
    assert main(["--checkpoint", workdir, "--prompt", prompts[0], "--prompt", prompts[1], "--max_new_tokens", "6",
                 "--strategy", "beam", "--num_beams", "2"]) == 0
    printed = capsys.readouterr().out.splitlines()
    _, config, params, adapter, _ = tiny
    ids = [[int(w[1:]) for w in p.split()] for p in prompts]
    tokens, mask = pad_prompts(ids, config.pad_token_id, "left")
    out = generate(adapter, params, tokens, mask, config=GenerationConfig(
        max_new_tokens=6, strategy="beam", num_beams=2, eos_id=0, pad_id=config.pad_token_id))
    for i, prompt in enumerate(prompts):
        new = [int(t) for t in out.tokens[i, :out.lengths[i]] if t != 0]
        assert printed[2 * i].startswith(f"=== [{i}] {prompt!r}")
        assert printed[2 * i + 1] == " ".join([prompt] + [f"w{t}" for t in new])  # decoded with the prompt
    assert main(["--checkpoint", workdir]) == 1 and "no prompts" in capsys.readouterr().err


@pytest.mark.parametrize("family,strategy,seed,noise", [("t5", "greedy", 2, 0.3), ("t5_v1_1", "beam", 1, 1.0)])
def test_t5_matches_transformers_generate(tmp_path, family, strategy, seed, noise):
    """The encoder-decoder path (encode once, cross-attention K/V cached by the first decoder step, reordered
    with the beams) against transformers' T5 generate, on a left-padded batch of sources; both output heads
    (v1.0 tied + scaled, v1.1 lm_head); right-padded sources give the same outputs."""
    from jaxlm.convert import load_hf

    torch.manual_seed(seed)  # (seed, noise): weights whose outputs differ per row and end at different lengths
    hf_config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        relative_attention_max_distance=16, decoder_start_token_id=0, eos_token_id=1, pad_token_id=0,
        feed_forward_proj="relu" if family == "t5" else "gated-gelu", tie_word_embeddings=family == "t5")
    model = transformers.T5ForConditionalGeneration(hf_config).eval()
    with torch.no_grad():  # noise on every weight (norms included) and an untied head: peaked, distinct logits
        for param in model.parameters():
            param.add_(noise * torch.randn_like(param))
        if family == "t5_v1_1":
            model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, 32))
    model.save_pretrained(tmp_path)
    config, params, _ = load_hf(str(tmp_path))
    assert config.family == family
    sources = [[5, 17, 33, 8, 61, 2, 40, 1], [71, 12, 9, 1], [3, 50, 14, 88, 1]]
    kw = dict(max_new_tokens=NEW, strategy=strategy, num_beams=3, length_penalty=0.7, length_penalty_style="hf",
              early_stopping="never", eos_id=1, pad_id=0)
    left, right = pad_prompts(sources, 0, "left"), pad_prompts(sources, 0, "right")
    ours = jax.device_get(generate(adapter_for(config), params, *left, config=GenerationConfig(**kw)))
    with torch.no_grad():
        out = model.generate(torch.tensor(left[0], dtype=torch.long), attention_mask=torch.tensor(left[1]).long(),
                             max_new_tokens=NEW, do_sample=False, num_beams=3 if strategy == "beam" else 1,
                             length_penalty=0.7, early_stopping="never", eos_token_id=1, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
    theirs = out.sequences[:, 1:].numpy()  # drop the decoder start token
    theirs = np.pad(theirs, ((0, 0), (0, NEW - theirs.shape[1])))
    # transformers' beam search fills ended hypotheses with `pad_token_id or eos` (EOS when pad is 0, as in T5):
    # compare up to each hypothesis' end, and check that ours pads with pad_id
    ended = np.arange(NEW)[None] >= ours.lengths[:, None]
    np.testing.assert_array_equal(np.where(ended, 0, theirs), ours.tokens)
    assert (ours.tokens[ended] == 0).all()
    if strategy == "beam":
        np.testing.assert_allclose(ours.scores, out.sequences_scores.numpy(), rtol=1e-4)
    assert len({tuple(t) for t in ours.tokens}) == len(sources)
    if strategy == "beam":
        assert sorted(ours.lengths.tolist()) == [2, 6, NEW]  # two hypotheses end with EOS, at different steps
    right_out = generate(adapter_for(config), params, *right, config=GenerationConfig(**kw))
    np.testing.assert_array_equal(right_out.tokens, ours.tokens)
