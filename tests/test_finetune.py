"""Fine-tuning: restore_backbone (report, layouts, meshes, mismatches), heads, losses, layer-wise lr, resumable
batches, configs; end to end from a tiny pretraining run to SST-2 / CoNLL-2003 / SQuAD dev metrics, and the
evaluate / predict commands."""
import dataclasses
import glob
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from jaxlm import sharding as shd
from jaxlm.config_defaults import finetune_config, load_config_file
from jaxlm.models import build_model, get_model_config
from jaxlm.tasks import EpochBatches, TaskSpec, get_task
from jaxlm.tasks.finetuning import check_family, setup, task_spec
from jaxlm.tasks.finetuning import task_model as build_task_model
from jaxlm.train import TrainState, create_train_state, make_checkpoint_manager, save_checkpoint
from jaxlm.train.backbone import layerwise_lr_scales
from jaxlm.workdir import restore_backbone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64,
            vocab_size=100)
X = jnp.ones((1, 8), jnp.int32)

needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"shared task data not found at {DATA} "
                                "(the SST-2 / CoNLL-2003 / SQuAD files of ../shared/data)")


def save_pretraining_checkpoint(workdir, family="bert", mesh_shape=None, **fields):
    """A pretraining-shaped checkpoint (TrainState with Adam state + saved config), written sharded on
    `mesh_shape` (or from one device)."""
    config = get_model_config(family, None, **{**TINY, **fields})
    model = build_model(config)
    if mesh_shape:
        state, _ = create_train_state(lambda r: model.init(r, X), optax.adamw(1e-3), jax.random.key(1),
                                      shd.make_mesh(*mesh_shape))
    else:
        params = nn.unbox(model.init(jax.random.key(1), X)["params"])
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.adamw(1e-3).init(params),
                           rng=jnp.zeros((2,), jnp.uint32))
    manager = make_checkpoint_manager(str(workdir), async_save=False)
    save_checkpoint(manager, 7, state, config={"model": {"family": family}, "model_config": dataclasses.asdict(config)})
    manager.wait_until_finished()
    manager.close()
    return config, jax.tree.map(np.asarray, state.params)


def task_params(config, task="classification", mesh_shape=None, **fields):
    """The task model's params: a sharded train state's on `mesh_shape` (with its layout), else numpy."""
    model = build_task_model(dataclasses.replace(config, **fields), task, 3)
    if mesh_shape is None:
        return jax.tree.map(np.asarray, nn.unbox(model.init(jax.random.key(2), X)["params"])), None
    state, layout = create_train_state(lambda r: model.init(r, X), optax.adamw(1e-3), jax.random.key(2),
                                       shd.make_mesh(*mesh_shape))
    return state.params, layout


def paths(tree, prefix=""):
    return sorted(prefix + p for p in flatten_dict(tree, sep="/"))


# ----------------------------------------------------------------------------------------------------------------
# restore_backbone

def test_restore_backbone_scanned_checkpoint_into_unrolled_model_on_another_mesh(tmp_path):
    config, pre = save_pretraining_checkpoint(tmp_path / "pre", mesh_shape=(2, 2, 2), scan_layers=True)
    init, layout = task_params(config, scan_layers=False, mesh_shape=(1, 2, 4))
    head_before = jax.tree.map(np.asarray, init["head"])
    params, report = restore_backbone(init, str(tmp_path / "pre"), verbose=False)

    assert report.step == 7 and report.source.endswith(os.path.join("checkpoints", "7"))
    assert report.loaded == paths(init["backbone"], "backbone/") and len(report.loaded) == 39
    assert report.new == ["head/classifier/bias", "head/classifier/kernel"]
    assert report.unused == paths({"mlm_head": pre["mlm_head"], "nsp_head": pre["nsp_head"]})
    for i in range(config.num_layers):  # layer i of the stack -> layers_i
        for name in ("query", "out"):
            np.testing.assert_array_equal(params["backbone"]["encoder"][f"layers_{i}"]["attention"][name]["kernel"],
                                          pre["bert"]["encoder"]["layers"]["attention"][name]["kernel"][i])
    np.testing.assert_array_equal(params["backbone"]["word_embeddings"]["embedding"],
                                  pre["bert"]["word_embeddings"]["embedding"])
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, params["head"]), head_before)
    # Placed exactly where the train state wants each parameter.
    flat_params = flatten_dict(params, sep="/")
    for path, sharding in flatten_dict(layout.shardings.params, sep="/").items():
        assert flat_params[path].sharding == sharding, path


