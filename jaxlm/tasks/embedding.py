"""Sentence embeddings over any jaxlm backbone, shared by the retrieval and similarity tasks and `jaxlm.embed`.

The head is sentence-transformers' module chain after the transformer: Pooling (jaxlm.layers.pooling, over the
real tokens) -> optional Dense (a projection with an activation, Tanh by default) -> optional Normalize (L2).
Outputs {'embeddings': [B, E] float32}. Its params live under `head/dense` (kernel [D_pooled, E], bias [E]).

`Encoder` embeds a text set on the mesh: rows sorted by length and each batch cut to a bucketed width, so that
short texts do not pay for max_len and only a few shapes compile. `nearest` is exact cosine search on the mesh:
the corpus sharded over every device, queries in fixed-size chunks.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd
from jaxlm import workdir as wd
from jaxlm.layers.mlp import ACTIVATIONS
from jaxlm.layers.pooling import parse_pooling, pool
from jaxlm.tasks.base import Task, TaskSpec, apply_model, dense
from jaxlm.tasks.batches import iterate_batches
from jaxlm.tasks.features import MODEL_INPUT_KEYS, classification_features
from jaxlm.tasks.readers import TextExample

# sentence-transformers' Dense activations by torch class path <-> jaxlm's names.
DENSE_ACTIVATIONS = {"tanh": jnp.tanh, "identity": lambda x: x, "relu": ACTIVATIONS["relu"],
                     "gelu": ACTIVATIONS["gelu"], "sigmoid": jax.nn.sigmoid}
MIN_BUCKET = 16  # the narrowest compiled width; widths double up to the rows' full width


def check_embedding_spec(spec: TaskSpec) -> None:
    """Config errors before any compile, naming the config.embedding key."""
    parse_pooling(spec.pooling)
    if spec.dense_activation not in DENSE_ACTIVATIONS:
        raise ValueError(f"config.embedding.activation={spec.dense_activation!r}; choose one of "
                         f"{sorted(DENSE_ACTIVATIONS)}")
    if spec.embedding_dim < 0:
        raise ValueError(f"config.embedding.dim={spec.embedding_dim}: 0 (no dense projection) or a positive size")


def l2_normalize(x, axis=-1):
    """torch.nn.functional.normalize: x / max(||x||, 1e-12)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


class EmbeddingHead(nn.Module):
    config: Any
    pooling: str = "mean"
    embedding_dim: int = 0
    activation: str = "tanh"
    normalize: bool = False

    @nn.compact
    def __call__(self, hidden_BxLxD, pooled_BxD, segment_ids_BxL, *, deterministic=True):
        emb_BxE = pool(hidden_BxLxD, segment_ids_BxL != 0, parse_pooling(self.pooling))
        if self.embedding_dim:
            emb_BxE = DENSE_ACTIVATIONS[self.activation](
                dense(self.config, self.embedding_dim, "dense", axes=(None, None))(emb_BxE).astype(jnp.float32))
        if self.normalize:
            emb_BxE = l2_normalize(emb_BxE)
        return {"embeddings": emb_BxE.astype(jnp.float32)}


EMBEDDING_TASKS = ("retrieval", "similarity")
HEAD_FIELDS = ("pooling", "embedding_dim", "dense_activation", "normalize")


def inherited_head(spec: TaskSpec, config, saved: dict | None) -> TaskSpec:
    """An embedding init checkpoint (an imported sentence-transformers model, an earlier retrieval / similarity
    run) keeps its pooling, dense projection and normalisation unless config.embedding.from_checkpoint=False."""
    own = (saved or {}).get("task_spec") or {}
    if not config.embedding.from_checkpoint or own.get("task") not in EMBEDDING_TASKS:
        return spec
    return dataclasses.replace(spec, **{k: own[k] for k in HEAD_FIELDS if k in own})


def restored_head(spec: TaskSpec, params: dict, init: str, step: int | None) -> dict:
    """Params with head/dense read from an embedding init checkpoint of the same head (onto the shardings of
    the freshly initialised one); any other checkpoint leaves the head as initialised."""
    if "dense" not in params.get("head", {}):
        return params
    stored = wd.stored_param_shapes(init, step)
    have = (stored.get("head") or {}).get("dense")
    if have is None:
        return params
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          params["head"]["dense"])
    shapes = {k: tuple(v.shape) for k, v in have.items()}
    wanted = {k: tuple(v.shape) for k, v in target.items()}
    if shapes != wanted:
        raise ValueError(f"{init}: its embedding head's dense layer has shapes {shapes}, the model's {wanted} "
                         "(set config.embedding.from_checkpoint=False for a new head)")
    dense, _, _ = wd.read_params(init, step, target=target, subtree=("head", "dense"))
    return {**params, "head": {**params["head"], "dense": dense}}


def embedding_head(spec: TaskSpec, model_config) -> EmbeddingHead:
    return EmbeddingHead(model_config, spec.pooling, spec.embedding_dim, spec.dense_activation, spec.normalize)


class EmbeddingTask(Task):
    """What the embedding tasks (retrieval, similarity) share: the embedding head, kept from an embedding init
    checkpoint, on any backbone kind (T5: its encoder)."""
    kinds: ClassVar[tuple[str, ...]] = ("encoder", "decoder", "encoder_decoder")

    def with_init_checkpoint(self, spec, config, saved):
        return inherited_head(spec, config, saved)

    def restore_head(self, spec, params, init, step):
        return restored_head(spec, params, init, step)

    def head(self, spec, model_config):
        return embedding_head(spec, model_config)


