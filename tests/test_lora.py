"""LoRA (jaxlm.train.lora): adapters on every family's attention and MLP, B = 0 equals the base, the base frozen
with no gradient or optimizer state, merged export equals the adapter forward pass, exact resume, train_also (PEFT's
modules_to_save), and SST-2 from a tiny pretrained BERT above the majority class."""
import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from jaxlm import sharding as shd
from jaxlm.config_defaults import finetune_config
from jaxlm.models import build_model, family_of, get_model_config
from jaxlm.tasks.finetuning import task_model
from jaxlm.train import TrainState, create_train_state, lora, make_checkpoint_manager, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
SST2 = os.path.join(DATA, "glue", "SST-2")

TINY = {
    "bert": dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                 max_position_embeddings=32),
    "roberta": dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                    max_position_embeddings=40),
    "gpt2": dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48,
                 max_position_embeddings=32),
    "t5": dict(vocab_size=97, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=2, num_heads=4),
    "xlnet": dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, head_dim=8, intermediate_size=48),
}
SIZES = {"bert": "base", "roberta": "base", "gpt2": "small", "t5": "small", "xlnet": "base"}


def tiny_config(family, **fields):
    return get_model_config(family, SIZES[family], **{**TINY[family], **fields})


def lm_and_params(family, **fields):
    config = tiny_config(family, **fields)
    model = build_model(config)
    inputs = family_of(config).init_inputs(config)
    params = nn.unbox(jax.jit(model.init)(jax.random.key(0), **inputs)["params"])
    return config, model, inputs, params


def module_paths(targets):
    return sorted("/".join(t.path) for t in targets)


# ---------------------------------------------------------------------------------------------------------------
# Targets, config errors

def test_bad_target_name_is_an_error_listing_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown target 'qkv'; valid: attention, mlp, all, query, key, value, "
                                         r"out, relative, mlp_in, mlp_out"):
        lora.LoraConfig(rank=4, targets="query,qkv")
    with pytest.raises(ValueError, match=r"config.lora.rank=-1"):
        lora.LoraConfig(rank=-1)
    with pytest.raises(ValueError, match=r"unknown config.lora keys \['ranks'\]"):
        lora.LoraConfig.from_dict({"ranks": 4})
    assert lora.LoraConfig(rank=2, targets="attention, mlp").target_names() == (
        "query", "key", "value", "out", "mlp_in", "mlp_out")
    # a valid name that the model has no kernel for
    _, _, _, params = lm_and_params("bert")
    with pytest.raises(ValueError, match=r"targets='relative' matches no kernel"):
        lora.find_targets(params, lora.LoraConfig(rank=2, targets="relative"))
    assert finetune_config().lora.rank == 0  # off by default


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "t5", "xlnet"])
def test_every_family_gets_adapters_on_attention_and_mlp(family):
    config, model, inputs, params = lm_and_params(family)
    targets = lora.find_targets(params, lora.LoraConfig(rank=2, targets="attention,mlp"))
    paths = module_paths(targets)
    # every layer of every stack: 4 attention projections (8 with T5's decoder cross-attention) and 2 MLP kernels
    per_layer = {}
    for p in paths:
        stack = p.split("/layers_")[0]
        layer = p.split("/layers_")[1].split("/")[0]
        per_layer.setdefault((stack, layer), []).append(p.split("/layers_")[1].split("/", 1)[1])
    stacks = {s for s, _ in per_layer}
    assert len(per_layer) == 2 * len(stacks), (family, sorted(per_layer))
    for (stack, _), names in per_layer.items():
        want = {"attention/query", "attention/key", "attention/value", "attention/out", "mlp/wi", "mlp/wo"}
        if family == "t5" and "decoder" in stack:
            want |= {"cross_attention/query", "cross_attention/key", "cross_attention/value", "cross_attention/out"}
        assert set(names) == want, (family, stack, sorted(names))
    assert len(stacks) == (2 if family == "t5" else 1)

    cfg = lora.LoraConfig(rank=2, alpha=4.0, targets="attention,mlp")
    adapters = nn.unbox(lora.init_adapters(jax.random.key(1), targets, cfg))
    base_out = model.apply({"params": params}, **inputs)
    # B = 0: the adapted model is the base model, bitwise
    same = model.apply({"params": lora.merge(params, adapters, cfg)}, **inputs)
    jax.tree.map(np.testing.assert_array_equal, same, base_out)
    # a non-zero B changes the output, by an amount that scales with alpha / r
    b_set = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.05 * jnp.ones_like(x) if p[-1].key == "lora_b" else x, adapters)
    moved = model.apply({"params": lora.merge(params, b_set, cfg)}, **inputs)
    diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(base_out))
               if a.dtype == jnp.float32)
    assert diff > 1e-3, (family, diff)