def test_restore_backbone_unrolled_checkpoint_into_scanned_model(tmp_path):
    config, pre = save_pretraining_checkpoint(tmp_path / "pre", scan_layers=False)
    init, _ = task_params(config, task="token_classification", scan_layers=True)
    params, report = restore_backbone(init, str(tmp_path / "pre" / "checkpoints" / "7"), verbose=False)
    assert report.new == ["head/classifier/bias", "head/classifier/kernel"]
    assert "backbone/encoder/layers/mlp/wi/kernel" in report.loaded
    stacked = np.asarray(params["backbone"]["encoder"]["layers"]["mlp"]["wi"]["kernel"])
    np.testing.assert_array_equal(stacked[1], pre["bert"]["encoder"]["layers_1"]["mlp"]["wi"]["kernel"])


def test_restore_backbone_gpt2_and_imported_workdir(tmp_path):
    from jaxlm.convert.hf import ConversionReport, Imported, write_workdir

    config, pre = save_pretraining_checkpoint(tmp_path / "gpt2", family="gpt2")
    init, _ = task_params(config)
    _, report = restore_backbone(init, str(tmp_path / "gpt2"), verbose=False)
    assert report.new == ["head/score/kernel"] and report.unused == []
    assert report.loaded == paths(pre, "backbone/")

    # An imported HF workdir (jaxlm.convert's layout: params only, opt_state None), RoBERTa: no pooler anywhere.
    roberta = get_model_config("roberta", None, **{**TINY, "max_position_embeddings": 66})
    pre = nn.unbox(build_model(roberta).init(jax.random.key(3), X)["params"])
    imported = Imported("roberta", roberta, jax.tree.map(np.asarray, pre), None,
                        ConversionReport([], [], [], []), {}, [])
    write_workdir(str(tmp_path / "hf"), imported, str(tmp_path))
    init, _ = task_params(roberta)
    params, report = restore_backbone(init, str(tmp_path / "hf"), verbose=False)
    assert report.new == paths(init["head"], "head/")  # RobertaClassificationHead: dense + out_proj
    assert {p.split("/")[1] for p in report.new} == {"dense", "out_proj"}
    assert report.unused == paths(pre["mlm_head"], "mlm_head/")
    np.testing.assert_array_equal(params["backbone"]["position_embeddings"]["embedding"],
                                  pre["bert"]["position_embeddings"]["embedding"])


def test_restore_backbone_mismatch_names_first_parameter_and_both_shapes(tmp_path):
    save_pretraining_checkpoint(tmp_path / "wide", hidden_size=64, intermediate_size=128)
    init, _ = task_params(get_model_config("bert", None, **TINY))
    with pytest.raises(ValueError) as e:
        restore_backbone(init, str(tmp_path / "wide"), verbose=False)
    message = str(e.value)
    assert "backbone/embeddings_norm/bias" in message and "bert/embeddings_norm/bias" in message
    assert "(64,)" in message and "(32,)" in message

    save_pretraining_checkpoint(tmp_path / "deep", num_layers=3, scan_layers=True)
    with pytest.raises(ValueError, match=r"bert/encoder/layers_2/.* has no place .* 3 stacked layers"):
        restore_backbone(init, str(tmp_path / "deep"), verbose=False)


# ----------------------------------------------------------------------------------------------------------------
# Heads, losses, layer-wise lr, batches, configs

