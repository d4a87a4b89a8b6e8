"""Sweeps (jaxlm.sweep): a vmapped trial is a plain fine-tuning run, trials differ by their seeds, early stopping
keeps the k best, the expected-max estimator against brute force, flag errors; on a tiny BERT and SST-2 subsets."""
import dataclasses
import itertools
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

from jaxlm import sweep
from jaxlm.config_defaults import load_config_file
from jaxlm.models import build_model, get_model_config
from jaxlm.train import TrainState, make_checkpoint_manager, save_checkpoint
from jaxlm.train import sweep_report as rep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
SST2 = os.path.join(DATA, "glue", "SST-2")
TINY = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, max_position_embeddings=64,
            vocab_size=264)  # the bytes tokenizer's 263 ids fit
needs_sst2 = pytest.mark.skipif(not os.path.isfile(os.path.join(SST2, "train.tsv")),
                                reason=f"SST-2 not found at {SST2} (the GLUE files of ../shared/data)")


# ----------------------------------------------------------------------------------------------------------------
# The expected-max estimator and the statistics

def brute_force_expected_max(values, n, higher_is_better=True):
    """Mean and std of the best of every ordered n-tuple drawn with replacement (each equally likely)."""
    pick = max if higher_is_better else min
    best = np.array([pick(c) for c in itertools.product(values, repeat=n)])
    return best.mean(), best.std()


def test_expected_max_equals_hand_computation_and_brute_force():
    values = [0.1, 0.5, 0.5, 0.9]
    # By hand for n = 2: F = 1/4, 3/4, 1 at 0.1, 0.5, 0.9; P(max) = 1/16, 8/16, 7/16.
    mean, std = rep.expected_max(values, 2)
    assert mean == pytest.approx((0.1 * 1 + 0.5 * 8 + 0.9 * 7) / 16, abs=1e-12)  # 0.65
    assert std == pytest.approx(np.sqrt((0.01 * 1 + 0.25 * 8 + 0.81 * 7) / 16 - 0.65 ** 2), abs=1e-12)
    assert rep.expected_max(values, 1)[0] == pytest.approx(np.mean(values), abs=1e-12)

    rng = np.random.default_rng(0)
    sample = list(np.round(rng.uniform(0.4, 0.9, 5), 2)) + [0.6]  # one tie
    for higher in (True, False):
        curve = rep.expected_max_curve(sample, higher, max_n=4)
        assert curve["n"] == [1, 2, 3, 4]
        for n in range(1, 5):
            want_mean, want_std = brute_force_expected_max(sample, n, higher)
            assert curve["mean"][n - 1] == pytest.approx(want_mean, abs=1e-12)
            assert curve["std"][n - 1] == pytest.approx(want_std, abs=1e-9)
        assert np.all(np.diff(curve["mean"]) > 0) if higher else np.all(np.diff(curve["mean"]) < 0)
    # Many draws: the expected best tends to the best observed value.
    assert rep.expected_max(sample, 200)[0] == pytest.approx(max(sample), abs=1e-6)

    with pytest.raises(ValueError, match="finite"):
        rep.expected_max([0.5, float("nan")], 2)


def test_across_seeds_statistics():
    stats = rep.across_seeds([0.8, 0.9, 0.7])
    assert stats == {"count": 3, "mean": pytest.approx(0.8), "std": pytest.approx(0.1), "min": 0.7, "max": 0.9}
    assert rep.across_seeds([0.5])["std"] == 0.0 and rep.across_seeds([]) == {"count": 0}


# ----------------------------------------------------------------------------------------------------------------
# Flags, the grid, early stopping's choice

def test_bad_flags_name_the_flag():
    assert sweep.parse_seeds("--seeds", "0-3,7") == [0, 1, 2, 3, 7]
    assert sweep.parse_learning_rates("--learning_rates", "2e-5, 3e-5,5e-5") == [2e-5, 3e-5, 5e-5]
    for text, match in [("5-2", r"--seeds='5-2': the range 5-2 is empty"), ("a", r"--seeds='a': 'a' is not a seed"),
                        ("1,1", "--seeds='1,1': a seed is listed twice"), ("-1", "--seeds='-1'")]:
        with pytest.raises(ValueError, match=match):
            sweep.parse_seeds("--seeds", text)
    for text, match in [("", r"--learning_rates='' is empty"), (" , ", r"--learning_rates=' , ' is empty"),
                        ("2e-5,-1e-5", r"--learning_rates='2e-5,-1e-5': -1e-5 is not a positive learning rate"),
                        ("0", "0 is not a positive"), ("nan", "nan is not a positive"), ("fast", "'fast' is not")]:
        with pytest.raises(ValueError, match=match):
            sweep.parse_learning_rates("--learning_rates", text)
    with pytest.raises(ValueError, match="--seeds sets both"):
        sweep.make_trials([1e-3], seeds=[0], init_seeds=[1])
    with pytest.raises(ValueError, match=r"--early_stop_at=1.5 must be a fraction"):
        sweep.check_early_stopping(1.5, 2, 4)
    with pytest.raises(ValueError, match=r"--early_stop_keep=4 must be in \[1, 4\)"):
        sweep.check_early_stopping(0.3, 4, 4)
    with pytest.raises(ValueError, match=r"--early_stop_at=0.0 must be"):
        sweep.check_early_stopping(0.0, 2, 4)


