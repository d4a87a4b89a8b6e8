"""Compiled generation loops: greedy, sampling and beam search over a KV cache.

One jitted function per (adapter, GenerationConfig, prompt shape): the prompt is prefilled in one model call,
then `jax.lax.while_loop` feeds one token per step until `max_new_tokens` or until every row has emitted EOS.
Prompts are [B,P] ids with a mask of real tokens: left padding, right padding (or any mix) all work, since
each row has its own positions (0..len-1 over its real tokens) and the padded cache slots are masked out.

Beam search follows transformers' (>= 4.50) vectorised beam search step for step, so with
length_penalty_style='hf' it returns the same hypotheses and scores for every early_stopping mode (tested);
the default 'gnmt' penalty is t5x's. Differences from t5x: only EOS continuations ranked in the top K of the
2K candidates finish (t5x takes any of the 2K), and at max_new_tokens the top K continuations finish.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from jaxlm.decoding.adapters import DecoderAdapter
from jaxlm.decoding.sampling import sample
from jaxlm.models.common import unbox

STRATEGIES = ("greedy", "sample", "beam")
LENGTH_PENALTIES = ("gnmt", "hf")
EARLY_STOPPING = ("never", True, False)
BIG_NEG = -1.0e9  # Hugging Face's value for "not a candidate"; finite so sums stay ordered


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """Static (hashable) decoding settings; each distinct value compiles once.

    length_penalty: beam scores are sum(log p) / penalty(L), L = tokens generated including EOS;
      'gnmt' (Wu et al. 2016, t5x): ((5 + L) / 6) ** alpha; 'hf' (transformers): L ** alpha. alpha = 0: none.
    early_stopping (beam): as transformers: 'never' stops a row only when no alive beam can still beat its
      worst finished one (the exact bound; alpha > 0 uses the penalty at max_new_tokens), False uses the current
      length in that bound (a heuristic), True stops a row once it has num_beams finished hypotheses.
    eos_id None: rows never stop early. pad_id: emitted by finished rows.
    use_cache False: every step recomputes the whole [B, P + N] buffer (a compiled baseline, for benchmarks).
    """
    max_new_tokens: int = 32
    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_beams: int = 4
    length_penalty: float = 0.6
    length_penalty_style: str = "gnmt"
    early_stopping: Any = "never"
    eos_id: int | None = None
    pad_id: int = 0
    use_cache: bool = True

    def __post_init__(self):
        checks = [
            (self.strategy in STRATEGIES, f"strategy={self.strategy!r} is not one of {STRATEGIES}"),
            (self.max_new_tokens >= 1, f"max_new_tokens={self.max_new_tokens} must be >= 1"),
            (self.temperature > 0, f"temperature={self.temperature} must be > 0 (use strategy='greedy' for 0)"),
            (self.top_k >= 0, f"top_k={self.top_k} must be >= 0 (0 = off)"),
            (0.0 < self.top_p <= 1.0, f"top_p={self.top_p} must be in (0, 1] (1 = off)"),
            (self.num_beams >= 1, f"num_beams={self.num_beams} must be >= 1"),
            (self.length_penalty_style in LENGTH_PENALTIES,
             f"length_penalty_style={self.length_penalty_style!r} is not one of {LENGTH_PENALTIES}"),
            (isinstance(self.early_stopping, bool) or self.early_stopping == "never",
             f"early_stopping={self.early_stopping!r} is not one of {EARLY_STOPPING}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"GenerationConfig: {message}")

    def penalty(self, length):
        alpha = self.length_penalty
        length = jnp.asarray(length, jnp.float32)
        if self.length_penalty_style == "gnmt":
            return ((5.0 + length) / 6.0) ** alpha
        return length ** alpha


@flax.struct.dataclass
class Generated:
    tokens: jax.Array   # [B, N] int32; pad_id after a row's EOS (and after the end of a beam hypothesis)
    lengths: jax.Array  # [B] int32: tokens generated, EOS included
    scores: jax.Array   # [B] float32: sum of the model's log-probs of the tokens (beam: the penalised score)


def pad_prompts(prompts, pad_id: int = 0, side: str = "left", length: int | None = None):
    """Lists of token ids -> (tokens [B,P] int32, mask [B,P] bool), padded on `side` ('left' | 'right')."""
    if side not in ("left", "right"):
        raise ValueError(f"padding side={side!r} must be 'left' or 'right'")
    prompts = [list(map(int, p)) for p in prompts]
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompt {i} is empty; a decoder needs at least one token (e.g. BOS)")
    length = max(map(len, prompts)) if length is None else length
    tokens = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for i, p in enumerate(prompts):
        if len(p) > length:
            raise ValueError(f"prompt {i} has {len(p)} tokens, more than length={length}")
        cols = slice(length - len(p), length) if side == "left" else slice(0, len(p))
        tokens[i, cols], mask[i, cols] = p, True
    return tokens, mask


def generate(adapter: DecoderAdapter, params, prompt_tokens_BxP, prompt_mask_BxP=None, *,
             config: GenerationConfig, rng=None) -> Generated:
    """New tokens after each prompt. prompt_mask: True on real tokens (default: all). For an encoder-decoder
    adapter the prompt is the encoder input and every row's decoder starts from `adapter.decoder_start_id`.
    The whole search is one jitted call (static adapter and config)."""
    prompt_tokens_BxP = jnp.asarray(prompt_tokens_BxP, jnp.int32)
    if prompt_tokens_BxP.ndim != 2:
        raise ValueError(f"prompt_tokens must be [batch, length], got shape {prompt_tokens_BxP.shape}")
    if prompt_mask_BxP is None:
        prompt_mask_BxP = jnp.ones(prompt_tokens_BxP.shape, bool)
    prompt_mask_BxP = jnp.asarray(prompt_mask_BxP, bool)
    if prompt_mask_BxP.shape != prompt_tokens_BxP.shape:
        raise ValueError(f"prompt_mask shape {prompt_mask_BxP.shape} != prompt_tokens shape "
                         f"{prompt_tokens_BxP.shape}")
    if not isinstance(prompt_mask_BxP, jax.core.Tracer):
        empty = np.flatnonzero(~np.asarray(prompt_mask_BxP).any(-1))
        if empty.size:
            raise ValueError(f"prompt rows {empty.tolist()} have no real tokens (prompt_mask all False)")
    decoder_prompt = 1 if adapter.is_encoder_decoder else prompt_tokens_BxP.shape[1]
    slots = decoder_prompt + config.max_new_tokens - 1
    if slots > adapter.max_length:
        raise ValueError(f"prompt length {decoder_prompt} + max_new_tokens {config.max_new_tokens} - 1 = {slots} "
                         f"exceeds the model's {adapter.max_length} positions")
    rng = jax.random.key(0) if rng is None else rng
    return _generate_jit(adapter, config, unbox(params), prompt_tokens_BxP, prompt_mask_BxP, rng)


def _generate(adapter, config, params, prompt_tokens_BxP, prompt_mask_BxP, rng):
    context = None
    if adapter.is_encoder_decoder:
        context = adapter.encode(params, prompt_tokens_BxP, prompt_mask_BxP)
        batch = prompt_tokens_BxP.shape[0]
        prompt_tokens_BxP = jnp.full((batch, 1), adapter.decoder_start_id, jnp.int32)
        prompt_mask_BxP = jnp.ones((batch, 1), bool)
    prefill = _Prefill.run(adapter, config, params, prompt_tokens_BxP, prompt_mask_BxP, context)
    if config.strategy == "beam":
        return _beam_search(adapter, config, params, prefill, context)
    return _greedy_or_sample(adapter, config, params, prefill, context, rng)


_generate_jit = jax.jit(_generate, static_argnums=(0, 1))


@flax.struct.dataclass
class _Prefill:
    """The state after the prompt: next-token logits and a cache (or the token buffer, without a cache)."""
    logits_BxV: jax.Array
    cache: Any
    valid_BxS: jax.Array      # slots holding real tokens
    lengths_B: jax.Array      # real prompt tokens per row = position of the first new token
    buffer_BxS: jax.Array     # use_cache=False: every token so far, by slot
    positions_BxS: jax.Array  # use_cache=False: their positions
    prompt_len: int = flax.struct.field(pytree_node=False)

    @classmethod
    def run(cls, adapter, config, params, tokens_BxP, mask_BxP, context):
        batch, prompt_len = tokens_BxP.shape
        slots = prompt_len + config.max_new_tokens - 1
        lengths_B = mask_BxP.sum(-1).astype(jnp.int32)
        positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=-1) - 1, 0).astype(jnp.int32)
        last_real_B = jnp.argmax(jnp.where(mask_BxP, jnp.arange(prompt_len), -1), axis=-1)
        valid_BxS = jnp.zeros((batch, slots), bool).at[:, :prompt_len].set(mask_BxP)
        cache = adapter.init_cache(batch, slots, context)
        logits_BxV, cache = adapter.step(params, cache, tokens_BxP, positions_BxP, valid_BxS, last_real_B, context,
                                         prefill=True)
        buffer_BxS = jnp.full((batch, slots), config.pad_id, jnp.int32).at[:, :prompt_len].set(tokens_BxP)
        positions_BxS = jnp.zeros((batch, slots), jnp.int32).at[:, :prompt_len].set(positions_BxP)
        return cls(logits_BxV, cache if config.use_cache else None, valid_BxS, lengths_B, buffer_BxS,
                   positions_BxS, prompt_len)


def _feed(adapter, config, params, state, tokens_B, step, prompt_len, context):
    """Writes token `step - 1` (the one just chosen) at slot P + step - 1 and returns the next logits."""
    slot = prompt_len + step - 1
    positions_B = state["lengths_B"] + step - 1
    valid_BxS = jax.lax.dynamic_update_slice(state["valid_BxS"], jnp.ones((tokens_B.shape[0], 1), bool), (0, slot))
    state = {**state, "valid_BxS": valid_BxS}
    if config.use_cache:
        logits_BxV, cache = adapter.step(params, state["cache"], tokens_B[:, None], positions_B[:, None], valid_BxS,
                                         None, context)
        return logits_BxV, {**state, "cache": cache}
    # No cache: recompute every slot from scratch with a fresh cache, reading the logits at `slot`.
    buffer_BxS = jax.lax.dynamic_update_slice(state["buffer_BxS"], tokens_B[:, None], (0, slot))
    positions_BxS = jax.lax.dynamic_update_slice(state["positions_BxS"], positions_B[:, None], (0, slot))
    batch, slots = buffer_BxS.shape
    fresh = adapter.init_cache(batch, slots, context)
    logits_BxV, _ = adapter.step(params, fresh, buffer_BxS, positions_BxS, valid_BxS,
                                 jnp.full((batch,), slot, jnp.int32), context, prefill=True)
    return logits_BxV, {**state, "buffer_BxS": buffer_BxS, "positions_BxS": positions_BxS}


def _initial_state(prefill: _Prefill):
    return {"cache": prefill.cache, "valid_BxS": prefill.valid_BxS, "lengths_B": prefill.lengths_B,
            "buffer_BxS": prefill.buffer_BxS, "positions_BxS": prefill.positions_BxS}


# --------------------------------------------------------------------------------------------- greedy / sampling
def _greedy_or_sample(adapter, config, params, prefill, context, rng):
    batch = prefill.logits_BxV.shape[0]
    n = config.max_new_tokens
    prompt_len = prefill.prompt_len

    def choose(state, logits_BxV, step):
        logp_BxV = jax.nn.log_softmax(logits_BxV, axis=-1)
        if config.strategy == "greedy":
            token_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
        else:
            token_B = sample(jax.random.fold_in(rng, step), logits_BxV, temperature=config.temperature,
                             top_k=config.top_k, top_p=config.top_p)
        done_B = state["done_B"]
        token_B = jnp.where(done_B, config.pad_id, token_B)
        token_logp_B = jnp.take_along_axis(logp_BxV, token_B[:, None], axis=-1)[:, 0]
        out = {**state,
               "tokens_BxN": jax.lax.dynamic_update_slice(state["tokens_BxN"], token_B[:, None], (0, step)),
               "scores_B": state["scores_B"] + jnp.where(done_B, 0.0, token_logp_B),
               "generated_B": state["generated_B"] + (~done_B).astype(jnp.int32)}
        if config.eos_id is not None:
            out["done_B"] = done_B | (token_B == config.eos_id)
        return out

    state = {**_initial_state(prefill),
             "tokens_BxN": jnp.full((batch, n), config.pad_id, jnp.int32),
             "scores_B": jnp.zeros((batch,), jnp.float32), "generated_B": jnp.zeros((batch,), jnp.int32),
             "done_B": jnp.zeros((batch,), bool), "step": jnp.array(1, jnp.int32)}
    state = choose(state, prefill.logits_BxV, 0)

    def cond(state):
        return (state["step"] < n) & ~jnp.all(state["done_B"])

    def body(state):
        step = state["step"]
        prev_B = jax.lax.dynamic_slice_in_dim(state["tokens_BxN"], step - 1, 1, axis=1)[:, 0]
        logits_BxV, state = _feed(adapter, config, params, state, prev_B, step, prompt_len, context)
        state = choose(state, logits_BxV, step)
        return {**state, "step": step + 1}

    state = jax.lax.while_loop(cond, body, state)
    return Generated(state["tokens_BxN"], state["generated_B"], state["scores_B"])


# --------------------------------------------------------------------------------------------- beam search
def _beam_search(adapter, config, params, prefill, context):
    """Beam search as transformers' (vectorised) one: the top 2K continuations of all K beams are ranked by
    summed log-prob; those ending in EOS among the top K become finished hypotheses (scored with the length
    penalty), the best K others stay alive; at max_new_tokens the top K continuations all finish."""
    k, n = config.num_beams, config.max_new_tokens
    batch, vocab = prefill.logits_BxV.shape
    prompt_len = prefill.prompt_len
    rows_N = jnp.repeat(jnp.arange(batch), k)  # every row repeated K times: [B*K]
    expand = lambda x: None if x is None else jnp.take(x, rows_N, axis=0)  # noqa: E731
    state = _initial_state(prefill)
    state.update(valid_BxS=expand(state["valid_BxS"]), lengths_B=expand(state["lengths_B"]),
                 buffer_BxS=expand(state["buffer_BxS"]), positions_BxS=expand(state["positions_BxS"]))
    if config.use_cache:
        state["cache"] = adapter.reorder_cache(state["cache"], rows_N)
    if context is not None:
        context = jax.tree.map(lambda x: jnp.take(x, rows_N, axis=0), context)
    eos = -1 if config.eos_id is None else config.eos_id
    pad_seqs = jnp.full((batch, k, n), config.pad_id, jnp.int32)
    state.update(
        alive_BxKxN=pad_seqs, alive_logp_BxK=jnp.tile(jnp.array([0.0] + [BIG_NEG] * (k - 1)), (batch, 1)),
        finished_BxKxN=pad_seqs, finished_score_BxK=jnp.full((batch, k), BIG_NEG, jnp.float32),
        finished_flag_BxK=jnp.zeros((batch, k), bool), improvable_B=jnp.ones((batch,), bool),
        step=jnp.array(1, jnp.int32))
    gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)  # noqa

    def choose(state, logits_NxV, step):
        logp_BxKxV = jax.nn.log_softmax(logits_NxV, axis=-1).reshape(batch, k, vocab)
        totals_BxKV = (state["alive_logp_BxK"][:, :, None] + logp_BxKxV).reshape(batch, k * vocab)
        top_logp_Bx2K, top_index_Bx2K = jax.lax.top_k(totals_BxKV, 2 * k)
        parent_Bx2K, token_Bx2K = top_index_Bx2K // vocab, (top_index_Bx2K % vocab).astype(jnp.int32)
        seqs_Bx2KxN = gather(state["alive_BxKxN"], parent_Bx2K)
        seqs_Bx2KxN = jax.lax.dynamic_update_slice(seqs_Bx2KxN, token_Bx2K[:, :, None], (0, 0, step))
        ends_Bx2K = (token_Bx2K == eos) | (step == n - 1)
        # alive: the best K continuations that did not end
        running_Bx2K = top_logp_Bx2K + jnp.where(ends_Bx2K, BIG_NEG, 0.0)
        alive_logp_BxK, pick_BxK = jax.lax.top_k(running_Bx2K, k)
        alive_BxKxN, alive_parent_BxK = gather(seqs_Bx2KxN, pick_BxK), gather(parent_Bx2K, pick_BxK)
        # finished: endings ranked in the top K, unless the row can no longer improve / is full (early_stopping)
        new_finished_Bx2K = ends_Bx2K & (jnp.arange(2 * k) < k)[None]
        candidate_Bx2K = top_logp_Bx2K / config.penalty(step + 1)
        blocked_Bx1 = ~state["improvable_B"][:, None]
        if config.early_stopping is True:
            blocked_Bx1 |= jnp.all(state["finished_flag_BxK"], axis=1, keepdims=True)
        candidate_Bx2K += jnp.where(blocked_Bx1, BIG_NEG, 0.0) + jnp.where(new_finished_Bx2K, 0.0, BIG_NEG)
        merged_score = jnp.concatenate([state["finished_score_BxK"], candidate_Bx2K], axis=1)
        merged_seqs = jnp.concatenate([state["finished_BxKxN"], seqs_Bx2KxN], axis=1)
        merged_flag = jnp.concatenate([state["finished_flag_BxK"], new_finished_Bx2K], axis=1)
        finished_score_BxK, keep_BxK = jax.lax.top_k(merged_score, k)
        finished_flag_BxK = gather(merged_flag, keep_BxK)
        # can an alive beam still beat the worst finished one?
        if config.early_stopping == "never" and config.length_penalty > 0:
            best_length = n
        else:
            best_length = step + 1
        best_alive_B = alive_logp_BxK[:, 0] / config.penalty(best_length)
        worst_finished_B = jnp.where(jnp.all(finished_flag_BxK, axis=1), finished_score_BxK.min(axis=1), BIG_NEG)
        out = {**state, "alive_BxKxN": alive_BxKxN, "alive_logp_BxK": alive_logp_BxK,
               "finished_BxKxN": gather(merged_seqs, keep_BxK), "finished_score_BxK": finished_score_BxK,
               "finished_flag_BxK": finished_flag_BxK,
               "improvable_B": state["improvable_B"] & (best_alive_B > worst_finished_B)}
        if config.use_cache:
            out["cache"] = adapter.reorder_cache(state["cache"], (jnp.arange(batch)[:, None] * k
                                                                  + alive_parent_BxK).reshape(-1))
        else:  # the token buffer plays the cache's part
            parents_N = (jnp.arange(batch)[:, None] * k + alive_parent_BxK).reshape(-1)
            out["buffer_BxS"] = jnp.take(state["buffer_BxS"], parents_N, axis=0)
        return out

    state = choose(state, expand(prefill.logits_BxV), 0)

    def cond(state):
        going = jnp.any(state["improvable_B"]) & (state["step"] < n)
        if config.early_stopping is True:
            going &= ~jnp.all(state["finished_flag_BxK"])
        return going

    def body(state):
        step = state["step"]
        prev_N = jax.lax.dynamic_slice_in_dim(state["alive_BxKxN"], step - 1, 1, axis=2).reshape(-1)
        logits_NxV, state = _feed(adapter, config, params, state, prev_N, step, prompt_len, context)
        state = choose(state, logits_NxV, step)
        return {**state, "step": step + 1}

    state = jax.lax.while_loop(cond, body, state)
    tokens_BxN = state["finished_BxKxN"][:, 0]
    is_eos_BxN = tokens_BxN == eos
    lengths_B = jnp.where(is_eos_BxN.any(-1), jnp.argmax(is_eos_BxN, axis=-1) + 1, n).astype(jnp.int32)
    return Generated(tokens_BxN, lengths_B, state["finished_score_BxK"][:, 0])