@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_classification_ignores_padding(family):
    """Right padding (segment_ids 0) changes no logit: BERT/RoBERTa read [CLS], GPT-2 the last real token."""
    config = get_model_config(family, None, **{**TINY, "max_position_embeddings": 66})
    model = build_task_model(config, "classification", 3)
    params = nn.unbox(model.init(jax.random.key(0), X)["params"])
    ids = jnp.array([[5, 6, 7, 8, 9, 10]])
    padded = jnp.array([[5, 6, 7, 8, 9, 10, 0, 0, 0]])
    seg, seg_padded = jnp.ones_like(ids), (padded > 0).astype(jnp.int32).at[0, 5].set(1)
    pos = jnp.arange(6)[None]
    pos_padded = jnp.concatenate([pos, jnp.zeros((1, 3), jnp.int32)], 1)
    a = model.apply({"params": params}, ids, segment_ids=seg, positions=pos)["logits"]
    b = model.apply({"params": params}, padded, segment_ids=seg_padded, positions=pos_padded)["logits"]
    assert a.shape == (1, 3)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_task_evaluator_equals_a_direct_computation_on_the_dev_set():
    """The loop's fine-tuning eval (TaskEvaluator over the sharded Predictor, 13 rows in batches of 8 on an 8-device
    mesh: the last batch padded) equals the model applied to all rows at once and scored by hand."""
    from jaxlm.tasks.evaluation import TaskEvaluator
    from jaxlm.tasks.readers import TextExample

    config = get_model_config("bert", None, **TINY)
    task = get_task("classification")
    spec = TaskSpec(task="classification", format="tsv", labels=("neg", "pos", "mixed"), pair=False, style="bert",
                    max_len=12)
    model = task.model(spec, config)
    rng = np.random.default_rng(0)
    n, length = 13, 12
    lengths = rng.integers(3, length + 1, n)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    features = {"inputs": (rng.integers(7, 90, (n, length)) * mask).astype(np.int32), "segment_ids": mask,
                "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)) * mask,
                "token_types": np.zeros((n, length), np.int32), "labels": rng.integers(0, 3, n).astype(np.int32),
                "example_weights": np.ones(n, np.float32)}
    examples = [TextExample(f"dev:{i}", "text", None, int(features["labels"][i])) for i in range(n)]
    params = nn.unbox(model.init(jax.random.key(0), **task.init_batch(spec))["params"])
    mesh = shd.make_mesh(8, 1, 1)
    shardings = jax.tree.map(lambda _: shd.replicated(mesh), params)
    evaluator = TaskEvaluator(task, spec, task.predictor(spec, model, mesh, shardings, 8, None), examples, features)
    got = evaluator(params)

    inputs = {k: jnp.asarray(features[k]) for k in ("inputs", "segment_ids", "positions", "token_types")}
    logits = np.asarray(model.apply({"params": params}, **inputs)["logits"], np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    labels = features["labels"]
    assert got["loss"] == pytest.approx(-log_probs[np.arange(n), labels].mean(), rel=1e-5)
    assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == labels))
    assert evaluator.history == [got]


def test_losses_weights_and_values():
    logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [9.0, -9.0]])
    batch = {"labels": jnp.array([0, 0, 1]), "example_weights": jnp.array([1.0, 1.0, 0.0])}
    def task_loss(task, outputs, batch):
        spec = TaskSpec(task=task, format="", labels=("0", "1") if task == "classification" else None, pair=False,
                        style="bert", max_len=8)
        return get_task(task).loss(spec, outputs, batch)

    loss, metrics = task_loss("classification", {"logits": logits}, batch)
    expected = np.mean([-jax.nn.log_softmax(logits[0])[0], -jax.nn.log_softmax(logits[1])[0]])
    np.testing.assert_allclose(loss, expected, rtol=1e-6)  # the weight-0 padding row does not count
    assert float(metrics["accuracy"]) == 0.5 and float(metrics["num_tokens"]) == 2

    loss, metrics = task_loss("regression", {"logits": jnp.array([1.0, 3.0, 100.0])},
                              {"labels": jnp.array([2.0, 3.0, 0.0]), "example_weights": jnp.array([1.0, 1.0, 0.0])})
    np.testing.assert_allclose(loss, 0.5)

    start, end = jnp.log(jnp.array([[0.5, 0.25, 0.25]])), jnp.log(jnp.array([[0.125, 0.125, 0.75]]))
    loss, metrics = task_loss(
        "question_answering", {"start_logits": start, "end_logits": end},
        {"start_positions": jnp.array([0]), "end_positions": jnp.array([2]), "example_weights": jnp.ones(1)})
    np.testing.assert_allclose(loss, (np.log(2) + np.log(4 / 3)) / 2, rtol=1e-6)
    assert float(metrics["accuracy"]) == 1.0