def test_cli_bad_flag_is_an_error_naming_it(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "jaxlm.sweep", f"--config={ROOT}/configs/finetune/sst2.py", "--seeds=5-2",
         "--learning_rates=2e-5,3e-5", f"--workdir={tmp_path / 'sweep'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: --seeds='5-2': the range 5-2 is empty" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "sweep").exists()


def test_grid_pairs_or_crosses_the_seeds():
    paired = sweep.make_trials([1e-3, 2e-3], seeds=[0, 1])
    assert [(t.index, t.init_seed, t.data_seed, t.learning_rate) for t in paired] == [
        (0, 0, 0, 1e-3), (1, 1, 1, 1e-3), (2, 0, 0, 2e-3), (3, 1, 1, 2e-3)]
    crossed = sweep.make_trials([1e-3], init_seeds=[0, 1], data_seeds=[5, 6])
    assert [(t.init_seed, t.data_seed) for t in crossed] == [(0, 5), (0, 6), (1, 5), (1, 6)]
    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "sst2.py"))
    config.seed, config.data_seed = 3, 9
    assert [(t.init_seed, t.data_seed) for t in sweep.make_trials([1e-3], init_seeds=[0, 1], config=config)] == [
        (0, 9), (1, 9)]
    assert [(t.init_seed, t.data_seed) for t in sweep.make_trials([1e-3], data_seeds=[4], config=config)] == [(3, 4)]
    trial = sweep.trial_config(config, crossed[3])
    assert (trial.seed, trial.data_seed, trial.optimizer.learning_rate) == (1, 6, 1e-3)
    assert config.seed == 3  # the sweep's config is left alone


def test_early_stop_keeps_the_k_best_by_the_metric():
    trials = sweep.make_trials([1e-3], seeds=list(range(6)))
    evals = {0: [{"step": 3, "loss": 0.7}], 1: [{"step": 3, "loss": 0.5}], 2: [{"step": 3, "loss": 0.5}],
             3: [{"step": 3, "loss": 0.2}], 4: [{"step": 3, "loss": 0.9}], 5: []}
    lower = sweep._early_stop(trials, [0, 1, 2, 3, 4, 5], evals, {5: 2}, "loss", "min", 3, 3)
    assert lower["kept"] == [1, 2, 3] and lower["stopped"] == [0, 4, 5]  # 0.2, 0.5, 0.5 (the tie: both)
    assert lower["metric_at_stop"] == {0: 0.7, 1: 0.5, 2: 0.5, 3: 0.2, 4: 0.9, 5: None}
    higher = sweep._early_stop(trials, [0, 1, 2, 3, 4, 5], evals, {5: 2}, "loss", "max", 2, 3)
    assert higher["kept"] == [0, 4]
    tie = sweep._early_stop(trials, [0, 1, 2, 3, 4, 5], evals, {5: 2}, "loss", "min", 2, 3)
    assert tie["kept"] == [1, 3]  # of the tied 0.5s, the earlier trial


# ----------------------------------------------------------------------------------------------------------------
# The stacked step against the plain one

