"""Sentence embeddings of any run: `python -m jaxlm.embed --checkpoint RUN --input texts.jsonl --output emb.npy`.

RUN is an embedding model (a `retrieval` or `similarity` fine-tuning run, or a sentence-transformers directory
imported with `python -m jaxlm.convert from-hf`): its own pooling, dense projection and normalisation are used.
Any other run with a backbone (a pretraining run, a Hugging Face import, a fine-tuning run of another task) is
embedded by pooling its backbone (--pooling, default mean; --normalize).

Input: JSONL with a "text" field per line (--field to name another), or a text file with one text per line
(any extension but .jsonl / .json). Output: a float32 .npy [N, E] in the input's order. Texts are embedded on
the mesh, longest first, each batch cut to a bucketed width (jaxlm.tasks.embedding.Encoder), with a progress bar.

From a notebook: `embedder = jaxlm.embed.load(RUN); embedder.encode(texts)`, or `jaxlm.embed.encode(texts, RUN)`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

import jax
import numpy as np
from absl import app, flags

from jaxlm import sharding as shd
from jaxlm import workdir as wd
from jaxlm.cli import setup_command
from jaxlm.models import family_of
from jaxlm.models.common import unbox
from jaxlm.paths import open_text
from jaxlm.tasks import BadInputError
from jaxlm.tasks.base import TaskSpec
from jaxlm.tasks.embedding import EMBEDDING_TASKS, Encoder, text_rows
from jaxlm.tasks.finetuning import load_finetuned
from jaxlm.tasks.registry import get_task

DEFAULT_MAX_LEN = 512


@dataclasses.dataclass
class Embedder:
    """An embedding model on a mesh: `encode(texts) -> [N, E]` float32 numpy."""
    spec: TaskSpec
    model: Any
    params: Any
    tokenizer: Any
    mesh: Any
    param_shardings: Any
    batch_size: int = 32
    source: str = ""
    _encoders: dict = dataclasses.field(default_factory=dict, repr=False)  # batch size -> Encoder (compiled once)

    def _encoder(self, batch_size: int) -> Encoder:
        """One Encoder (one jitted function) per batch size, kept: a second encode() compiles nothing new."""
        if batch_size not in self._encoders:
            self._encoders[batch_size] = Encoder(self.model, self.mesh, self.param_shardings, batch_size)
        return self._encoders[batch_size]

    @property
    def max_len(self) -> int:
        return self.spec.max_len

    def encode(self, texts: Sequence[str], batch_size: int | None = None, *, progress: bool = False,
               max_len: int | None = None) -> np.ndarray:
        """Embeddings of `texts` (cut to max_len tokens, default the model's), in order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), np.float32)
        rows = text_rows(texts, self.tokenizer, max_len or self.spec.max_len, self.spec.style)
        bar = None
        if progress and jax.process_index() == 0:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(texts), unit="text", desc="embed")
        encoder = self._encoder(batch_size or self.batch_size)
        encoder.progress = bar.update if bar is not None else None
        try:
            return encoder(self.params, rows)
        finally:
            if bar is not None:
                bar.close()