def test_scanned_layers_get_a_layers_axis_and_shard_like_their_kernels():
    config, model, inputs, params = lm_and_params("bert", scan_layers=True)
    cfg = lora.LoraConfig(rank=4, targets="attention,mlp")
    targets = {"/".join(t.path): t for t in lora.find_targets(params, cfg)}
    assert sorted(targets) == ["bert/encoder/layers/attention/" + m for m in ("key", "out", "query", "value")] + [
        "bert/encoder/layers/mlp/wi", "bert/encoder/layers/mlp/wo"]
    q, out, wi = targets["bert/encoder/layers/attention/query"], targets["bert/encoder/layers/attention/out"], \
        targets["bert/encoder/layers/mlp/wi"]
    assert q.adapter_shapes(4) == ((2, 32, 4), (2, 4, 32))  # [L, D, r], [L, r, H*K]
    assert out.adapter_shapes(4) == ((2, 32, 4), (2, 4, 32))  # [L, H*K, r], [L, r, D]
    assert wi.adapter_shapes(4) == ((2, 32, 4), (2, 4, 48))
    boxed = jax.eval_shape(model.init, jax.random.key(0), **inputs)["params"]
    specs = {tuple(p[:-1]): tuple(s) for p, s in flatten_dict(nn.get_partition_spec(boxed)).items()
             if p[-1] == "kernel"}
    adapters = lora.init_adapters(jax.random.key(1), list(targets.values()), cfg, specs)
    flat = flatten_dict(nn.get_partition_spec(adapters), sep="/")
    assert tuple(flat["bert/encoder/layers/attention/query/lora_a"]) == ("layers", "embed", None)
    assert tuple(flat["bert/encoder/layers/attention/query/lora_b"]) == ("layers", None, "heads")
    assert tuple(flat["bert/encoder/layers/attention/out/lora_a"]) == ("layers", "heads", None)
    assert tuple(flat["bert/encoder/layers/mlp/wo/lora_b"]) == ("layers", None, "embed")
    # scanned merge == unrolled merge of the same numbers
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: 0.1 * jnp.ones_like(x) if p[-1].key == "lora_b" else x, nn.unbox(adapters))
    merged = flatten_dict(lora.merge(params, adapters, cfg), sep="/")
    a = adapters["bert"]["encoder"]["layers"]["attention"]["query"]
    want = params["bert"]["encoder"]["layers"]["attention"]["query"]["kernel"][1] + (16.0 / 4) * (
        a["lora_a"][1] @ a["lora_b"][1]).reshape(32, 4, 8)
    np.testing.assert_allclose(merged["bert/encoder/layers/attention/query/kernel"][1], want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Training: the base frozen, no gradient / optimizer state for it

def _tiny_task(num_labels=2, **fields):
    config = tiny_config("bert", **fields)
    model = task_model(config, "classification", num_labels, head_dropout=0.0)
    x = jnp.ones((1, 8), jnp.int32)
    return model, (lambda rng: model.init(rng, x))


def _batch(n=8, length=8, seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(5, 97, (n, length)).astype(np.int32)
    labels = (inputs[:, 0] > 50).astype(np.int32)
    return {"inputs": inputs, "segment_ids": np.ones_like(inputs), "labels": labels,
            "example_weights": np.ones((n,), np.float32)}


def _loss_fn(model):
    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["inputs"], batch["segment_ids"])["logits"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return loss, {"num_tokens": jnp.float32(batch["inputs"].shape[0])}
    return loss_fn


def test_base_gets_no_gradient_nor_optimizer_state_and_stays_bitwise_unchanged():
    model, init_fn = _tiny_task()
    mesh = shd.make_mesh(4, 1, 2)
    cfg = lora.LoraConfig(rank=4, alpha=8.0, targets="attention,mlp")
    tx = optax.adamw(1e-2)
    state, layout = create_train_state(init_fn, lora.base_optimizer(tx, cfg), jax.random.key(0), mesh)
    assert jax.tree.leaves(state.opt_state) == []  # the full model's state is built without optimizer state
    run = lora.adapt(state, layout, init_fn, cfg, tx, mesh)
    frozen_before = jax.tree.map(np.array, run.frozen)
    trainable = run.state.params
    assert sorted(trainable) == ["backbone", "head"]
    adapter_leaves = flatten_dict(trainable["backbone"], sep="/")
    assert all(p.endswith(("/lora_a", "/lora_b")) for p in adapter_leaves) and len(adapter_leaves) == 2 * 12

    # Adam's moments exist for exactly the trainable leaves (adapters + head), nothing of the base
    trainable_shapes = sorted((tuple(x.shape) for x in jax.tree.leaves(trainable)))
    mu = run.state.opt_state[0].mu
    assert jax.tree.structure(mu) == jax.tree.structure(trainable)
    assert sorted(tuple(x.shape) for x in jax.tree.leaves(mu)) == trainable_shapes
    n_train, n_base = lora.count_params(trainable), lora.count_params(run.frozen)
    assert n_train < 0.25 * n_base, (n_train, n_base)
    # the adapters shard like their kernels: B of a query projection over the tensor axis, as the kernel's heads
    b_sharding = run.state.params["backbone"]["encoder"]["layers_0"]["attention"]["query"]["lora_b"].sharding
    assert tuple(b_sharding.spec) == (None, "tensor"), b_sharding.spec

    # gradients: only for the trainable tree
    loss_fn = _loss_fn(model)
    batch = _batch()
    grads = jax.grad(lambda t: loss_fn(lora.full_params(run.frozen, t, cfg), batch, None)[0])(trainable)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    b_grad = grads["backbone"]["encoder"]["layers_0"]["attention"]["value"]["lora_b"]
    assert float(jnp.abs(b_grad).max()) > 0  # B = 0 still gets a gradient (A does not yet: dL/dA = dL/dW B^T = 0)

    step = run.jit_train_step(loss_fn, tx, shd.batch_sharding(mesh))
    state = run.state
    b0 = np.array(trainable["backbone"]["encoder"]["layers_0"]["attention"]["value"]["lora_b"])
    global_batch = shd.host_local_to_global(batch, mesh, shd.batch_sharding(mesh))
    losses = []
    for _ in range(5):
        state, metrics = step(state, global_batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, run.frozen), frozen_before)
    b5 = np.array(state.params["backbone"]["encoder"]["layers_0"]["attention"]["value"]["lora_b"])
    assert np.abs(b5 - b0).max() > 1e-4 and np.abs(b0).max() == 0.0


def test_train_also_trains_named_backbone_modules_in_full_and_the_rest_stays_frozen():
    """lora.train_also (PEFT's modules_to_save): BERT's pooler trains in full beside the adapters and the head;
    the base keeps its copy bitwise, the merge uses the trained one."""
    model, init_fn = _tiny_task()
    mesh = shd.make_mesh(4, 1, 2)
    params = nn.unbox(init_fn(jax.random.key(0))["params"])
    cfg = lora.LoraConfig(rank=2, targets="query,value", train_also="pooler, encoder/layers_1/mlp_norm")
    frozen = params["backbone"]
    assert lora.find_train_also(frozen, cfg) == [("pooler", "bias"), ("pooler", "kernel"),
                                                ("encoder", "layers_1", "mlp_norm", "bias"),
                                                ("encoder", "layers_1", "mlp_norm", "scale")]
    with pytest.raises(ValueError, match=r"train_also: 'pooler_x' names no module of the backbone \(its modules: "
                                         r"embeddings_norm, encoder, pooler"):
        lora.find_train_also(frozen, lora.LoraConfig(rank=2, train_also="pooler_x"))
    clash = lora.LoraConfig(rank=2, targets="query", train_also="layers_0/attention")
    with pytest.raises(ValueError, match=r"takes in encoder/layers_0/attention/query/kernel, which "
                                         r"config.lora.targets adapts"):
        lora.find_train_also(frozen, clash, lora.find_targets(frozen, clash))
    assert lora.LoraConfig.from_dict({"rank": 2}).train_also == ""  # an older run's saved config

    shapes = lora.trainable_shapes(params, cfg)
    assert tuple(shapes["backbone"]["pooler"]["kernel"].shape) == (32, 32)
    tx = optax.adamw(1e-2)
    state, layout = create_train_state(init_fn, lora.base_optimizer(tx, cfg), jax.random.key(0), mesh)
    run = lora.adapt(state, layout, init_fn, cfg, tx, mesh)
    frozen_before = jax.tree.map(np.array, run.frozen)
    trainable = run.state.params
    assert jax.tree.structure(trainable) == jax.tree.structure(shapes)
    assert jax.tree.structure(run.state.opt_state[0].mu) == jax.tree.structure(trainable)
    assert trainable["backbone"]["pooler"]["kernel"].sharding.spec == run.frozen["pooler"]["kernel"].sharding.spec
    np.testing.assert_array_equal(trainable["backbone"]["pooler"]["kernel"], frozen_before["pooler"]["kernel"])

    step = run.jit_train_step(_loss_fn(model), tx, shd.batch_sharding(mesh))
    batch = shd.host_local_to_global(_batch(), mesh, shd.batch_sharding(mesh))
    new = run.state
    for _ in range(3):
        new, _ = step(new, batch)
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.array, run.frozen), frozen_before)
    pooler = np.array(new.params["backbone"]["pooler"]["kernel"])
    assert np.abs(pooler - frozen_before["pooler"]["kernel"]).max() > 1e-3
    merged = flatten_dict(run.merged(new.params), sep="/")
    np.testing.assert_array_equal(merged["backbone/pooler/kernel"], pooler)
    np.testing.assert_array_equal(merged["backbone/encoder/layers_1/mlp_norm/scale"],
                                  new.params["backbone"]["encoder"]["layers_1"]["mlp_norm"]["scale"])
    np.testing.assert_array_equal(merged["backbone/embeddings_norm/scale"], frozen_before["embeddings_norm"]["scale"])