def test_layerwise_lr_scales_unrolled_and_scanned():
    for scan in (False, True):
        config = get_model_config("bert", None, **{**TINY, "num_layers": 3, "scan_layers": scan})
        abstract = nn.unbox(jax.eval_shape(build_task_model(config, "classification").init, jax.random.key(0),
                                           X)["params"])
        scales = layerwise_lr_scales(abstract, 0.5)
        assert scales["head"]["classifier"]["kernel"] == 1.0 and scales["backbone"]["pooler"]["kernel"] == 1.0
        assert scales["backbone"]["word_embeddings"]["embedding"] == 0.5 ** 4
        if scan:
            np.testing.assert_allclose(scales["backbone"]["encoder"]["layers"]["mlp"]["wi"]["kernel"].ravel(),
                                       [0.125, 0.25, 0.5])
        else:
            assert [scales["backbone"]["encoder"][f"layers_{i}"]["mlp"]["wi"]["kernel"] for i in range(3)] == \
                [0.125, 0.25, 0.5]


def test_epoch_batches_resume_exactly():
    features = {"inputs": np.arange(50, dtype=np.int32)[:, None].repeat(4, 1),
                "example_weights": np.ones(50, np.float32), "example_index": np.arange(50, dtype=np.int32)}
    straight = EpochBatches(features, 16, ("inputs", "example_weights"), seed=3)
    assert straight.steps_per_epoch == 4
    batches = [next(straight) for _ in range(10)]
    assert set(batches[0]) == {"inputs", "example_weights"}
    first_epoch = np.concatenate([b["inputs"][:, 0] for b in batches[:4]])
    assert sorted(first_epoch[first_epoch > 0].tolist()) == list(range(1, 50))  # each row once, then padding
    assert batches[3]["example_weights"].sum() == 2  # 50 = 3 x 16 + 2: the rest of the last batch is padding
    assert not np.array_equal(batches[0]["inputs"], batches[4]["inputs"])  # reshuffled per epoch

    resumed = EpochBatches(features, 16, ("inputs", "example_weights"), seed=3)
    for _ in range(6):
        next(resumed)
    state = json.loads(json.dumps(resumed.get_state()))
    fresh = EpochBatches(features, 16, ("inputs", "example_weights"), seed=3)
    fresh.set_state(state)
    for expected in batches[6:]:
        np.testing.assert_array_equal(next(fresh)["inputs"], expected["inputs"])


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "finetune", "*.py"))),
                         ids=os.path.basename)
