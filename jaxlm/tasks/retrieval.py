"""Dense retrieval: a dual encoder (one backbone + embedding head for queries and passages) fine-tuned with
in-batch negatives, scored by exact nearest-neighbour search over a held-out corpus.

Loss: sentence-transformers' MultipleNegativesRankingLoss. For a global batch of B (query, positive[, hard
negatives]) rows the logits are scale x cosine(query_i, candidate_j) over every candidate of the *global* batch
(B positives, then each hard-negative column); the target of query i is positive i. The jitted step sees the
global arrays, so GSPMD gathers the candidates across devices itself: every query sees every device's
positives, with no hand-written all-gather. Optional symmetric term (MultipleNegativesSymmetricRankingLoss):
each positive also picks its query among the batch's queries.

Data: (query, positive[, negative]) TSV / CSV / JSONL files, TFDS datasets with those features, or SQuAD v1.1
read as its questions over its paragraphs (split by article with config.data.heldout_every, so no paragraph is
in both splits). The dev corpus is every distinct passage of the dev split; a query's relevant passages are the
positives of every row with the same query text.

Dev metrics: recall@1/5/10, MRR@10, nDCG@10 (jaxlm.tasks.metrics.retrieval_scores) and the loss of the query
against the whole corpus (cross-entropy of scale x cosine over all passages).
"""
from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxlm import sharding as shd
from jaxlm.models import family_of
from jaxlm.tasks import metrics as task_metrics
from jaxlm.tasks import readers
from jaxlm.tasks.base import TaskSpec, column, logged, normalized_format, weights_of
from jaxlm.tasks.embedding import (
    EmbeddingTask,
    Encoder,
    check_embedding_spec,
    cosine,
    embed_batch,
    l2_normalize,
    nearest,
    prefixed,
    rows_of,
    text_rows,
)
from jaxlm.tasks.features import MODEL_INPUT_KEYS

SEARCH_DEPTH = 10  # ranks the dev metrics read (recall@10, MRR@10, nDCG@10)


def prefixes(spec: TaskSpec) -> list[str]:
    """The row sets of a training batch: queries, their positives, and the hard negatives if the data has them."""
    return ["query", "positive"] + (["negative"] if spec.hard_negatives else [])


def ranking_loss(q_BxE, candidates_CxE, weights_B, *, scale: float, symmetric: bool = False,
                 positives_per_query: int = 1):
    """(loss, accuracy) of MultipleNegativesRankingLoss. candidates: the B positives, then each hard-negative
    column (B rows each); rows of weight 0 (batch padding) are neither queries nor candidates."""
    b = q_BxE.shape[0]
    q, c = l2_normalize(q_BxE.astype(jnp.float32)), l2_normalize(candidates_CxE.astype(jnp.float32))
    valid_C = jnp.tile(weights_B > 0, positives_per_query)
    logits_BxC = jnp.where(valid_C[None], scale * q @ c.T, -1e9)
    target_B = jnp.arange(b)
    gold_B = logits_BxC[target_B, target_B]
    ce_B = jax.nn.logsumexp(logits_BxC, axis=-1) - gold_B
    n = jnp.maximum(jnp.sum(weights_B), 1e-8)
    loss = jnp.sum(ce_B * weights_B) / n
    correct = jnp.sum((jnp.argmax(logits_BxC, -1) == target_B) * weights_B) / n
    if symmetric:  # each positive picks its query among the batch's queries
        logits_BxB = jnp.where((weights_B > 0)[None], logits_BxC[:, :b].T, -1e9)
        back_B = jax.nn.logsumexp(logits_BxB, axis=-1) - gold_B
        loss = (loss + jnp.sum(back_B * weights_B) / n) / 2
    return loss, correct


def corpus_of(examples) -> tuple[list[str], dict[str, int]]:
    """The distinct passages of a split (positives, then hard negatives, in order of first appearance)."""
    index: dict[str, int] = {}
    for e in examples:
        for text in ((e.positive,) if e.positive else ()) + tuple(e.negatives):
            index.setdefault(text, len(index))
    return list(index), index


def relevance(examples, index: dict[str, int]) -> dict[str, set[int]]:
    """query text -> the corpus rows of its positives (over every row with that query)."""
    out: dict[str, set[int]] = {}
    for e in examples:
        if e.positive:
            out.setdefault(e.query, set()).add(index[e.positive])
    return out


