"""Sentence embeddings and retrieval: pooling, the in-batch ranking loss (against a direct computation, padding
rows, a batch sharded over 8 devices vs one device), exact search on the mesh, ranking metrics, the retrieval
readers and SQuAD's split by article; end to end, a tiny pretrained BERT fine-tuned as a dual encoder on the
SQuAD train articles beats itself before fine-tuning on the held-out articles, with evaluate / predict / embed."""
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlm import sharding as shd
from jaxlm.config_defaults import finetune_config, load_config_file
from jaxlm.layers.pooling import parse_pooling, pool
from jaxlm.models import get_family, get_model_config
from jaxlm.tasks import BadInputError, TaskSpec, get_task, readers
from jaxlm.tasks.embedding import Encoder, embed_batch, nearest
from jaxlm.tasks.metrics import retrieval_scores
from jaxlm.tasks.retrieval import corpus_of, ranking_loss, relevance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
SQUAD = os.path.join(DATA, "squad", "dev-v1.1.json")
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64,
            vocab_size=300)
needs_squad = pytest.mark.skipif(not os.path.exists(SQUAD), reason=f"SQuAD dev file not found at {SQUAD} "
                                 "(../shared/data)")


# ----------------------------------------------------------------------------------------------------------------
# Pooling

def test_pooling_modes_over_real_tokens_only():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, 5, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    out = np.asarray(pool(jnp.asarray(h), jnp.asarray(mask), ("cls", "mean", "max", "mean_sqrt_len", "last")))
    for b in range(2):
        real = h[b][mask[b] == 1]
        expected = np.concatenate([real[0], real.mean(0), real.max(0), real.sum(0) / np.sqrt(len(real)), real[-1]])
        np.testing.assert_allclose(out[b], expected, rtol=1e-6, atol=1e-6)
    assert parse_pooling("cls+mean") == ("cls", "mean")
    with pytest.raises(ValueError, match="unknown mode.*'avg'.*choose from"):
        parse_pooling("avg")


# ----------------------------------------------------------------------------------------------------------------
# The in-batch ranking loss

def mnrl_reference(q, c, scale=20.0, symmetric=False):
    """MultipleNegativesRankingLoss written out: cross-entropy of scale x cosine, query i's target candidate i."""
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    logits = scale * qn @ cn.T
    b = len(q)

    def ce(lg):
        lg = lg - lg.max(1, keepdims=True)
        return -(lg[np.arange(b), np.arange(b)] - np.log(np.exp(lg).sum(1))).mean()
    forward = ce(logits)
    return (forward + ce(logits[:, :b].T)) / 2 if symmetric else forward


@pytest.mark.parametrize("symmetric", [False, True])
def test_ranking_loss_equals_the_written_out_loss_and_ignores_padding_rows(symmetric):
    rng = np.random.default_rng(1)
    q, p, n = (rng.normal(size=(6, 8)).astype(np.float32) for _ in range(3))
    expected = mnrl_reference(q, np.concatenate([p, n]), symmetric=symmetric)
    loss, _ = ranking_loss(jnp.asarray(q), jnp.asarray(np.concatenate([p, n])), jnp.ones(6), scale=20.0,
                           symmetric=symmetric, positives_per_query=2)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    # Two padding rows (weight 0, random contents) change nothing: they are neither queries nor candidates.
    pad = rng.normal(size=(2, 8)).astype(np.float32)
    qp, pp, npad = (np.concatenate([x, pad]) for x in (q, p, n))
    padded, _ = ranking_loss(jnp.asarray(qp), jnp.asarray(np.concatenate([pp, npad])),
                             jnp.asarray([1.0] * 6 + [0.0] * 2), scale=20.0, symmetric=symmetric,
                             positives_per_query=2)
    np.testing.assert_allclose(float(padded), expected, rtol=1e-5)


def _tiny_retrieval(**spec_fields):
    config = get_model_config("bert", None, **TINY)
    spec = TaskSpec(task="retrieval", format="pairs", labels=None, pair=False, style="bert", max_len=16,
                    max_query_len=8, **spec_fields)
    task = get_task("retrieval")
    model = task.model(spec, config)
    params = jax.jit(lambda: model.init(jax.random.key(0), **task.init_batch(spec))["params"])()
    return task, spec, model, jax.tree.map(np.asarray, nn.unbox(params))