def test_finetune_configs_load_and_fit_their_task(path, monkeypatch):
    """Each config (each task of a per-task file with a TASKS table, e.g. roberta_glue.py:rte) loads, fits its
    task, names files that exist, and trains with the warmup, weight decay and epochs that its docstring's
    "Hyperparameters:" paragraph cites (finetune_config()'s BERT defaults where it cites none)."""
    import importlib.util
    import re

    from jaxlm import tasks
    from jaxlm.tasks import readers

    asked = []

    def tfds_label_names(name, split, data_dir=None):  # nothing is prepared offline: record the question instead
        asked.append((name, split))
        return None

    monkeypatch.setattr(readers, "tfds_label_names", tfds_label_names)
    module_spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    found = re.search(r"^Hyperparameters:(.*?)(?:\n\s*\n|\Z)", module.__doc__ or "", re.S | re.M)
    recipe = " ".join(found.group(1).split()) if found else ""
    default = finetune_config()
    cited = {
        "warmup_ratio": (r"(\d+(?:\.\d+)?)% (?:linear )?warmup", lambda x: float(x) / 100,
                         default.optimizer.warmup_ratio),
        "weight_decay": (r"weight decay (\d+(?:\.\d+)?(?:e-?\d+)?)", float, default.optimizer.weight_decay),
        "num_epochs": (r"\b(\d+(?:\.\d+)?) epochs", float, default.train.num_epochs),
    }
    expected = {k: (parse(m.group(1)) if (m := re.search(pattern, recipe)) else fallback)
                for k, (pattern, parse, fallback) in cited.items()}
    for arg in sorted(getattr(module, "TASKS", {})) or [""]:
        config = load_config_file(f"{path}:{arg}" if arg else path)
        spec = task_spec(config, config.model.family or "bert")
        assert spec.task == config.task, arg
        got = {"warmup_ratio": config.optimizer.warmup_ratio, "weight_decay": config.optimizer.weight_decay,
               "num_epochs": config.train.num_epochs}
        assert got == pytest.approx(expected, rel=1e-3), (arg, recipe)
        if config.train.best_metric:
            assert config.train.best_metric in get_task(spec.task).metric_names(spec), arg
        for key in ("train_file", "eval_file"):
            paths = [config.data[key]] if config.data[key] else []
            if paths and spec.format == "parallel":  # a prefix: PREFIX.<source_field> + PREFIX.<target_field>
                paths = tasks.parallel_paths(paths[0], spec.source_field, spec.target_field)
            assert all(os.path.isfile(p) for p in paths) or not os.path.isdir(DATA), paths
        if config.data.tfds_name and spec.task in ("classification", "token_classification"):
            assert asked[-1] == (config.data.tfds_name, config.data.train_split), arg


def test_roberta_glue_configs_follow_their_table(monkeypatch):
    """roberta_glue.py:TASK for the eight GLUE tasks of the RoBERTa paper: the task, format, style and recipe of
    each, local files for SST-2 / MRPC / STS-B and TFDS for the rest, the docstring's table = TASKS, and an
    unknown task is an error naming the valid ones."""
    import importlib.util
    import re

    from jaxlm.tasks import readers

    monkeypatch.setattr(readers, "tfds_label_names", lambda name, split, data_dir=None: None)
    path = os.path.join(ROOT, "configs", "finetune", "roberta_glue.py")
    module_spec = importlib.util.spec_from_file_location("roberta_glue", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    table = module.TASKS
    assert sorted(table) == ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]
    local = {"sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B"}
    for task, row in table.items():
        config = load_config_file(f"{path}:{task}")
        spec = task_spec(config, "roberta")
        assert (spec.task, spec.format, spec.style) == (
            "regression" if task == "stsb" else "classification", task, "roberta")
        assert spec.num_labels == {"stsb": 1, "mnli": 3}.get(task, 2) and spec.max_len == 512
        opt = config.optimizer
        assert (opt.warmup_ratio, opt.learning_rate, opt.weight_decay, opt.b1, opt.b2, opt.eps) == (
            0.06, row["learning_rate"], 0.1, 0.9, 0.98, 1e-6)
        assert (opt.schedule, opt.end_learning_rate, opt.max_grad_norm, opt.layerwise_lr_decay) == (
            "linear", 0.0, 0.0, 1.0)
        assert (config.train.batch_size, config.train.num_epochs) == (row["batch_size"], 10.0)
        assert row["learning_rate"] in (1e-5, 2e-5, 3e-5) and row["batch_size"] in (16, 32)  # the paper's grid
        assert config.train.best_metric == row["metric"] and row["metric"] in get_task(spec.task).metric_names(spec)
        assert config.model.family == "roberta" and config.model.hidden_dropout == 0.1
        if task in local:
            assert config.data.tfds_name == ""
            for key, name in (("train_file", "train.tsv"), ("eval_file", "dev.tsv")):
                assert config.data[key] == os.path.join(DATA, "glue", local[task], name)
                assert os.path.isfile(config.data[key]) or not os.path.isdir(DATA), config.data[key]
        else:
            assert (config.data.train_file, config.data.eval_file) == ("", "")
            assert (config.data.tfds_name, config.data.train_split, config.data.eval_split) == (
                f"glue/{task}", "train", "validation_matched" if task == "mnli" else "validation")
        # The docstring's table row says the same as TASKS.
        line = re.search(rf"^ +{task} +(\S+) +(\d+) +(\w+).* (\d+\.\d) +(\d+\.\d)$", module.__doc__, re.M)
        assert line, task
        assert (float(line[1]), int(line[2]), line[3], float(line[4]), float(line[5])) == (
            row["learning_rate"], row["batch_size"], row["metric"], row["roberta_large"], row["roberta_base"])

    assert load_config_file(f"{path}:SST-2").data.format == "sst2"
    for bad in ("wnli", "nope"):
        with pytest.raises(ValueError, match=r"roberta_glue.py:%s: .*one of mnli, qnli, qqp, rte, sst2, mrpc, cola, "
                           r"stsb" % bad):
            load_config_file(f"{path}:{bad}")
    with pytest.raises(ValueError, match="one of mnli"):
        load_config_file(path)