def load(checkpoint: str, step: int | None = None, *, pooling: str = "", normalize: bool | None = None,
         max_len: int = 0, batch_size: int = 32, mesh=None) -> Embedder:
    """The embedding model of a run (see the module docstring). pooling / normalize / max_len override the
    run's own (for a run without an embedding head: mean, no normalisation, min(512, the position table))."""
    mesh = mesh or shd.make_mesh()
    saved = wd.read_config(checkpoint, step)
    task_name = ((saved or {}).get("task_spec") or {}).get("task")
    if task_name in EMBEDDING_TASKS:
        run = load_finetuned(checkpoint, step, mesh=mesh)
        spec, model, params, tokenizer, shardings = run.spec, run.model, run.params, run.tokenizer, run.param_shardings
        overrides = {k: v for k, v in (("pooling", pooling), ("normalize", normalize), ("max_len", max_len)) if v}
        if overrides:
            spec = dataclasses.replace(spec, **overrides)
            model = run.task.model(spec, run.model_config)
    else:
        model_config, saved = wd.read_model_config(checkpoint, step)
        family = family_of(model_config)
        table = family.max_length(model_config) or DEFAULT_MAX_LEN
        spec = TaskSpec(task="retrieval", format="pairs", labels=None, pair=False, style=family.text_style,
                        max_len=max_len or min(DEFAULT_MAX_LEN, table), pooling=pooling or "mean",
                        normalize=bool(normalize))
        task = get_task("retrieval")
        model = task.model(spec, model_config)
        init_batch = task.init_batch(spec)
        target = wd.abstract_params(model, init_batch, mesh)
        shardings = jax.tree.map(lambda a: a.sharding, target)
        with shd.mesh_context(mesh):
            initial = jax.jit(lambda: unbox(model.init(jax.random.key(0), **init_batch))["params"],
                              out_shardings=shardings)()
        params, _ = wd.restore_backbone(initial, checkpoint, step=step, verbose=False)
        tokenizer, _ = wd.tokenizer_of(checkpoint, saved, family.name)
    return Embedder(spec, model, params, tokenizer, mesh, shardings, batch_size, source=os.fspath(checkpoint))


_LOADED: dict[tuple, Embedder] = {}


def encode(texts: Sequence[str], checkpoint: str, **load_options) -> np.ndarray:
    """`load(checkpoint, **load_options).encode(texts)`, the model kept loaded for the next call."""
    key = (os.fspath(checkpoint), tuple(sorted(load_options.items())))
    if key not in _LOADED:
        _LOADED[key] = load(checkpoint, **load_options)
    return _LOADED[key].encode(texts)


def read_texts(path: str, field: str = "text") -> list[str]:
    """The texts of a JSONL file (`field` of each object) or of a plain text file (one per line)."""
    texts = []
    jsonl = path.endswith((".jsonl", ".json"))
    with open_text(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if not jsonl:
                texts.append(line.rstrip("\r\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise BadInputError(f"{path}:{number}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise BadInputError(f"{path}:{number}: expected an object with a string {field!r} (--field); got "
                                    f"{line.strip()[:200]}")
            texts.append(record[field])
    if not texts:
        raise BadInputError(f"{path}: no texts")
    return texts


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_command()
    f = flags.FLAGS
    texts = read_texts(f.input, f.field)
    embedder = load(f.checkpoint, None if f.step < 0 else f.step, pooling=f.pooling,
                    normalize=True if f.normalize else None, max_len=f.max_len, batch_size=f.batch_size)
    embeddings = embedder.encode(texts, progress=True)
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(os.path.abspath(f.output)), exist_ok=True)
        np.save(f.output, embeddings)
        print(f"{len(texts)} embeddings of size {embeddings.shape[1]} ({embedder.spec.pooling} pooling"
              f"{', normalised' if embedder.spec.normalize else ''}) written to {f.output}")


def cli():
    flags.DEFINE_string("checkpoint", None, "A run: an embedding fine-tuning run or import, or any run with a "
                        "backbone.")
    flags.DEFINE_string("input", None, "JSONL (one object with a text field per line) or a text file.")
    flags.DEFINE_string("output", None, "The .npy file to write ([N, E] float32).")
    flags.DEFINE_string("field", "text", "The JSONL field holding the text.")
    flags.DEFINE_integer("step", -1, "Checkpoint step (default: the best dev step of a fine-tuning run, else the "
                         "latest).")
    flags.DEFINE_string("pooling", "", "cls | mean | max | mean_sqrt_len | last ('' = the run's own, or mean).")
    flags.DEFINE_bool("normalize", False, "L2-normalise the embeddings (on for runs that do already).")
    flags.DEFINE_integer("max_len", 0, "Tokens per text (0 = the run's own, or min(512, the position table)).")
    flags.DEFINE_integer("batch_size", 32, "Texts per batch (a multiple of the data x fsdp mesh axes).")
    for name in ("checkpoint", "input", "output"):
        flags.mark_flag_as_required(name)
    try:
        app.run(main)
    except (BadInputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    cli()