def text_rows(texts: Sequence[str], tokenizer, max_len: int, style: str) -> dict[str, np.ndarray]:
    """One model row per text ([CLS] text [SEP] in BERT's style), cut to max_len tokens."""
    examples = [TextExample(f"text:{i}", t) for i, t in enumerate(texts)]
    features = classification_features(examples, tokenizer, max_len, style=style)
    return {k: features[k] for k in MODEL_INPUT_KEYS}


def prefixed(rows: dict, prefix: str) -> dict:
    return {f"{prefix}_{k}": v for k, v in rows.items()}


def rows_of(batch: dict, prefix: str) -> dict:
    """The model rows stored under `prefix` (query_inputs, query_segment_ids, ... -> inputs, segment_ids, ...)."""
    return {k: batch[f"{prefix}_{k}"] for k in MODEL_INPUT_KEYS}


def embed_batch(model, params, batch: dict, rng=None):
    """[B, E] embeddings of a batch of model rows (inputs, segment_ids, positions, token_types)."""
    return apply_model(model, params, batch, rng)["embeddings"]


def bucket_width(length: int, full: int) -> int:
    width = MIN_BUCKET
    while width < length:
        width *= 2
    return min(width, full)


class Encoder:
    """encoder(params, rows) -> [N, E] numpy embeddings of every row, in the rows' order."""

    def __init__(self, model, mesh, param_shardings, batch_size: int, rules=shd.DEFAULT_RULES, progress=None):
        self.mesh, self.batch_size, self.rules, self.progress = mesh, batch_size, rules, progress
        self.batch_sharding = shd.batch_sharding(mesh)
        self.jitted = jax.jit(lambda params, batch: embed_batch(model, params, batch),
                              in_shardings=(param_shardings, self.batch_sharding), out_shardings=shd.replicated(mesh))

    def __call__(self, params, rows: dict[str, np.ndarray]) -> np.ndarray:
        n, full = rows["inputs"].shape
        lengths = (rows["segment_ids"] != 0).sum(1)
        # Longest first: each batch's width is its first row's, rounded up to a bucket.
        order = np.argsort(-lengths, kind="stable")
        pending = []
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            width = bucket_width(int(lengths[index[0]]), full)
            chunk = {k: rows[k][index, :width] for k in MODEL_INPUT_KEYS}
            for batch in iterate_batches(chunk, self.batch_size, process_index=jax.process_index(),
                                         process_count=jax.process_count()):
                with shd.mesh_context(self.mesh, self.rules):
                    pending.append((index, self.jitted(params, shd.host_local_to_global(batch, self.mesh,
                                                                                        self.batch_sharding))))
        out = None
        for index, embeddings in pending:
            embeddings = np.asarray(jax.device_get(embeddings))[:len(index)]
            if out is None:
                out = np.zeros((n, embeddings.shape[1]), np.float32)
            out[index] = embeddings
            if self.progress is not None:
                self.progress(len(index))
        return np.zeros((0, 0), np.float32) if out is None else out


def nearest(queries: np.ndarray, corpus: np.ndarray, k: int, mesh, *, scale: float = 1.0, chunk: int = 256):
    """Exact cosine nearest neighbours: (ids [Nq, k] int, cosines [Nq, k], logsumexp over the corpus of
    scale * cosine [Nq]). The corpus lies on the mesh sharded by rows over every device; each chunk of `chunk`
    queries is one [chunk, Nc] matrix product and top-k there, so memory grows with the chunk, not with Nq."""
    nq, nc = len(queries), len(corpus)
    k = min(k, nc)
    devices = mesh.devices.size
    padded = -(-nc // devices) * devices
    corpus_n = np.zeros((padded, corpus.shape[1]), np.float32)
    corpus_n[:nc] = corpus / np.maximum(np.linalg.norm(corpus, axis=1, keepdims=True), 1e-12)
    valid = np.arange(padded) < nc
    every_device = tuple(mesh.axis_names)
    corpus_d = jax.device_put(corpus_n, NamedSharding(mesh, P(every_device, None)))
    valid_d = jax.device_put(valid, NamedSharding(mesh, P(every_device)))

    @jax.jit
    def search(q_CxE, corpus_NxE, valid_N):
        q_CxE = l2_normalize(q_CxE)
        cos_CxN = jnp.where(valid_N[None], q_CxE @ corpus_NxE.T, -jnp.inf)
        top, ids = jax.lax.top_k(cos_CxN, k)
        return ids, top, jax.nn.logsumexp(scale * cos_CxN, axis=-1)

    ids, cosines, lse = [], [], []
    pending = []
    for start in range(0, nq, chunk):
        q = np.zeros((chunk, queries.shape[1]), np.float32)
        part = queries[start:start + chunk]
        q[:len(part)] = part
        pending.append((len(part), search(q, corpus_d, valid_d)))
    for count, result in pending:
        i, c, s = jax.device_get(result)
        ids.append(i[:count])
        cosines.append(c[:count])
        lse.append(s[:count])
    if not pending:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros((0,), np.float32)
    return np.concatenate(ids), np.concatenate(cosines), np.concatenate(lse)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [N, E] arrays."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)