def _random_batch(task, spec, b, rng):
    batch = {}
    for prefix, width in (("query", spec.max_query_len), ("positive", spec.max_len)):
        lengths = rng.integers(2, width + 1, size=b)
        seg = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
        batch[f"{prefix}_inputs"] = (rng.integers(5, 300, size=(b, width)) * seg).astype(np.int32)
        batch[f"{prefix}_segment_ids"] = seg
        batch[f"{prefix}_positions"] = np.broadcast_to(np.arange(width, dtype=np.int32), (b, width)).copy()
        batch[f"{prefix}_token_types"] = np.zeros((b, width), np.int32)
    batch["example_weights"] = np.ones(b, np.float32)
    assert set(batch) == set(task.device_keys(spec))
    return batch


def test_in_batch_loss_sharded_over_8_devices_equals_one_device_and_sees_every_device():
    task, spec, model, params = _tiny_retrieval()
    batch = _random_batch(task, spec, 16, np.random.default_rng(2))
    loss_fn = task.loss_fn(spec, model)
    single, _ = jax.jit(loss_fn, static_argnums=2)(params, batch, None)
    mesh = shd.make_mesh(8, 1, 1)
    with shd.mesh_context(mesh):
        sharded_batch = shd.host_local_to_global(batch, mesh, shd.batch_sharding(mesh))
        sharded, _ = jax.jit(lambda p, b: loss_fn(p, b, None))(jax.device_put(params, shd.replicated(mesh)),
                                                               sharded_batch)
    np.testing.assert_allclose(float(sharded), float(single), rtol=1e-5)
    # Negatives from one device only (2 rows each) would be a much easier loss: the sharded loss is not that.
    local = np.mean([float(loss_fn(params, {k: v[i:i + 2] for k, v in batch.items()}, None)[0])
                     for i in range(0, 16, 2)])
    assert float(sharded) > local + 0.5, (float(sharded), local)