def test_a_recipe_for_another_family_is_refused_naming_the_key(tmp_path, caplog):
    """config.model.family was once ignored when init_checkpoint held another network (xlnet_glue.py's recipe
    fine-tuning a GPT-2): now an error naming the key; a variant of the same network (RoBERTa for a BERT
    checkpoint) is logged and fine-tuned as the checkpoint's family."""
    gpt2_config, _ = save_pretraining_checkpoint(tmp_path / "gpt2", family="gpt2")
    config = finetune_config()
    config.update(init_checkpoint=str(tmp_path / "gpt2"), tokenizer="bytes")
    config.model.family = "xlnet"
    with pytest.raises(ValueError, match=r"config.model.family='xlnet', but config.init_checkpoint=.*gpt2' holds a "
                                         r"'gpt2' model.*--config.model.family=gpt2"):
        setup(config)
    bert_config = get_model_config("bert", None, **TINY)
    with caplog.at_level("WARNING"):
        check_family("roberta", bert_config, "RUN")
    assert "is a 'bert' model and is fine-tuned as one" in caplog.text
    check_family("", gpt2_config, "RUN")  # unset: the checkpoint's family


def test_a_bad_run_length_names_its_key(tmp_path):
    """num_steps=-5 once fell through to the epochs count; checked before any data or model is built."""
    from jaxlm import finetune

    for key, value, message in (("num_steps", -5, r"config.train.num_steps=-5 must be >= 1, or -1 / 0 to train"),
                                ("num_epochs", -1.0, r"config.train.num_epochs=-1.0 must be >= 0")):
        config = finetune_config()
        config.train[key] = value
        with pytest.raises(ValueError, match=message):
            finetune.run(config, str(tmp_path / key))


def test_task_must_fit_format():
    config = finetune_config()
    config.data.format = "stsb"
    with pytest.raises(ValueError, match=r"config.task='classification' does not fit .*\(set --config.task=regr"):
        task_spec(config, "bert")


# ----------------------------------------------------------------------------------------------------------------
# End to end: a tiny pretraining run -> fine-tuning on real task data