def test_optimizer_state_is_a_small_fraction_of_full_fine_tuning():
    model, init_fn = _tiny_task(hidden_size=64, intermediate_size=256, num_heads=4)
    cfg = lora.LoraConfig(rank=2, targets="query,value")
    tx = optax.adamw(1e-3)
    full = jax.eval_shape(lambda r: tx.init(nn.unbox(init_fn(r)["params"])), jax.random.key(0))
    shapes = lora.trainable_shapes(nn.unbox(jax.eval_shape(init_fn, jax.random.key(0))["params"]), cfg)
    small = jax.eval_shape(tx.init, shapes)
    ratio = lora.tree_bytes(small) / lora.tree_bytes(full)
    # 2 layers x 2 kernels x (64 x 2 + 2 x 64) adapters + the 64 x 2 + 2 head, against the whole model
    assert lora.count_params(shapes) == 2 * 2 * (64 * 2 + 2 * 64) + 64 * 2 + 2
    assert ratio < 0.02, ratio


# ---------------------------------------------------------------------------------------------------------------
# A LoRA run directory: export of the merged model, predict / generate read through the workdir reader

def _write_lora_run(workdir, family="gpt2", rank=4, alpha=8.0):
    """A text-to-text LoRA run as finetune writes it (adapters in the checkpoint, the base once beside it), with
    random non-zero B so the merge matters."""
    config = tiny_config(family, dropout=0.0, attention_dropout=0.0) if family == "gpt2" else tiny_config(family)
    model = build_model(config)
    inputs = family_of(config).init_inputs(config)
    base = nn.unbox(jax.jit(model.init)(jax.random.key(0), **inputs)["params"])
    cfg = lora.LoraConfig(rank=rank, alpha=alpha, targets="attention,mlp")
    adapters = nn.unbox(lora.init_adapters(jax.random.key(1), lora.find_targets(base, cfg), cfg))
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: jax.random.normal(jax.random.key(len(str(p))), x.shape) * 0.05 if p[-1].key == "lora_b" else x,
        adapters)
    trainable = {"backbone": adapters}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=trainable, opt_state=optax.adam(1e-3).init(trainable),
                       rng=jnp.zeros((2,), jnp.uint32))
    manager = make_checkpoint_manager(str(workdir), async_save=False)
    saved = {"model": {"family": family}, "model_config": dataclasses.asdict(config),
             "task_spec": {"task": "seq2seq"}, "lora": dataclasses.asdict(cfg)}
    save_checkpoint(manager, 3, state, config=saved)
    manager.wait_until_finished()
    manager.close()
    lora.save_base(str(workdir), {"backbone": base}["backbone"])
    return config, model, inputs, base, trainable, cfg


