"""jaxlm checkpoints in EleutherAI's lm-evaluation-harness (`pip install 'jaxlm[eval]'`).

    python -m jaxlm.eval_harness run --model jaxlm --model_args checkpoint=RUN,batch_size=16 --tasks lambada_openai

is lm-eval's own command line (`lm_eval run ...`, every flag of it) with the model `jaxlm` registered first:
lm-eval has no plugin hook for models from other packages, so `lm_eval --model jaxlm` alone cannot find it.
From Python, `lm_eval.simple_evaluate(model=JaxlmLM(checkpoint=RUN), tasks=[...])` after importing this module.

`JaxlmLM` serves GPT-2 (causal) and T5 (seq2seq) runs: a pretraining run, an import
(`python -m jaxlm.convert from-hf`) or a text-to-text fine-tuning run. It follows lm-eval's `hf` model request
by request, so the same checkpoint scores the same under both: contexts left-truncated to the model's length,
T5 contexts ending with EOS and continuations without, rolling log-likelihoods over lm-eval's own disjoint windows
(lm_eval.utils.get_rolling_token_windows), generations cut at the first stop sequence with lm-eval's own
post-processing. Requests are scored in fixed-size batches on the mesh, longest first, each batch padded to a
bucketed width (powers of two), so only a few shapes compile; request order and caching stay lm-eval's.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from jaxlm import sharding as shd
from jaxlm.decoding import GenerationConfig, adapter_for, generate, pad_prompts
from jaxlm.workdir import open_run

MIN_WIDTH = 16
DEFAULT_MAX_LENGTH = 512  # relative-position models (T5) have no table; HF's lm-eval reads 512 from T5's config


def bucket(length: int, cap: int) -> int:
    width = MIN_WIDTH
    while width < length:
        width *= 2
    return min(width, cap)


def _special(tokenizer, name: str):
    try:
        return getattr(tokenizer, name)
    except (AttributeError, ValueError):
        return None


@register_model("jaxlm")
class JaxlmLM(TemplateLM):
    """An lm-eval model over a jaxlm run. model_args: checkpoint (required), step, batch_size (rows per compiled
    batch, rounded up to the mesh's data x fsdp size), max_length (default: the position table, else 512),
    max_gen_toks (default 256, as lm-eval's hf), tokenizer (default: the run's)."""

    def __init__(self, checkpoint: str, step: int | str | None = None, batch_size: int | str = 8,
                 max_length: int | str | None = None, max_gen_toks: int | str = 256, tokenizer: str = "",
                 mesh=None, **unused):
        super().__init__()
        self.run = open_run(checkpoint, None if step in (None, "") else int(step), tokenizer=tokenizer, mesh=mesh)
        config, family = self.run.model_config, self.run.family
        if family.kind == "encoder":
            raise ValueError(f"{checkpoint}: a {family.name!r} model is a masked LM with no left-to-right "
                             "likelihood; lm-eval scores causal (GPT-2) and encoder-decoder (T5) models")
        self.backend = "seq2seq" if family.kind == "encoder_decoder" else "causal"
        self.tokenizer = self.run.tokenizer
        self.model = self.run.model
        self.config = config
        shards = self.run.mesh.shape["data"] * self.run.mesh.shape["fsdp"]
        rows = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.batch_size = -(-rows // shards) * shards
        self._max_length = int(max_length) if max_length else (family.max_length(config) or DEFAULT_MAX_LENGTH)
        self.max_gen_toks = int(max_gen_toks)
        self._eos = _special(self.tokenizer, "eos_id")
        if self._eos is None:
            raise ValueError(f"{checkpoint}: the tokenizer has no EOS token, which lm-eval needs (end of text)")
        self._scores = {}  # compiled scoring functions by shape

    # ------------------------------------------------------------------ lm-eval's tokenization hooks
    @property
    def eot_token_id(self) -> int:
        return self._eos

    @property
    def prefix_token_id(self) -> int:
        bos = _special(self.tokenizer, "bos_id")
        return self._eos if bos is None else bos

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """As lm-eval's hf: no special tokens for a causal model; T5's EOS after a context (the default) but not
        after a continuation (add_special_tokens=False)."""
        ids = list(self.tokenizer.encode(string))
        if self.backend == "seq2seq" and add_special_tokens is not False:
            ids.append(self._eos)
        return ids

    def tok_decode(self, ids: Sequence[int]) -> str:
        """Text of generated ids without special tokens (as hf's skip_special_tokens), and without ids past the
        tokenizer (rows a padded embedding table adds, which T5's HF tokenizer calls extra ids and skips too)."""
        special, size = set(self.tokenizer.special_ids), self.tokenizer.vocab_size
        return self.tokenizer.decode([int(i) for i in ids if int(i) not in special and int(i) < size])

    # ------------------------------------------------------------------ scoring
    def _score_fn(self):
        """(sum of target log-probs, all targets greedy) per row; one jitted function, compiled per shape."""
        model, seq2seq = self.model, self.backend == "seq2seq"

        def score(params, batch):
            if seq2seq:
                logits = model.apply({"params": params}, batch["inputs"], batch["decoder_inputs"],
                                     batch["segment_ids"], batch["decoder_segment_ids"])
            else:
                logits = model.apply({"params": params}, batch["inputs"], segment_ids=batch["segment_ids"])
            logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
            target_logp = jnp.take_along_axis(logp, batch["targets"][..., None], axis=-1)[..., 0]
            mask = batch["target_mask"]
            greedy = (jnp.argmax(logits, axis=-1) == batch["targets"]) | ~mask
            return jnp.sum(jnp.where(mask, target_logp, 0.0), axis=-1), jnp.all(greedy, axis=-1)

        if "score" not in self._scores:
            sharding = shd.batch_sharding(self.run.mesh)
            shardings = jax.tree.map(lambda a: a.sharding, self.run.params)
            self._scores["score"] = jax.jit(score, in_shardings=(shardings, sharding),
                                            out_shardings=shd.replicated(self.run.mesh))
        return self._scores["score"]

    def _rows(self, context: list[int], continuation: list[int]):
        """(inputs, targets, target positions) of one request, as lm-eval's hf lays it out."""
        if self.backend == "causal":
            whole = (context + continuation)[-(self.max_length + 1):]
            inputs, targets = whole[:-1], whole[1:]
            return {"inputs": inputs, "targets": targets, "first_target": len(inputs) - len(continuation)}
        cont = continuation[-self.max_length:]
        return {"inputs": context[-self.max_length:], "decoder_inputs": [self.config.decoder_start_token_id]
                + cont[:-1], "targets": cont, "first_target": 0}

    def _batch(self, rows: list[dict]) -> dict[str, np.ndarray]:
        n = self.batch_size
        width = bucket(max(len(r["inputs"]) for r in rows), max(self.max_length, MIN_WIDTH))
        batch = {"inputs": np.zeros((n, width), np.int32), "segment_ids": np.zeros((n, width), np.int32)}
        target_width = width
        if self.backend == "seq2seq":
            target_width = bucket(max(len(r["targets"]) for r in rows), max(self.max_length, MIN_WIDTH))
            batch["decoder_inputs"] = np.zeros((n, target_width), np.int32)
            batch["decoder_segment_ids"] = np.zeros((n, target_width), np.int32)
        batch["targets"] = np.zeros((n, target_width), np.int32)
        batch["target_mask"] = np.zeros((n, target_width), bool)
        for i, r in enumerate(rows):
            batch["inputs"][i, :len(r["inputs"])] = r["inputs"]
            batch["segment_ids"][i, :len(r["inputs"])] = 1
            if self.backend == "seq2seq":
                batch["decoder_inputs"][i, :len(r["decoder_inputs"])] = r["decoder_inputs"]
                batch["decoder_segment_ids"][i, :len(r["decoder_inputs"])] = 1
            batch["targets"][i, :len(r["targets"])] = r["targets"]
            batch["target_mask"][i, r["first_target"]:len(r["targets"])] = True
        return batch

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        rows = [self._rows(list(context), list(continuation)) for _, context, continuation in requests]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["inputs"]))
        score = self._score_fn()
        pending = []
        for start in range(0, len(order), self.batch_size):
            index = order[start:start + self.batch_size]
            batch = self._batch([rows[i] for i in index])
            with shd.mesh_context(self.run.mesh, self.run.rules):
                global_batch = shd.host_local_to_global(batch, self.run.mesh, shd.batch_sharding(self.run.mesh))
                pending.append((index, score(self.run.params, global_batch)))
        results: list[tuple[float, bool] | None] = [None] * len(rows)
        for index, out in tqdm(pending, disable=disable_tqdm, desc="loglikelihood batches"):
            logp, greedy = jax.device_get(out)
            for j, i in enumerate(index):
                results[i] = (float(logp[j]), bool(greedy[j]))
        for (strings, _, _), answer in zip(requests, results):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """The log-likelihood of each whole text over lm-eval's disjoint windows (the first token conditioned on
        the prefix token), as lm-eval's hf computes it."""
        windows, owners = [], []
        for n, (string,) in enumerate(req.args for req in requests):
            for window in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None,) + window)
                owners.append(n)
        totals = [0.0] * len(requests)
        for owner, (logp, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[owner] += logp
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations, cut at the first of `until` (EOS included) by
        lm-eval's own post-processing; batched by identical generation settings, longest context first."""
        adapter = adapter_for(self.config)
        eos_text = self.tokenizer.decode([self._eos])
        groups: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(n)
        out: list[str | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="generate_until")
        for members in groups.values():
            kwargs = normalize_gen_kwargs(dict(requests[members[0]].args[1]), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            max_new = int(kwargs.pop("max_gen_toks"))
            sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0.0) > 0
            config = GenerationConfig(max_new_tokens=max_new, strategy="sample" if sample else "greedy",
                                      temperature=float(kwargs.get("temperature") or 1.0) if sample else 1.0,
                                      eos_id=self._eos, pad_id=self.config.pad_token_id)
            room = self.max_length if self.backend == "seq2seq" else self.max_length - max_new
            if room <= 0:
                raise ValueError(f"max_gen_toks={max_new} leaves no room for a context in the model's "
                                 f"{self.max_length} positions")
            contexts = {n: self.tok_encode(requests[n].args[0])[-room:] or [self.prefix_token_id] for n in members}
            order = sorted(members, key=lambda n: -len(contexts[n]))
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                prompts = [contexts[n] for n in index]
                prompts += [prompts[-1]] * (self.batch_size - len(prompts))
                width = bucket(max(map(len, prompts)), room)
                tokens, mask = pad_prompts(prompts, self.config.pad_token_id,
                                           "right" if self.backend == "seq2seq" else "left", width)
                with shd.mesh_context(self.run.mesh, self.run.rules):
                    generated = generate(adapter, self.run.params, tokens, mask, config=config,
                                         rng=jax.random.key(start))
                ids, lengths = jax.device_get((generated.tokens, generated.lengths))
                for j, n in enumerate(index):
                    text = postprocess_generated_text(generation=self.tok_decode(ids[j, :lengths[j]]), stop=until,
                                                      think_end_token=None)
                    out[n] = text
                    self.cache_hook.add_partial("generate_until", requests[n].args, text)
                    bar.update(1)
        bar.close()
        return out