def _task_texts():
    """Text of the tasks' training files, so that the tiny test tokenizer has words (not letters) for them, as
    a real tokenizer trained on a large corpus would."""
    texts = []
    with open(os.path.join(DATA, "glue", "SST-2", "train.tsv"), encoding="utf-8") as f:
        next(f)
        texts += [line.split("\t")[0].strip() for _, line in zip(range(20000), f)]
    words = []
    with open(os.path.join(DATA, "conll2003", "eng.train"), encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("-DOCSTART-"):
                words.append(line.split()[0])
            elif words:
                texts.append(" ".join(words))
                words = []
    with open(os.path.join(DATA, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        for article in json.load(f)["data"][:20]:
            for paragraph in article["paragraphs"]:
                texts += [paragraph["context"]] + [qa["question"] for qa in paragraph["qas"]]
    return texts


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny BERT (tests/configs/tiny.py:bert) pretrained with MLM + NSP for 100 steps on the embedded corpus.

    (100 steps at this size stay on the MLM unigram plateau: the backbone is nearly untrained, so the dev
    numbers below measure the fine-tuning pipeline, not the pretraining.)"""
    if not os.path.isdir(DATA):
        pytest.skip(f"shared task data not found at {DATA}")
    from jaxlm import data, pretrain

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    source = data.load_data_source(data.prepare_pydoc(data_dir).name, "train", data_dir)
    texts = [bytes(source[i]["text"]).decode() for i in range(len(source))] + _task_texts()
    prefix = str(tmp_path_factory.mktemp("tok") / "sp2k")
    data.train_tokenizer(iter(texts), prefix, 2000, input_sentence_size=30000)
    config = load_config_file(os.path.join(ROOT, "tests", "configs", "tiny.py") + ":bert")
    with config.unlocked():
        config.data.data_dir = data_dir
        config.data.tokenizer = prefix + ".model"
        config.train.num_steps = 100
        config.train.checkpoint_every = 100
        config.train.log_every = 100
    workdir = str(tmp_path_factory.mktemp("pretrain"))
    pretrain.run(config, workdir)
    return workdir


def finetune_run(config_file, workdir, init, **overrides):
    from jaxlm import finetune

    config = load_config_file(os.path.join(ROOT, "configs", "finetune", config_file))
    with config.unlocked():
        config.init_checkpoint = init
        config.data.max_len = 64  # the tiny model's max_position_embeddings
        config.optimizer.learning_rate = 1e-3  # a 32-wide model wants a larger step than BERT-base's 2e-5
        config.train.log_every = 100
        config.train.progress_bar = False
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
    summary = finetune.run(config, str(workdir))
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f)["final_eval"] == summary["final_eval"]
    return summary


@needs_data
@pytest.mark.slow
def test_sst2_end_to_end_with_evaluate_and_predict(pretrained, tmp_path):
    from jaxlm import evaluate, predict

    workdir = tmp_path / "sst2"
    summary = finetune_run("sst2.py", workdir, pretrained, **{"data.train_limit": 8000, "train.num_epochs": 2.0})
    print("SST-2 dev:", summary["final_eval"], "best", summary["best_step"], summary["best_eval"])
    assert summary["backbone"]["loaded"] == 39
    assert summary["backbone"]["new"] == ["head/classifier/bias", "head/classifier/kernel"]
    assert any(p.startswith("mlm_head/") for p in summary["backbone"]["unused"])
    # 8000 / 32 = 250 batches, + at most one short batch per other length bucket (16, 32, 64)
    assert summary["eval_examples"] == 872 and 250 <= summary["steps_per_epoch"] <= 252
    best = summary["best_eval"]["accuracy"]
    assert best > 0.6, f"dev accuracy {best} is not clearly above the majority class (444/872 = 0.509)"

    # The evaluate command scores the best checkpoint again: the same number.
    result = evaluate.evaluate(str(workdir))
    assert result["step"] == summary["best_step"]
    np.testing.assert_allclose(result["accuracy"], best, atol=1e-9)
    assert json.load(open(workdir / "eval_dev.json"))["accuracy"] == result["accuracy"]

    records = [{"text": "a gorgeous , witty , seductive movie ."}, {"text": "the plot is nothing but boilerplate"}]
    out = predict.predict(str(workdir), records)
    assert [r["text"] for r in out] == [r["text"] for r in records]
    for r in out:
        assert r["label"] in ("0", "1") and abs(sum(r["probabilities"].values()) - 1) < 1e-5
        assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)


@needs_data
@pytest.mark.slow
def test_resume_is_exact(pretrained, tmp_path):
    """A run resumed from its epoch-1 checkpoint (data position included) ends with bitwise the same params as
    the uninterrupted run; layer-wise lr decay on, length-bucketed batches (the default)."""
    from jaxlm.workdir import read_state

    workdir = tmp_path / "run"
    common = {"data.train_limit": 320, "data.eval_limit": 64, "train.num_epochs": 2.0, "train.keep_checkpoints": 2,
              "optimizer.layerwise_lr_decay": 0.8}
    straight = finetune_run("sst2.py", workdir, pretrained, **common)
    epoch = straight["steps_per_epoch"]  # 320 / 32 = 10, + a short batch per length bucket but the last
    assert 10 <= epoch <= 12 and straight["final_step"] == 2 * epoch
    final = jax.tree.map(np.asarray, read_state(str(workdir), 2 * epoch)["params"])
    import shutil
    shutil.rmtree(workdir / "checkpoints" / str(2 * epoch))
    resumed = finetune_run("sst2.py", workdir, pretrained, **common)
    assert resumed["resumed_from"] == epoch and resumed["steps_run"] == epoch
    jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, resumed["state"].params), final)
    assert resumed["final_eval"]["accuracy"] == straight["final_eval"]["accuracy"]


@needs_data
@pytest.mark.slow
def test_conll2003_entity_f1_beats_the_untrained_model(pretrained, tmp_path):
    common = {"data.train_limit": 3000, "data.eval_limit": 500}
    untrained = finetune_run("conll2003.py", tmp_path / "untrained", pretrained, **common, **{"train.num_epochs": 0.0})
    trained = finetune_run("conll2003.py", tmp_path / "ner", pretrained, **common, **{"train.num_epochs": 2.0})
    before, after = untrained["final_eval"]["f1"], trained["best_eval"]["f1"]
    print(f"CoNLL-2003 dev entity F1: untrained {before:.3f}, fine-tuned {after:.3f}")
    assert untrained["final_step"] == 0
    assert after > 0 and after > before + 0.05


@needs_data
@pytest.mark.slow
def test_squad_end_to_end(pretrained, tmp_path):
    from jaxlm import predict

    with open(os.path.join(DATA, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        articles = json.load(f)["data"]
    train_file, dev_file = tmp_path / "train.json", tmp_path / "dev.json"  # disjoint articles
    train_file.write_text(json.dumps({"version": "1.1", "data": articles[:3]}))
    dev_file.write_text(json.dumps({"version": "1.1", "data": [articles[40]]}))
    summary = finetune_run("squad.py", tmp_path / "squad", pretrained, **{
        "data.train_file": str(train_file), "data.eval_file": str(dev_file), "data.train_limit": 300,
        "data.eval_limit": 100, "data.max_query_len": 16, "data.doc_stride": 24, "train.num_epochs": 1.0})
    metrics = summary["final_eval"]
    print("SQuAD dev subset:", metrics)
    assert summary["eval_examples"] == 100 and metrics["answered"] == 1.0
    assert 0 <= metrics["exact_match"] <= metrics["f1"] <= 1

    context = articles[40]["paragraphs"][0]["context"]
    out = predict.predict(str(tmp_path / "squad"), [{"question": "What is it?", "context": context, "id": "q1"}])
    assert out[0]["id"] == "q1" and out[0]["answer"] in context
    assert context[out[0]["start"]:out[0]["end"]] == out[0]["answer"]


@needs_data
@pytest.mark.slow
def test_cli_bad_label_names_file_and_line(pretrained, tmp_path):
    bad = tmp_path / "train.tsv"
    bad.write_text("text\tlabel\ngreat fun\t1\nawful\tmaybe\n")
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlm.finetune", f"--config={ROOT}/configs/finetune/text_classification.py:tsv",
         f"--config.init_checkpoint={pretrained}", f"--workdir={tmp_path / 'run'}",
         f"--config.data.train_file={bad}", "--config.data.max_len=32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"{bad}:3: label 'maybe' is not in the label list ['0', '1']" in proc.stderr
    assert "Traceback" not in proc.stderr