@pytest.mark.slow
def test_trials_step_in_groups_equals_plain_steps():
    """3 trials (own seed, own batches, own peak lr; dropout on), stacked and stepped twice in groups of 2 (the last
    group of 1), equal 3 plain runs. (All trials at once: test_a_trial_equals_a_plain_finetune_run.)"""
    from jaxlm import sharding as shd
    from jaxlm import train
    from jaxlm.tasks import TaskSpec, get_task
    from jaxlm.tasks.finetuning import task_model
    from jaxlm.train import trials as tr

    model = task_model(get_model_config("bert", None, **TINY), "classification", 2)
    spec = TaskSpec(task="classification", format="", labels=("0", "1"), pair=False, style="bert", max_len=16)
    loss_fn = get_task("classification").loss_fn(spec, model)
    rng = np.random.default_rng(0)
    batches = [{"inputs": rng.integers(5, 260, (3, 8, 16)).astype(np.int32),
                "segment_ids": np.ones((3, 8, 16), np.int32), "labels": rng.integers(0, 2, (3, 8)).astype(np.int32),
                "example_weights": np.ones((3, 8), np.float32)} for _ in range(2)]
    init = lambda r: model.init(r, jnp.ones((1, 16), jnp.int32))  # noqa: E731
    opt = dict(learning_rate=1.0, warmup_steps=1, total_steps=10)
    seeds, rates = [4, 5, 6], [1e-3, 3e-3, 1e-2]
    mesh = shd.make_mesh()
    tx, _ = train.make_optimizer(opt)
    states, layout = tr.create_trial_states(init, tx, seeds, mesh)
    step = tr.jit_trials_step(tr.make_trials_step(loss_fn, lambda lr: train.make_optimizer(opt, learning_rate=lr),
                                                  vmap_width=2), layout, mesh)
    losses = []
    for batch in batches:
        states, metrics = step(states, shd.host_local_to_global(batch, mesh, tr.trial_batch_sharding(mesh)),
                               jnp.asarray(rates, jnp.float32))
        losses.append(np.asarray(metrics["loss"]))
    for k, (seed, rate) in enumerate(zip(seeds, rates)):
        tx_k, schedule = train.make_optimizer({**opt, "learning_rate": rate})
        state, layout_k = train.create_train_state(init, tx_k, jax.random.key(seed), mesh)
        plain = train.jit_train_step(train.make_train_step(loss_fn, tx_k, learning_rate_fn=schedule), layout_k,
                                     shd.batch_sharding(mesh), mesh)
        for i, batch in enumerate(batches):
            state, metrics = plain(state, shd.host_local_to_global({key: v[k] for key, v in batch.items()}, mesh))
            assert float(metrics["loss"]) == pytest.approx(float(losses[i][k]), abs=1e-6), (k, i)
        for a, b in zip(jax.tree.leaves(states.params), jax.tree.leaves(state.params)):
            np.testing.assert_allclose(np.asarray(a)[k], np.asarray(b), atol=1e-6, rtol=0)
    assert abs(losses[1][0] - losses[1][1]) > 1e-4  # another head, batch and rate: another trial


# ----------------------------------------------------------------------------------------------------------------
# End to end on a tiny BERT

@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny BERT pretraining checkpoint (random weights: the sweep's arithmetic, not its accuracy, is tested)."""
    workdir = str(tmp_path_factory.mktemp("pretrained"))
    config = get_model_config("bert", None, **TINY)
    params = nn.unbox(build_model(config).init(jax.random.key(1), jnp.ones((1, 8), jnp.int32))["params"])
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optax.adamw(1e-3).init(params),
                       rng=jnp.zeros((2,), jnp.uint32))
    manager = make_checkpoint_manager(workdir, async_save=False)
    save_checkpoint(manager, 7, state, config={"model": {"family": "bert"}, "model_config": dataclasses.asdict(config)})
    manager.wait_until_finished()
    manager.close()
    return workdir


def sst2_config(backbone, **train):
    """configs/finetune/sst2.py on 96 training / 64 dev sentences: 6 steps of 16 per epoch, 2 epochs."""
    config = load_config_file(os.path.join(ROOT, "configs", "finetune", "sst2.py"))
    config.init_checkpoint, config.tokenizer = backbone, "bytes"
    config.data.update(max_len=64, train_limit=96, eval_limit=64)
    config.optimizer.learning_rate = 1e-3
    config.train.update(batch_size=16, eval_batch_size=32, num_epochs=2.0, log_every=1, progress_bar=False,
                        async_checkpointing=False, **train)
    return config


@pytest.fixture(scope="module")
def swept(backbone, tmp_path_factory):
    """8 trials (init seeds 1, 2 x data seeds 3, 4 x lr 1e-3, 1e-2), ranked by dev loss; after a quarter of the 12
    steps only the best 3 continue."""
    if not os.path.isfile(os.path.join(SST2, "train.tsv")):
        pytest.skip(f"SST-2 not found at {SST2}")
    config = sst2_config(backbone, best_metric="loss")
    trials = sweep.make_trials([1e-3, 1e-2], init_seeds=[1, 2], data_seeds=[3, 4], config=config)
    workdir = tmp_path_factory.mktemp("sweep")
    result = sweep.run(config, str(workdir), trials, early_stop_at=0.25, early_stop_keep=3)
    with open(workdir / sweep.REPORT_FILE) as f:
        assert json.load(f)["best_trial"] == result["best_trial"]
    return config, trials, result, workdir