class RetrievalPredictor:
    """predictor(params, features) -> ({'query_embeddings', 'corpus_embeddings', 'top_ids', 'top_scores'}, loss
    of each labelled query against the whole corpus)."""

    def __init__(self, spec: TaskSpec, model, mesh, param_shardings, batch_size: int, rules=shd.DEFAULT_RULES):
        self.spec, self.mesh = spec, mesh
        self.encode = Encoder(model, mesh, param_shardings, batch_size, rules)

    def __call__(self, params, features):
        q = self.encode(params, rows_of(features, "query"))
        c = self.encode(params, rows_of(features, "corpus"))
        depth = max(self.spec.top_k, SEARCH_DEPTH)
        ids, scores, lse = nearest(q, c, depth, self.mesh, scale=self.spec.similarity_scale)
        gold = features["positive_corpus_index"]
        labelled = (gold >= 0) & (features["query_segment_ids"].any(1))
        loss = float("nan")
        if labelled.any():
            gold_cos = cosine(q[labelled], c[gold[labelled]])
            loss = float(np.mean(lse[labelled] - self.spec.similarity_scale * gold_cos))
        return {"query_embeddings": q, "corpus_embeddings": c, "top_ids": ids, "top_scores": scores}, loss


class RetrievalTask(EmbeddingTask):
    names: ClassVar[tuple[str, ...]] = ("retrieval",)
    formats: ClassVar[tuple[str, ...]] = ("pairs", "squad")

    def spec(self, config, family):
        d, e = config.data, config.embedding
        self.check_family(config.task, family)
        if config.train.num_microbatches > 1:
            raise ValueError(f"config.train.num_microbatches={config.train.num_microbatches}: a retrieval batch's "
                             "in-batch negatives would shrink to one microbatch (a different loss); use 1")
        spec = TaskSpec(task="retrieval", format=normalized_format(d.format), labels=None, pair=False,
                        style=d.style or family.text_style, max_len=d.max_len, max_query_len=d.max_query_len,
                        head_dropout=None, pooling=e.pooling, embedding_dim=e.dim, dense_activation=e.activation,
                        normalize=e.normalize, similarity_scale=e.scale, symmetric_loss=e.symmetric, top_k=e.top_k,
                        hard_negatives=bool(d.negative_column))
        check_embedding_spec(spec)
        return spec

    def check_fits(self, spec, model_config, tokenizer):
        super().check_fits(spec, model_config, tokenizer)
        table = family_of(model_config).max_length(model_config)
        if table is not None and spec.max_query_len > table:
            raise ValueError(f"config.data.max_query_len={spec.max_query_len} exceeds the {table} positions of the "
                             "model")

    def metric_names(self, spec):
        return task_metrics.RETRIEVAL_METRICS

    def best_metric(self, spec, override=""):
        return override or "ndcg@10"

    # ------------------------------------------------------------------ data
    def read_examples(self, spec, data, path="", *, split="", labelled=True, limit=0):
        if spec.format == "squad":
            questions = (logged(readers.read_squad(path, skip_bad_lines=data.skip_bad_lines)) if path else
                         logged(readers.tfds_examples(data.tfds_name, split, data.tfds_data_dir or None)))
            part = "all"
            if path and data.heldout_every > 0:  # one file, split by article: the training split, or held out
                part = "train" if split == data.train_split else "dev"
            examples = readers.squad_retrieval_examples(questions, part, data.heldout_every or 1)
            if not examples:
                raise ValueError(f"{path or data.tfds_name}: no questions in the {part!r} articles")
        elif path:
            examples = logged(readers.read_retrieval_pairs(
                path, column(data.query_column), column(data.positive_column), column(data.negative_column),
                header=data.header, skip_bad_lines=data.skip_bad_lines))
        elif data.tfds_name:
            pairs = logged(readers.tfds_examples(data.tfds_name, split, data.tfds_data_dir or None,
                                                 seq2seq_fields=(data.query_column, data.positive_column)))
            examples = [readers.RetrievalExample(p.guid, p.source, p.target) for p in pairs]
        else:
            raise ValueError("no data file given (config.data.train_file / eval_file) and no config.data.tfds_name")
        return examples[:limit] if limit else examples

    def examples_from_records(self, spec, records, source):
        """{"query": q} lines are searched; {"passage": p} lines (and any "positive" / "negatives" of a query
        line) make the corpus searched."""
        out = []
        for number, r in enumerate(records, 1):
            where = f"{source}:{number}"
            if not isinstance(r, dict) or not (isinstance(r.get("query"), str) or isinstance(r.get("passage"), str)):
                raise readers.BadInputError(f"{where}: expected a {{'query': ...}} or a {{'passage': ...}} object "
                                            f"(a retrieval model); got {str(r)[:200]}")
            if "query" in r:
                negative = r.get("negative")
                out.append(readers.RetrievalExample(where, r["query"].strip(), r.get("positive"),
                                                    (negative,) if negative else ()))
            else:
                out.append(readers.RetrievalExample(where, "", r["passage"]))
        if not any(e.positive or e.negatives for e in out):
            raise readers.BadInputError(f"{source}: no passages to search (add {{'passage': ...}} lines)")
        return out

    def features(self, spec, examples, tokenizer):
        """query_* rows [N, max_query_len]; positive_* and negative{j}_* rows [N, max_len] (unlabelled rows:
        padding); corpus_* rows [M, max_len], one per distinct passage; positive_corpus_index [N] (-1: none)."""
        if spec.hard_negatives and not all(e.negatives for e in examples if e.query and e.positive):
            raise ValueError("a retrieval run with hard negatives (config.data.negative_column) needs one on every "
                             "labelled row")
        corpus, index = corpus_of(examples)
        features = prefixed(text_rows([e.query for e in examples], tokenizer, spec.max_query_len, spec.style),
                            "query")
        features.update(prefixed(text_rows([e.positive or "" for e in examples], tokenizer, spec.max_len,
                                           spec.style), "positive"))
        if spec.hard_negatives:
            features.update(prefixed(text_rows([e.negatives[0] if e.negatives else "" for e in examples],
                                               tokenizer, spec.max_len, spec.style), "negative"))
        features.update(prefixed(text_rows(corpus or [""], tokenizer, spec.max_len, spec.style), "corpus"))
        features["positive_corpus_index"] = np.array([index[e.positive] if e.positive else -1 for e in examples],
                                                     np.int32)
        features["example_weights"] = np.array([1.0 if e.query and e.positive else 0.0 for e in examples],
                                               np.float32)
        features["example_index"] = np.arange(len(examples), dtype=np.int32)
        return features

    def device_keys(self, spec):
        return tuple(f"{p}_{k}" for p in prefixes(spec) for k in MODEL_INPUT_KEYS) + ("example_weights",)

    # ------------------------------------------------------------------ model
    def loss_fn(self, spec, model):
        def loss_fn(params, batch, rng):
            names = prefixes(spec)
            rngs = [None] * len(names) if rng is None else list(jax.random.split(rng, len(names)))
            q, *candidates = [embed_batch(model, params, rows_of(batch, p), r) for p, r in zip(names, rngs)]
            w = weights_of(batch, q.shape[:1])
            loss, accuracy = ranking_loss(q, jnp.concatenate(candidates), w, scale=spec.similarity_scale,
                                          symmetric=spec.symmetric_loss, positives_per_query=len(candidates))
            return loss, {"loss": loss, "accuracy": accuracy, "num_tokens": jnp.sum(w)}
        return loss_fn

    def predictor(self, spec, model, mesh, param_shardings, batch_size, tokenizer, rules=shd.DEFAULT_RULES):
        return RetrievalPredictor(spec, model, mesh, param_shardings, batch_size, rules)

    # ------------------------------------------------------------------ outputs
    def predictions(self, spec, examples, features, outputs):
        corpus, _ = corpus_of(examples)
        out = []
        for row, e in enumerate(examples):
            if not e.query:
                out.append({})
                continue
            top = zip(outputs["top_ids"][row][:spec.top_k], outputs["top_scores"][row][:spec.top_k])
            out.append({"passages": [{"rank": rank, "passage": corpus[int(i)], "score": float(s)}
                                     for rank, (i, s) in enumerate(top, 1)]})
        return out

    def metrics(self, spec, examples, features, outputs):
        _, index = corpus_of(examples)
        relevant = relevance(examples, index)
        if not relevant:
            raise ValueError("retrieval metrics: the examples have no positives")
        first_row: dict[str, int] = {}
        for row, e in enumerate(examples):
            if e.query in relevant:
                first_row.setdefault(e.query, row)
        queries = list(first_row)
        ranked = [outputs["top_ids"][first_row[q]] for q in queries]
        return task_metrics.retrieval_scores(ranked, [relevant[q] for q in queries], cutoff=SEARCH_DEPTH)

    def train_flops_per_example(self, spec, model_config):
        family = family_of(model_config)
        passages = 2 if spec.hard_negatives else 1
        return (family.backbone_train_flops(model_config, tokens=spec.max_query_len)
                + passages * family.backbone_train_flops(model_config, tokens=spec.max_len))