def test_merged_export_equals_the_adapter_forward_pass(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from jaxlm.convert.hf import export_workdir
    from jaxlm.workdir import open_run, read_params

    config, model, inputs, base, trainable, cfg = _write_lora_run(tmp_path / "run")
    ids = np.array([[5, 17, 33, 2, 61, 8, 90, 11]], np.int32)
    # the adapter forward pass: the training path (base + adapters merged inside the step's function)
    adapter_logits = np.asarray(jax.jit(lambda f, t: model.apply(
        {"params": lora.merge(f, t["backbone"], cfg)}, ids))(base, trainable))
    base_logits = np.asarray(model.apply({"params": base}, ids))
    assert np.abs(adapter_logits - base_logits).max() > 1e-3  # the adapters matter

    # the workdir reader merges (host and on a mesh): predict / generate / evaluate see the adapted model
    host, _, step = read_params(str(tmp_path / "run"), subtree=("backbone",))
    assert step == 3
    np.testing.assert_allclose(np.asarray(model.apply({"params": host}, ids)), adapter_logits, atol=1e-5)
    run = open_run(str(tmp_path / "run"), mesh=shd.make_mesh(2, 2, 2), tokenizer="bytes")
    np.testing.assert_allclose(np.asarray(run.model.apply({"params": run.params}, ids)), adapter_logits,
                               atol=1e-5)

    # to-hf writes the merged model: transformers' logits equal the adapter forward pass
    out = tmp_path / "hf"
    result = export_workdir(str(tmp_path / "run"), str(out))
    assert result["step"] == 3 and not result["not_exported"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        hf_logits = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    np.testing.assert_allclose(hf_logits, adapter_logits, atol=1e-5)


def test_a_lora_run_without_its_base_names_the_missing_directory(tmp_path):
    import shutil

    from jaxlm.workdir import read_params

    _write_lora_run(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / lora.BASE_DIR)
    with pytest.raises(FileNotFoundError, match=r"lora_base not found: the frozen base of the LoRA run"):
        read_params(str(tmp_path / "run"), subtree=("backbone",))


# ---------------------------------------------------------------------------------------------------------------
# End to end: finetune with LoRA (resume, evaluate, predict)

needs_sst2 = pytest.mark.skipif(not os.path.isdir(SST2), reason=f"SST-2 data not found at {SST2} (GLUE SST-2 "
                                "train.tsv / dev.tsv of ../shared/data)")


def _sst2_texts(limit=20000):
    with open(os.path.join(SST2, "train.tsv"), encoding="utf-8") as f:
        next(f)
        return [line.split("\t")[0].strip() for _, line in zip(range(limit), f)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny BERT (tests/configs/tiny.py:bert, 2 layers x 32) pretrained with MLM + NSP for 2,000 steps on the
    embedded corpus, with a 2,000-piece tokenizer trained on that corpus and SST-2's training sentences.

    2,000 steps, not fewer: with initializer_range 0.02 the attention adds little to a token's residual, so the
    [CLS] state is close to its own (input-independent) embedding until pretraining grows the weights. Its std over
    SST-2 dev rows, averaged over features, is 0.009 after 100 steps (a random init: 0.002), 0.08 after 1,000 and
    0.16 after 2,000 (a content token's: 0.3 to 0.7); LoRA with a frozen backbone stays at the majority class on
    the first."""
    if not os.path.isdir(SST2):
        pytest.skip(f"SST-2 data not found at {SST2}")
    from jaxlm import data, pretrain
    from jaxlm.config_defaults import load_config_file

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    source = data.load_data_source(data.prepare_pydoc(data_dir).name, "train", data_dir)
    texts = [bytes(source[i]["text"]).decode() for i in range(len(source))] + _sst2_texts()
    prefix = str(tmp_path_factory.mktemp("tok") / "sp2k")
    data.train_tokenizer(iter(texts), prefix, 2000, input_sentence_size=30000)
    config = load_config_file(os.path.join(ROOT, "tests", "configs", "tiny.py") + ":bert")
    with config.unlocked():
        config.data.data_dir = data_dir
        config.data.tokenizer = prefix + ".model"
        config.train.num_steps = 2000
        config.train.checkpoint_every = 2000
        config.train.log_every = 500
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    pretrain.run(config, workdir)
    return workdir


def lora_finetune(workdir, init, **overrides):
    from jaxlm import finetune
    from jaxlm.config_defaults import load_config_file

    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "sst2.py"))
    with config.unlocked():
        config.init_checkpoint = init
        config.data.max_len = 64
        config.optimizer.learning_rate = 3e-3
        config.lora.rank = 8
        config.lora.alpha = 16.0
        config.lora.targets = "attention,mlp"
        config.train.log_every = 100
        config.train.progress_bar = False
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    return finetune.run(config, str(workdir))


def _sst2_dev_majority():
    with open(os.path.join(SST2, "dev.tsv"), encoding="utf-8") as f:
        next(f)
        labels = [line.rstrip("\n").split("\t")[-1] for line in f if line.strip()]
    return max(labels.count(v) for v in set(labels)) / len(labels)


@needs_sst2
@pytest.mark.slow
def test_lora_sst2_from_a_tiny_pretrained_bert_beats_the_majority_class(pretrained, tmp_path):
    """The backbone frozen; rank-8 adapters on attention + MLP, the classifier and (lora.train_also, as PEFT's
    modules_to_save) BERT's pooler train: dev accuracy clearly above the majority class."""
    from jaxlm import evaluate, predict

    workdir = tmp_path / "sst2"
    summary = lora_finetune(workdir, pretrained, **{"data.train_limit": 8000, "train.num_epochs": 2.0,
                                                    "lora.train_also": "pooler"})
    majority = _sst2_dev_majority()
    best = summary["best_eval"]["accuracy"]
    print(f"LoRA SST-2 dev accuracy {best:.4f} (majority class {majority:.4f}); final", summary["final_eval"],
          "best step", summary["best_step"])
    assert best >= majority + 0.05, f"dev accuracy {best} is not clearly above the majority class ({majority})"
    # the checkpoint holds the head, the adapters and the pooler only; the base is stored once beside them
    stored = flatten_dict(summary["state"].params, sep="/")
    assert all(p.startswith(("head/", "backbone/pooler/")) or p.endswith(("/lora_a", "/lora_b")) for p in stored)
    assert {"backbone/pooler/kernel", "backbone/pooler/bias"} <= set(stored)
    assert (workdir / lora.BASE_DIR).is_dir()
    # evaluate (best checkpoint, merged on load) gives the same number; predict works on the LoRA run
    result = evaluate.evaluate(str(workdir))
    np.testing.assert_allclose(result["accuracy"], best, atol=1e-9)
    out = predict.predict(str(workdir), [{"text": "a gorgeous , witty , seductive movie ."}])
    assert out[0]["label"] in ("0", "1") and abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5


@needs_sst2
@pytest.mark.slow
def test_lora_resume_is_exact(pretrained, tmp_path):
    """A LoRA run resumed from its epoch-1 checkpoint ends with bitwise the same adapters and head as the
    uninterrupted run (the base read back from the workdir)."""
    import shutil

    from jaxlm.workdir import read_state

    workdir = tmp_path / "run"
    common = {"data.train_limit": 320, "data.eval_limit": 64, "train.num_epochs": 2.0, "train.keep_checkpoints": 2}
    straight = lora_finetune(workdir, pretrained, **common)
    epoch = straight["steps_per_epoch"]  # 320 / 32 = 10, + a short batch per length bucket but the last
    assert 10 <= epoch <= 12 and straight["final_step"] == 2 * epoch
    final = jax.tree.map(np.asarray, read_state(str(workdir), 2 * epoch)["params"])
    assert sorted(final) == ["backbone", "head"]
    shutil.rmtree(workdir / "checkpoints" / str(2 * epoch))
    resumed = lora_finetune(workdir, pretrained, **common)
    assert resumed["resumed_from"] == epoch and resumed["steps_run"] == epoch
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed["state"].params), final)
    assert resumed["final_eval"]["accuracy"] == straight["final_eval"]["accuracy"]
    with open(workdir / "summary.json") as f:
        assert json.load(f)["final_eval"] == resumed["final_eval"]