def test_encoder_buckets_lengths_without_changing_embeddings():
    task, spec, model, params = _tiny_retrieval(pooling="cls+mean", embedding_dim=12, normalize=True)
    rng = np.random.default_rng(3)
    batch = _random_batch(task, spec, 24, rng)
    rows = {k[len("positive_"):]: v for k, v in batch.items() if k.startswith("positive_")}
    direct = np.asarray(embed_batch(model, params, rows))
    mesh = shd.make_mesh(8, 1, 1)
    shardings = jax.tree.map(lambda _: shd.replicated(mesh), params)
    encoded = Encoder(model, mesh, shardings, batch_size=8)(params, rows)
    assert encoded.shape == (24, 12)
    np.testing.assert_allclose(np.linalg.norm(encoded, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(encoded, direct, atol=2e-6)


def test_nearest_on_the_mesh_equals_brute_force():
    rng = np.random.default_rng(4)
    queries, corpus = rng.normal(size=(37, 16)), rng.normal(size=(101, 16))  # neither divides the chunk / mesh
    ids, cos, lse = nearest(queries.astype(np.float32), corpus.astype(np.float32), 5, shd.make_mesh(8, 1, 1),
                            scale=20.0, chunk=16)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cn = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    full = qn @ cn.T
    np.testing.assert_array_equal(ids, np.argsort(-full, axis=1)[:, :5])
    np.testing.assert_allclose(cos, np.sort(full, axis=1)[:, ::-1][:, :5], atol=1e-5)
    np.testing.assert_allclose(lse, np.log(np.exp(20 * full).sum(1)), rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Metrics and readers

def test_retrieval_scores_by_hand():
    ranked = [[3, 1, 2], [0, 2, 1], [5, 6, 7]]
    relevant = [{1}, {1, 2}, {9}]
    scores = retrieval_scores(ranked, relevant, recall_at=(1, 2, 3), cutoff=3)
    assert scores["recall@1"] == pytest.approx(0.0)
    assert scores["recall@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert scores["recall@3"] == pytest.approx((1 + 1 + 0) / 3)
    assert scores["mrr@3"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    ideal2 = 1 + 1 / np.log2(3)
    assert scores["ndcg@3"] == pytest.approx((1 / np.log2(3) + (1 / np.log2(3) + 1 / np.log2(4)) / ideal2) / 3)


def test_pair_and_triplet_files_and_their_bad_lines(tmp_path):
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("query\tpositive\tnegative\nwho wrote it\tShe wrote it.\tIt rained.\nwhere\t\tx\n")
    with pytest.raises(BadInputError, match=r"pairs.tsv:3: empty positive \(column 'positive'\)"):
        readers.read_retrieval_pairs(tsv, "query", "positive", "negative")
    examples, stats = readers.read_retrieval_pairs(tsv, "query", "positive", "negative", skip_bad_lines=True)
    assert [(e.query, e.positive, e.negatives) for e in examples] == [("who wrote it", "She wrote it.",
                                                                       ("It rained.",))]
    assert stats.skipped == {"empty_text": 1}
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(json.dumps({"q": "a", "p": "b"}) + "\n" + json.dumps({"q": "c"}) + "\n")
    with pytest.raises(BadInputError, match=r"pairs.jsonl:2: missing key\(s\) \['p'\]"):
        readers.read_retrieval_pairs(jsonl, "q", "p")
    with pytest.raises(BadInputError, match="no column 'passage' for the positive"):
        readers.read_retrieval_pairs(tsv, "query", "passage")


def test_corpus_and_relevance_group_repeated_queries_and_passages():
    ex = [readers.RetrievalExample("1", "q1", "p1"), readers.RetrievalExample("2", "q1", "p2"),
          readers.RetrievalExample("3", "q2", "p1", ("p3",))]
    corpus, index = corpus_of(ex)
    assert corpus == ["p1", "p2", "p3"]
    assert relevance(ex, index) == {"q1": {0, 1}, "q2": {0}}


@needs_squad
def test_squad_retrieval_split_by_article_shares_no_paragraph():
    questions, _ = readers.read_squad(SQUAD)
    train = readers.squad_retrieval_examples(questions, "train", 5)
    dev = readers.squad_retrieval_examples(questions, "dev", 5)
    assert len(train) + len(dev) == len(questions) == 10570
    assert len({e.group for e in dev}) == 10 and len({e.group for e in train}) == 38
    assert not {e.positive for e in train} & {e.positive for e in dev}
    assert not {e.group for e in train} & {e.group for e in dev}


def test_retrieval_config_errors_name_the_key():
    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "retrieval_squad.py"))
    task = get_task("retrieval")
    with config.unlocked():
        config.embedding.pooling = "avg"
    with pytest.raises(ValueError, match="pooling='avg'"):
        task.spec(config, get_family("bert"))
    with config.unlocked():
        config.embedding.pooling = "mean"
        config.train.num_microbatches = 2
    with pytest.raises(ValueError, match="config.train.num_microbatches=2"):
        task.spec(config, get_family("bert"))
    assert "embedding" in finetune_config()


# ----------------------------------------------------------------------------------------------------------------
# End to end

def word_overlap_scores(examples) -> dict:
    """The lexical baseline: passages ranked by how many of the query's word types they contain."""
    import re

    corpus, index = corpus_of(examples)
    rel = relevance(examples, index)
    words = [set(re.findall(r"\w+", p.lower())) for p in corpus]
    ranked = [np.argsort([-len(set(re.findall(r"\w+", q.lower())) & w) for w in words], kind="stable")[:10]
              for q in rel]
    return retrieval_scores(ranked, list(rel.values()))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny BERT pretrained (MLM + NSP, 100 steps) on the embedded corpus, with a 2k sentencepiece vocab."""
    if not os.path.exists(SQUAD):
        pytest.skip(f"SQuAD dev file not found at {SQUAD}")
    from jaxlm import data, pretrain

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    source = data.load_data_source(data.prepare_pydoc(data_dir).name, "train", data_dir)
    texts = [bytes(source[i]["text"]).decode() for i in range(len(source))]
    questions, _ = readers.read_squad(SQUAD)
    texts += list(dict.fromkeys(q.context for q in questions))[:1500] + [q.question for q in questions[:4000]]
    prefix = str(tmp_path_factory.mktemp("tok") / "sp2k")
    data.train_tokenizer(iter(texts), prefix, 2000, input_sentence_size=30000)
    config = load_config_file(os.path.join(ROOT, "tests", "configs", "tiny.py") + ":bert")
    with config.unlocked():
        config.model.max_position_embeddings = 128
        config.data.data_dir = data_dir
        config.data.tokenizer = prefix + ".model"
        config.train.num_steps = 100
        config.train.checkpoint_every = 100
        config.train.log_every = 100
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    pretrain.run(config, workdir)
    return workdir


def retrieval_run(workdir, init, **overrides):
    from jaxlm import finetune

    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "retrieval_squad.py"))
    with config.unlocked():
        config.init_checkpoint = init
        config.data.max_len = 128
        config.data.max_query_len = 32
        config.optimizer.learning_rate = 1e-3
        config.train.batch_size = 64
        config.train.log_every = 100
        config.train.progress_bar = False
        for key, value in overrides.items():
            section, leaf = key.split(".")
            config[section][leaf] = value
    return finetune.run(config, str(workdir))


@needs_squad
@pytest.mark.slow
def test_dual_encoder_fine_tuning_on_squad_articles_with_evaluate_predict_and_embed(pretrained, tmp_path):
    from jaxlm import embed, evaluate, predict

    before = retrieval_run(tmp_path / "before", pretrained, **{"train.num_epochs": 0.0})["final_eval"]
    summary = retrieval_run(tmp_path / "after", pretrained, **{"train.num_steps": 250})
    after = summary["final_eval"]
    questions, _ = readers.read_squad(SQUAD)
    dev = readers.squad_retrieval_examples(questions, "dev", 5)
    overlap = word_overlap_scores(dev)
    random_recall10 = 10 / len(corpus_of(dev)[0])
    print(f"held-out articles ({len(dev)} questions, {len(corpus_of(dev)[0])} paragraphs): before {before}, "
          f"after {after}, word overlap {overlap}, random recall@10 {random_recall10:.3f}")
    assert summary["eval_examples"] == len(dev) and summary["train_examples"] == 10570 - len(dev)
    assert after["recall@10"] > before["recall@10"] + 0.15
    assert after["recall@10"] > 4 * random_recall10
    assert after["loss"] < before["loss"] - 0.5

    # evaluate re-scores the kept checkpoint on the same held-out split
    run_dir = str(tmp_path / "after")
    scores = evaluate.evaluate(run_dir)
    best = summary["best_eval"]
    assert scores["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-6)
    # predict: top-k passages of each query over the passages given
    passages = list(dict.fromkeys(e.positive for e in dev[:400]))
    assert len(passages) > 10
    records = [{"passage": p} for p in passages] + [{"query": e.query} for e in dev[:5]]
    out = predict.predict(run_dir, records)
    assert out[0] == {"passage": passages[0]}
    assert [len(r["passages"]) for r in out[-5:]] == [10] * 5
    assert all(r["passages"][0]["score"] >= r["passages"][1]["score"] for r in out[-5:])
    # jaxlm.embed: the same embeddings from the command line as from Python, unit-free cosine ranking intact
    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(json.dumps({"text": e.query}) + "\n" for e in dev[:20]))
    subprocess.run([sys.executable, "-m", "jaxlm.embed", f"--checkpoint={run_dir}", f"--input={texts}",
                    f"--output={tmp_path / 'emb.npy'}", "--batch_size=8"], check=True, cwd=ROOT)
    from_cli = np.load(tmp_path / "emb.npy")
    from_python = embed.load(run_dir).encode([e.query for e in dev[:20]])
    np.testing.assert_allclose(from_cli, from_python, atol=1e-5)
    # Any run with a backbone embeds too (mean pooling of the pretraining run's encoder).
    assert embed.load(pretrained).encode(["a question?", "an answer."]).shape == (2, 32)


def test_embed_reads_jsonl_and_text_files_and_names_bad_lines(tmp_path):
    from jaxlm.embed import read_texts

    (tmp_path / "a.txt").write_text("one\n\ntwo\n")
    assert read_texts(str(tmp_path / "a.txt")) == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"body": "y"}\n')
    with pytest.raises(BadInputError, match=r"b.jsonl:2: expected an object with a string 'text'"):
        read_texts(str(tmp_path / "b.jsonl"))


@pytest.mark.slow
def test_sts_b_by_the_cosine_of_two_embeddings_zero_shot_then_fine_tuned(pretrained, tmp_path):
    from jaxlm import finetune, predict

    def sts_run(name, **train):
        config = load_config_file(os.path.join(ROOT, "configs", "finetune", "sts_b_embedding.py"))
        with config.unlocked():
            config.init_checkpoint = pretrained
            config.data.max_len = 64
            config.data.train_limit = 3000
            config.optimizer.learning_rate = 1e-3
            config.train.batch_size = 32
            config.train.progress_bar = False
            config.train.update(train)
        return finetune.run(config, str(tmp_path / name))

    zero_shot = sts_run("zero", num_epochs=0.0)["final_eval"]
    tuned = sts_run("tuned", num_steps=150)
    print(f"STS-B dev by cosine: zero-shot {zero_shot}, fine-tuned {tuned['final_eval']}")
    assert tuned["final_eval"]["spearman_cosine"] > zero_shot["spearman_cosine"] + 0.1
    assert tuned["final_eval"]["loss"] < zero_shot["loss"]
    out = predict.predict(str(tmp_path / "tuned"), [{"text": "A man is playing a guitar.",
                                                     "text_b": "A man plays the guitar."}])
    assert -1.0 <= out[0]["cosine"] <= 1.0 and out[0]["score"] == pytest.approx(5 * out[0]["cosine"])


def test_t5_encoder_backbone_is_the_seq2seq_models_encoder():
    from jaxlm.models import build_model, family_of

    config = get_model_config("t5", None, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2, vocab_size=100)
    full = build_model(config)
    inputs = jnp.asarray(np.random.default_rng(5).integers(2, 100, size=(2, 9)), jnp.int32)
    params = nn.unbox(full.init(jax.random.key(0), inputs, inputs[:, :3])["params"])
    encoded = full.apply({"params": params}, inputs, method=full.encode)
    backbone = family_of(config).backbone(config)
    subset = {k: params[k] for k in ("token_embeddings", "encoder_relative_bias", "encoder", "encoder_norm")}
    assert set(nn.unbox(backbone.init(jax.random.key(1), inputs)["params"])) == set(subset)
    hidden, pooled = backbone.apply({"params": subset}, inputs)
    assert pooled is None
    np.testing.assert_allclose(hidden, encoded, atol=1e-6)
    spec = get_task("retrieval").spec(load_config_file(os.path.join(ROOT, "configs", "finetune",
                                                                    "retrieval_squad.py")), family_of(config))
    assert spec.style == "gpt2"  # a text then EOS, sentence-T5's encoder input


def _pairs_config(pairs_file, init="", **overrides):
    config = finetune_config()
    with config.unlocked():
        config.task = "retrieval"
        config.data.format = "pairs"
        config.data.train_file = config.data.eval_file = str(pairs_file)
        config.data.max_len, config.data.max_query_len = 32, 16
        config.init_checkpoint = init
        if not init:
            config.tokenizer = "bytes"
            config.model.family = "bert"
            config.model.update({**TINY, "vocab_size": 384})
        config.train.batch_size = config.train.eval_batch_size = 8
        config.train.progress_bar = False
        config.train.num_steps = 3
        config.optimizer.learning_rate = 1e-3
        for key, value in overrides.items():
            section, leaf = key.split(".")
            config[section][leaf] = value
    return config


@pytest.mark.slow  # (one minute on 2 cores: make test stays under CI's 10)
def test_an_embedding_checkpoint_keeps_its_pooling_and_dense_head_when_fine_tuned_further(tmp_path):
    from jaxlm import embed, finetune
    from jaxlm.tasks.finetuning import setup

    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("query\tpositive\n" + "".join(f"question {i}?\tanswer number {i} is {i * 7}.\n"
                                                   for i in range(24)))
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    finetune.run(_pairs_config(pairs, **{"embedding.pooling": "cls", "embedding.dim": 8,
                                         "embedding.normalize": True}), first)
    # The defaults say mean pooling, no dense: the checkpoint's own head wins, weights included (lr 0: no change).
    finetune.run(_pairs_config(pairs, init=first, **{"optimizer.learning_rate": 0.0,
                                                     "optimizer.weight_decay": 0.0}), second)
    spec = embed.load(second).spec
    assert (spec.pooling, spec.embedding_dim, spec.normalize) == ("cls", 8, True)
    texts = ["question 3?", "a much longer text than the others in this batch of three", "x"]
    np.testing.assert_allclose(embed.load(second).encode(texts, batch_size=8),
                               embed.load(first).encode(texts, batch_size=8), atol=1e-6)
    # from_checkpoint=False: the config's own head.
    own = setup(_pairs_config(pairs, init=first, **{"embedding.from_checkpoint": False})).spec
    assert (own.pooling, own.embedding_dim, own.normalize) == ("mean", 0, False)