@needs_sst2
@pytest.mark.slow
def test_a_trial_equals_a_plain_finetune_run(swept, tmp_path):
    """The best trial, trained 3 steps with 7 others then 9 with 2 others, gives finetune.run's per-step losses and
    dev metrics with the same seeds and learning rate; DIR/best evaluates to the same number."""
    from jaxlm import evaluate, finetune, predict

    config, trials, result, workdir = swept
    k = result["best_trial"]["index"]
    trial = result["trials"][k]
    assert trial["status"] == "completed" and trial["steps_trained"] == 12 and len(trial["train_loss"]) == 12
    summary = finetune.run(sweep.trial_config(config, trials[k]), str(tmp_path / "plain"))
    with open(tmp_path / "plain" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    plain_losses = [r["loss"] for r in records if r["split"] == "train"]
    np.testing.assert_allclose(trial["train_loss"], plain_losses, atol=1e-5, rtol=0)
    plain_evals = [r for r in records if r["split"] == "eval"]
    assert [e["step"] for e in trial["evals"]] == [3] + [e["step"] for e in plain_evals]  # + the early-stop round
    for mine, plain in zip(trial["evals"][1:], plain_evals):
        for name in ("loss", "accuracy", "f1"):
            assert mine[name] == pytest.approx(plain[name], abs=1e-5), (mine, plain)
    assert trial["final"]["loss"] == pytest.approx(summary["final_eval"]["loss"], abs=1e-5)

    best = result["best_trial"]
    assert best["metrics"]["loss"] == min(e["loss"] for t in result["trials"] for e in t["evals"])
    scored = evaluate.evaluate(str(workdir / sweep.BEST_DIR), limit=64)  # the sweep's dev subset
    assert scored["step"] == best["step"]
    assert scored["loss"] == pytest.approx(best["metrics"]["loss"], abs=1e-6)
    out = predict.predict(str(workdir / sweep.BEST_DIR), [{"text": "a gorgeous , witty , seductive movie ."}])
    assert out[0]["label"] in ("0", "1") and abs(sum(out[0]["probabilities"].values()) - 1) < 1e-5
    with open(workdir / sweep.BEST_DIR / "summary.json") as f:
        assert json.load(f)["sweep_trial"] == {k: trial[k] for k in ("index", "init_seed", "data_seed",
                                                                       "learning_rate")}


@needs_sst2
@pytest.mark.slow
def test_trials_differ_by_seed_and_early_stopping_keeps_the_best(swept):
    config, trials, result, workdir = swept
    rows = result["trials"]
    first_loss = {(r["init_seed"], r["data_seed"], r["learning_rate"]): r["train_loss"][0] for r in rows}
    # Step 1 runs before any update: the loss depends on the head (init seed) and the batch (data seed) only.
    assert first_loss[(1, 3, 1e-3)] == first_loss[(1, 3, 1e-2)]
    assert abs(first_loss[(1, 3, 1e-3)] - first_loss[(2, 3, 1e-3)]) > 1e-4  # another head
    assert abs(first_loss[(1, 3, 1e-3)] - first_loss[(1, 4, 1e-3)]) > 1e-4  # another batch
    assert abs(rows[0]["train_loss"][2] - rows[4]["train_loss"][2]) > 1e-4  # another learning rate

    early = result["early_stopping"]
    assert early["step"] == 3 and early["keep"] == 3
    at_stop = {r["index"]: r["evals"][0]["loss"] for r in rows}
    assert all(r["evals"][0]["step"] == 3 for r in rows)
    assert early["kept"] == sorted(sorted(at_stop, key=lambda i: (at_stop[i], i))[:3])
    for r in rows:
        kept = r["index"] in early["kept"]
        assert r["status"] == ("completed" if kept else "stopped")
        assert r["steps_trained"] == (12 if kept else 3) and len(r["train_loss"]) == r["steps_trained"]
        assert [e["step"] for e in r["evals"]] == ([3, 6, 12] if kept else [3])
    compute = result["compute"]
    assert compute["trial_steps_full"] == 8 * 12 and compute["trial_steps_saved"] == 5 * 9
    assert compute["flops_saved"] == pytest.approx(45 * compute["flops_per_trial_step"])
    assert compute["flops_per_trial_step"] > 0

    # The report's per-rate statistics and curves come from the completed trials' best dev loss.
    for lr in (1e-3, 1e-2):
        values = [min(e["loss"] for e in r["evals"]) for r in rows
                  if r["learning_rate"] == lr and r["status"] == "completed"]
        stats = result["by_learning_rate"][f"{lr:g}"]["best"]
        assert stats["count"] == len(values)
        if values:
            assert stats["mean"] == pytest.approx(np.mean(values)) and stats["min"] == pytest.approx(min(values))
    completed = [min(e["loss"] for e in r["evals"]) for r in rows if r["status"] == "completed"]
    assert result["expected_max"]["all trials"]["mean"] == pytest.approx(
        [brute_force_expected_max(completed, n, higher_is_better=False)[0] for n in range(1, 4)])
    assert len(result["expected_max"]["at_early_stop"]["n"]) == 8
    with open(workdir / sweep.PLOT_FILE, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
