"""Train machinery on a tiny self-contained Flax model: sharded == unsharded, gradient accumulation,
optimizer, checkpoints (any mesh, atomicity, keep-last-K, iterator state), the loop's NaN / SIGTERM
behaviour with exact resume, and the FLOPs / MFU arithmetic."""
import functools
import json
import math
import os
import re
import signal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.sharding import PartitionSpec as P

from jaxlm import sharding as shd
from jaxlm import workdir as wd
from jaxlm.train import checkpoint as ckpt
from jaxlm.train import metrics as mx
from jaxlm.train import optimizer as opt
from jaxlm.train.evaluation import BatchEvaluator, evaluate_batches
from jaxlm.train.loop import NonFiniteLossError, train
from jaxlm.train.state import TrainState, abstract_train_state, create_train_state
from jaxlm.train.step import jit_eval_step, jit_train_step, make_eval_step, make_train_step, split_microbatches

VOCAB, D, MLP, B, L = 64, 16, 32, 16, 8


def _part(init, names):
    return nn.with_logical_partitioning(init, names)


class TinyLM(nn.Module):
    """Embedding (one-hot matmul, tied output) -> MLP block with residual -> LayerNorm -> logits."""
    dropout: float = 0.0

    @nn.compact
    def __call__(self, inputs_BxL, deterministic=True):
        emb_VxD = self.param("embedding", _part(nn.initializers.normal(0.5), ("vocab", "embed")), (VOCAB, D))
        x_BxLxD = jax.nn.one_hot(inputs_BxL, VOCAB) @ emb_VxD
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ("activation_batch", "activation_length", "activation_embed"))
        h = nn.Dense(MLP, kernel_init=_part(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     bias_init=_part(nn.initializers.zeros, ("mlp",)))(x_BxLxD)
        h = nn.with_logical_constraint(nn.gelu(h), ("activation_batch", "activation_length", "activation_mlp"))
        h = nn.Dropout(self.dropout, deterministic=deterministic)(h)
        x_BxLxD = x_BxLxD + nn.Dense(D, kernel_init=_part(nn.initializers.lecun_normal(), ("mlp", "embed")),
                                     bias_init=_part(nn.initializers.zeros, ("embed",)))(h)
        x_BxLxD = nn.LayerNorm(scale_init=_part(nn.initializers.ones, ("embed",)),
                               bias_init=_part(nn.initializers.zeros, ("embed",)))(x_BxLxD)
        return x_BxLxD @ emb_VxD.T


def init_fn(rng, model=TinyLM()):
    return model.init(rng, jnp.zeros((2, L), jnp.int32))


def make_loss(dropout=0.0):
    model = TinyLM(dropout=dropout)

    def loss_fn(params, batch, rng):
        logits = model.apply({"params": params}, batch["inputs"], deterministic=rng is None,
                             rngs=None if rng is None else {"dropout": rng})
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        nll = -jnp.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
        w = batch["weights"]
        n = w.sum()
        acc = ((logits.argmax(-1) == batch["targets"]) * w).sum() / n
        loss = (nll * w).sum() / n
        return loss, {"accuracy": acc, "lm_loss": loss, "num_tokens": n}

    return loss_fn


def make_batch(i, batch_size=B):
    rs = np.random.RandomState(1000 + i)
    inputs = rs.randint(0, VOCAB, (batch_size, L)).astype(np.int32)
    return {"inputs": inputs, "targets": ((inputs * 3 + 1) % VOCAB).astype(np.int32),
            "weights": (rs.rand(batch_size, L) > 0.3).astype(np.float32)}


class BatchIterator:
    """Deterministic batches with grain-style get_state/set_state; `hook(i)` runs before batch i."""

    def __init__(self, n=10_000, hook=None, nan_at=None):
        self.index, self.n, self.hook, self.nan_at = 0, n, hook, nan_at

    def __iter__(self):
        return self

    def __next__(self):
        if self.index >= self.n:
            raise StopIteration
        if self.hook:
            self.hook(self.index)
        batch = make_batch(self.index)
        if self.nan_at == self.index:
            batch["weights"][0, 0] = np.nan
        self.index += 1
        return batch

    def get_state(self):
        return {"index": self.index}

    def set_state(self, state):
        self.index = state["index"]


TX, SCHEDULE = opt.make_optimizer(opt.OptimizerConfig(learning_rate=3e-2, warmup_steps=3, total_steps=30,
                                                      weight_decay=0.01, max_grad_norm=1.0))
MESHES = {"1x1x1": (1, 1, 1), "8x1x1": (8, 1, 1), "2x2x2": (2, 2, 2), "1x4x2": (1, 4, 2)}


@functools.lru_cache(maxsize=None)
def setup(mesh_name, dropout=0.1):
    """(mesh, layout, jitted train step, jitted eval step), built once per mesh."""
    shape = MESHES[mesh_name]
    mesh = shd.make_mesh(*shape, devices=jax.devices()[:math.prod(shape)])
    layout = abstract_train_state(init_fn, TX, mesh)
    loss_fn = make_loss(dropout)
    step = jit_train_step(make_train_step(loss_fn, TX, learning_rate_fn=SCHEDULE), layout,
                          shd.batch_sharding(mesh), mesh)
    evaluate = jit_eval_step(make_eval_step(make_loss(0.0)), layout, shd.batch_sharding(mesh), mesh)
    return mesh, layout, step, evaluate


@functools.lru_cache(maxsize=None)
def _initial_host_state():
    state, _ = create_train_state(init_fn, TX, jax.random.PRNGKey(0), shd.make_mesh(2, 2, 2))
    return jax.device_get(state)


def fresh_state(mesh_name):
    """The same initial state on any mesh (create_train_state itself is exercised on 2x2x2)."""
    layout = setup(mesh_name)[1]
    return jax.device_put(_initial_host_state(), layout.shardings)


def run_steps(mesh_name, num_steps, dropout=0.1):
    mesh, _, step, _ = setup(mesh_name, dropout)
    state = fresh_state(mesh_name)
    losses = []
    for i in range(num_steps):
        state, metrics = step(state, shd.host_local_to_global(make_batch(i), mesh))
        losses.append(metrics["loss"])
    return state, np.array(jax.device_get(losses))


# --------------------------------------------------------------------------------------------------
# Sharded == unsharded


def test_meshes_give_the_same_losses_and_shard_params_by_the_rules():
    ref_state, ref = run_steps("1x1x1", 20)
    assert ref[-1] < ref[0] - 0.5, f"the tiny model should learn: {ref[0]} -> {ref[-1]}"
    for name in ("8x1x1", "2x2x2", "1x4x2"):
        state, losses = run_steps(name, 20)
        np.testing.assert_allclose(losses, ref, atol=1e-4, rtol=0, err_msg=name)
        specs = {k: v for k, v in jax.tree_util.tree_leaves_with_path(state.params)}
        kernel0 = state.params["Dense_0"]["kernel"]
        assert kernel0.sharding.spec == P("fsdp", "tensor")
        assert state.params["Dense_1"]["kernel"].sharding.spec == P("tensor", "fsdp")
        assert state.params["embedding"].sharding.spec == P("tensor", "fsdp")
        assert state.params["LayerNorm_0"]["scale"].sharding.spec == P("fsdp")
        mesh = setup(name)[0]
        fsdp, tensor = mesh.shape["fsdp"], mesh.shape["tensor"]
        assert kernel0.addressable_shards[0].data.shape == (D // fsdp, MLP // tensor)
        # Adam moments follow their parameter; counts are replicated.
        adam = state.opt_state[1][0]
        assert adam.mu["Dense_0"]["kernel"].sharding.spec == P("fsdp", "tensor")
        assert adam.count.sharding.spec == P()
        assert len(specs) == 7
    np.testing.assert_allclose(jax.device_get(state.params["Dense_0"]["kernel"]),
                               jax.device_get(ref_state.params["Dense_0"]["kernel"]), atol=1e-5)


def test_create_train_state_is_born_sharded_and_mesh_independent():
    mesh = shd.make_mesh(1, 4, 2)
    state, layout = create_train_state(init_fn, TX, jax.random.PRNGKey(0), mesh)
    assert layout.logical_specs["Dense_0"]["kernel"] == P("embed", "mlp")
    kernel = state.params["Dense_0"]["kernel"]
    assert kernel.sharding == layout.shardings.params["Dense_0"]["kernel"]
    assert {s.data.shape for s in kernel.addressable_shards} == {(D // 4, MLP // 2)}
    assert state.opt_state[1][0].nu["embedding"].sharding.spec == P("tensor", "fsdp")
    assert int(state.step) == 0 and state.rng.dtype == jnp.uint32
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(state)),
                    jax.tree_util.tree_leaves(_initial_host_state())):   # initialised on 2x2x2
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------------
# Gradient accumulation


def test_microbatches_equal_full_batch_with_uneven_token_counts():
    mesh = shd.make_mesh(2, 2, 2)
    sgd = optax.sgd(1.0)
    _, layout = create_train_state(init_fn, sgd, jax.random.PRNGKey(0), mesh)
    batch = make_batch(0, batch_size=32)
    batch["weights"][:8] = 0.0   # rows 0..7: microbatches get very different token counts
    batch["weights"][:8, 0] = 1.0
    counts = split_microbatches({"w": jnp.asarray(batch["weights"])}, 4)["w"].sum(axis=(1, 2))
    assert len(set(np.asarray(counts).tolist())) > 1, counts
    results = {}
    for n in (1, 4):
        state = create_train_state(init_fn, sgd, jax.random.PRNGKey(0), mesh)[0]
        before = jax.device_get(state.params)
        step = jit_train_step(make_train_step(make_loss(), sgd, num_microbatches=n), layout,
                              shd.batch_sharding(mesh), mesh)
        state, metrics = step(state, shd.host_local_to_global(batch, mesh))
        grads = jax.tree_util.tree_map(lambda b, a: b - a, before, jax.device_get(state.params))
        results[n] = (jax.device_get(metrics), grads)
    (m1, g1), (m4, g4) = results[1], results[4]
    np.testing.assert_allclose(m4["loss"], m1["loss"], atol=1e-5)
    np.testing.assert_allclose(m4["accuracy"], m1["accuracy"], atol=1e-5)
    np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], atol=1e-5)
    assert m4["num_tokens"] == m1["num_tokens"] == batch["weights"].sum()
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g4)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert float(jnp.abs(g1["Dense_0"]["kernel"]).max()) > 1e-3


def test_microbatch_count_must_divide_the_batch():
    with pytest.raises(ValueError, match=r"batch\['x'\] has shape \(6, 2\).*num_microbatches=4"):
        split_microbatches({"x": jnp.zeros((6, 2))}, 4)


# --------------------------------------------------------------------------------------------------
# Optimizer


def test_weight_decay_skips_biases_and_norm_scales():
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,))},
              "norm": {"scale": jnp.ones((4,))}, "embedding": jnp.ones((5, 3)),
              "scanned": {"bias": jnp.ones((2, 4)), "scale": jnp.ones((2, 4)), "kernel": jnp.ones((2, 3, 4))}}
    mask = opt.decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False}, "embedding": True,
                    "scanned": {"bias": False, "scale": False, "kernel": True}}
    tx, _ = opt.make_optimizer(opt.OptimizerConfig(learning_rate=0.5, warmup_steps=0, schedule="constant",
                                                   weight_decay=0.1, max_grad_norm=None))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    new = jax.jit(lambda p, g: optax.apply_updates(p, tx.update(g, tx.init(p), p)[0]))(params, zeros)
    for (path, p), m in zip(jax.tree_util.tree_leaves_with_path(new), jax.tree_util.tree_leaves(mask)):
        expected = 1.0 - 0.5 * 0.1 if m else 1.0   # decoupled decay: p -= lr * wd * p
        np.testing.assert_allclose(p, expected, rtol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("kind, points", [
    ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 60: 0.55, 110: 0.1, 500: 0.1}),
    ("cosine", {0: 0.0, 5: 0.5, 10: 1.0, 35: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 60: 0.55, 110: 0.1}),
    ("inverse_sqrt", {5: 0.5, 10: 1.0, 40: 0.5, 1000: 0.1}),
    ("rsqrt_decay", {0: 1.0, 5: 1.0, 10: 1.0, 40: 0.5, 1000: 0.1}),  # T5: 1 / sqrt(max(step, warmup)), no ramp
    ("constant", {0: 0.0, 5: 0.5, 10: 1.0, 1000: 1.0}),
])
def test_schedule_values(kind, points):
    cfg = opt.OptimizerConfig(learning_rate=1.0, warmup_steps=10, total_steps=110, schedule=kind,
                              end_learning_rate=0.1)
    sched = opt.make_schedule(cfg)
    for step, value in points.items():
        np.testing.assert_allclose(float(sched(step)), value, rtol=1e-6, atol=1e-7, err_msg=f"step {step}")


def test_optimizer_config_errors_name_the_key_and_adafactor_updates():
    with pytest.raises(ValueError, match=r"unknown optimizer config keys \['lr'\]"):
        opt.OptimizerConfig.from_dict({"lr": 1.0})
    with pytest.raises(ValueError, match="optimizer.schedule='cosin'"):
        opt.OptimizerConfig(schedule="cosin")
    tx, sched = opt.make_optimizer({"name": "adafactor", "learning_rate": 0.1, "warmup_steps": 0,
                                    "schedule": "constant"})
    params = {"kernel": jnp.ones((256, 130)), "bias": jnp.ones((130,))}
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
    assert float(updates["kernel"][0, 0]) < 0 and float(sched(7)) == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_restores_onto_other_meshes(tmp_path):
    state, _ = run_steps("2x2x2", 3)
    saved = jax.device_get(state)
    manager = ckpt.make_checkpoint_manager(str(tmp_path))
    assert ckpt.save_checkpoint(manager, 3, state, config={"model": "tiny", "dims": (D, MLP)})
    manager.wait_until_finished()
    for name in ("1x1x1", "8x1x1"):
        _, layout, step, _ = setup(name)
        restored = ckpt.restore_latest(str(tmp_path), layout)
        assert restored.step == 3 and restored.config == {"model": "tiny", "dims": [D, MLP]}
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(restored.state),
                                jax.tree_util.tree_leaves(saved)):
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=jax.tree_util.keystr(path))
        for a, s in zip(jax.tree_util.tree_leaves(restored.state), jax.tree_util.tree_leaves(layout.shardings)):
            assert a.sharding == s
        mesh = setup(name)[0]
        new_state, _ = step(restored.state, shd.host_local_to_global(make_batch(3), mesh))  # usable as is
        assert int(new_state.step) == 4
    manager.close()


def _small_state(value):
    return {"w": jnp.full((4, 2), float(value)), "step": jnp.asarray(value, jnp.int32)}


def test_keep_last_k_and_best_by_metric(tmp_path):
    manager = ckpt.make_checkpoint_manager(str(tmp_path / "last"), max_to_keep=2)
    for s in range(1, 5):
        ckpt.save_checkpoint(manager, s, _small_state(s))
    manager.wait_until_finished()
    assert manager.all_steps() == [3, 4]
    assert sorted(os.listdir(tmp_path / "last" / "checkpoints")) == ["3", "4"]
    manager.close()

    manager = ckpt.make_checkpoint_manager(str(tmp_path / "best"), max_to_keep=1, best_metric="loss",
                                           best_mode="min", keep_best=1)
    for s, loss in [(1, 3.0), (2, 1.0), (3, 2.0), (4, None)]:
        ckpt.save_checkpoint(manager, s, _small_state(s), metrics=None if loss is None else {"loss": loss})
    manager.wait_until_finished()
    assert manager.all_steps() == [2, 4] and manager.best_step() == 2
    manager.close()


def test_a_relative_workdir_saves_and_reads_back(tmp_path, monkeypatch):
    """`--workdir=runs/x` (make demo's): Orbax refuses relative paths, so the workdir is made absolute."""
    monkeypatch.chdir(tmp_path)
    manager = ckpt.make_checkpoint_manager("runs/x")
    ckpt.save_checkpoint(manager, 2, _small_state(2), config={"model": "tiny"})
    manager.wait_until_finished()
    manager.close()
    assert os.path.isdir(tmp_path / "runs" / "x" / "checkpoints" / "2")
    assert wd.read_config("runs/x") == {"model": "tiny"}
    assert float(wd.read_state("runs/x")["w"][0, 0]) == 2.0


def test_partially_written_checkpoints_are_ignored(tmp_path):
    manager = ckpt.make_checkpoint_manager(str(tmp_path))
    ckpt.save_checkpoint(manager, 3, _small_state(3), data_iter=BatchIterator())

    class Broken(BatchIterator):
        def get_state(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):   # a real save interrupted half-way
        ckpt.save_checkpoint(manager, 4, _small_state(4), data_iter=Broken())
        manager.wait_until_finished()
    # ... and a tmp directory like the one a killed process leaves behind.
    killed = tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp-1700000000"
    (killed / "state").mkdir(parents=True)
    (killed / "state" / "garbage").write_text("x")
    leftovers = [n for n in os.listdir(tmp_path / "checkpoints") if "tmp" in n]
    assert any(n.startswith("4.") for n in leftovers), leftovers
    target = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shd.replicated(shd.make_mesh())),
        _small_state(0))
    restored = ckpt.restore_latest(str(tmp_path), target)
    assert restored.step == 3 and float(restored.state["w"][0, 0]) == 3.0
    assert ckpt.make_checkpoint_manager(str(tmp_path)).latest_step() == 3


def test_data_iterator_state_round_trips(tmp_path):
    class BytesIterator:
        def __init__(self, state):
            self.state = state

        def get_state(self):
            return self.state

        def set_state(self, state):
            self.state = state

    manager = ckpt.make_checkpoint_manager(str(tmp_path))
    it = BatchIterator()
    for _ in range(3):
        next(it)
    ckpt.save_checkpoint(manager, 1, _small_state(1), data_iter=it)
    ckpt.save_checkpoint(manager, 2, _small_state(2), data_iter=BytesIterator(b"\xff\x00raw"))
    ckpt.save_checkpoint(manager, 3, _small_state(3), data_iter=BytesIterator(b'{"grain": 1}'))
    manager.wait_until_finished()
    target = jax.tree_util.tree_map(lambda x: x, _small_state(0))   # live arrays work as a target
    fresh = BatchIterator()
    assert ckpt.restore_checkpoint(manager, target, step=1, data_iter=fresh).data_iter_restored
    assert fresh.index == 3 and next(fresh)["inputs"].tolist() == make_batch(3)["inputs"].tolist()
    for step, expected in [(2, b"\xff\x00raw"), (3, b'{"grain": 1}')]:
        it = BytesIterator(None)
        ckpt.restore_checkpoint(manager, target, step=step, data_iter=it)
        assert it.state == expected
    manager.close()


# --------------------------------------------------------------------------------------------------
# The loop: NaN, SIGTERM, exact resume, reports


def _run_loop(workdir, num_steps, iterator, mesh_name="8x1x1", **kw):
    mesh, _, step, evaluate = setup(mesh_name)
    manager = ckpt.make_checkpoint_manager(str(workdir), max_to_keep=3)
    kw.setdefault("checkpoint_every", 4)
    kw.setdefault("log_every", 1)
    try:
        return train(state=fresh_state(mesh_name), train_step=step, train_iter=iterator, num_steps=num_steps,
                     workdir=str(workdir), mesh=mesh, checkpoint_manager=manager,
                     flops_per_step=1e9, tokens_per_step=B * L, peak_flops_per_device=1e10,
                     progress=False, config={"run": "test"}, **kw)
    finally:
        manager.close()


def _train_losses(workdir):
    return dict(zip(*mx.loss_history(mx.read_metrics(str(workdir)), "train")))


def test_ctrl_c_saves_and_resumes_exactly_and_a_second_ctrl_c_aborts(tmp_path):
    """The first SIGINT is a preemption (checkpoint at the current step, clean stop, exact resume); a second
    one aborts at once with KeyboardInterrupt, leaving the checkpoints already written."""
    full = _run_loop(tmp_path / "full", 8, BatchIterator())

    def ctrl_c(index):
        if index == 2:
            os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    first = _run_loop(tmp_path / "cut", 8, BatchIterator(hook=ctrl_c))
    assert first["status"] == "preempted" and first["final_step"] == 3 and first["checkpoint_step"] == 3
    assert signal.getsignal(signal.SIGINT) == handler_before
    second = _run_loop(tmp_path / "cut", 8, BatchIterator())
    assert second["resumed_from"] == 3 and second["final_step"] == 8
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")
    np.testing.assert_array_equal(jax.device_get(second["state"].params["Dense_0"]["kernel"]),
                                  jax.device_get(full["state"].params["Dense_0"]["kernel"]))

    def ctrl_c_twice(index):
        if index == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt, match="second Ctrl-C"):
        _run_loop(tmp_path / "abort", 8, BatchIterator(hook=ctrl_c_twice))
    assert signal.getsignal(signal.SIGINT) == handler_before


def _damage(step_dir, how):
    state = step_dir / "state"
    if how == "truncated array file":
        array_file = max((state / "d").iterdir(), key=lambda p: p.stat().st_size)
        array_file.write_bytes(array_file.read_bytes()[:array_file.stat().st_size // 2])
    elif how == "missing _METADATA":
        (state / "_METADATA").unlink()
    else:  # garbage in the config item
        (step_dir / "config" / "metadata").write_text("{garbage")


@pytest.mark.parametrize("how", ["truncated array file", "missing _METADATA", "garbage config"])
def test_a_damaged_latest_checkpoint_resumes_from_the_newest_intact_step(tmp_path, how, caplog):
    """A preempted pod's half-written or damaged newest step: the resume names the step and the problem, restores
    the step before, sets the damaged one aside (not deleted) and ends where an uninterrupted run ends."""
    full = _run_loop(tmp_path / "full", 12, BatchIterator())
    _run_loop(tmp_path / "cut", 8, BatchIterator())
    checkpoints = tmp_path / "cut" / "checkpoints"
    assert sorted(os.listdir(checkpoints)) == ["4", "8"]
    _damage(checkpoints / "8", how)
    with caplog.at_level("WARNING"):
        resumed = _run_loop(tmp_path / "cut", 12, BatchIterator())
    assert resumed["resumed_from"] == 4 and resumed["final_step"] == 12
    assert re.search(rf"checkpoint step 8 \({checkpoints / '8'}\) cannot be read: .*"
                     rf"({'_METADATA' if how != 'garbage config' else 'JSONDecodeError'})", caplog.text)
    assert sorted(os.listdir(tmp_path / "cut" / "damaged_checkpoints")) == ["8"]
    assert sorted(os.listdir(checkpoints)) == ["12", "4", "8"]  # step 8 saved again by the resumed run
    assert _train_losses(tmp_path / "cut") == _train_losses(tmp_path / "full")
    np.testing.assert_array_equal(jax.device_get(resumed["state"].params["Dense_0"]["kernel"]),
                                  jax.device_get(full["state"].params["Dense_0"]["kernel"]))


def test_checkpoints_of_a_state_without_memory_field_restore_and_a_memory_mismatch_is_named(tmp_path):
    """A checkpoint written before TrainState had a memory (its four fields, as Orbax stored them) resumes into
    today's state; a state with a memory against a run without one is a mismatch, not damage."""
    _, layout, _, _ = setup("8x1x1")
    state = fresh_state("8x1x1")
    manager = ckpt.make_checkpoint_manager(str(tmp_path / "old"), async_save=False)
    old_layout = {"step": state.step, "params": state.params, "opt_state": state.opt_state, "rng": state.rng}
    manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(old_layout)))
    restored = ckpt.restore_checkpoint(manager, layout)
    manager.close()
    assert restored.step == 3 and isinstance(restored.state, TrainState) and restored.state.memory is None
    np.testing.assert_array_equal(jax.device_get(restored.state.params["Dense_0"]["kernel"]),
                                  jax.device_get(state.params["Dense_0"]["kernel"]))
    manager = ckpt.make_checkpoint_manager(str(tmp_path / "memory"), async_save=False)
    ckpt.save_checkpoint(manager, 4, state.replace(memory=jnp.zeros((2, 16, 4, 8))))
    with pytest.raises(ckpt.CheckpointMismatchError, match=r"\['memory'\] differ \(a memory: .*mem_len"):
        ckpt.restore_checkpoint(manager, layout)
    assert manager.all_steps() == [4]
    manager.close()


def test_every_step_damaged_is_an_error_that_moves_nothing(tmp_path):
    _run_loop(tmp_path, 8, BatchIterator())
    for step in ("4", "8"):
        _damage(tmp_path / "checkpoints" / step, "missing _METADATA")
    with pytest.raises(RuntimeError, match=r"no checkpoint in .* can be read \(nothing was moved or deleted\): "
                                           r"step 8: .*_METADATA is missing; step 4: "):
        _run_loop(tmp_path, 12, BatchIterator())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4", "8"]


def test_resuming_with_another_model_size_names_the_parameter_both_shapes_and_the_key(tmp_path):
    """Orbax's own shape error named no parameter; a mismatch is not damage, so nothing falls back."""
    manager = ckpt.make_checkpoint_manager(str(tmp_path), async_save=False)
    ckpt.save_checkpoint(manager, 3, {"params": {"dense": {"kernel": jnp.zeros((4, 8))}}},
                         config={"model": {"hidden_size": 8}, "train": {"num_steps": 3}})
    wider = {"params": {"dense": {"kernel": jax.ShapeDtypeStruct((4, 16), jnp.float32)}}}
    with pytest.raises(ckpt.CheckpointMismatchError,
                       match=r"checkpoints/3: the checkpoint does not fit .*dense/kernel: stored \(4, 8\), the model "
                             r"wants \(4, 16\); changed since: config.model.hidden_size: 8 in the checkpoint, 16 now"):
        ckpt.restore_checkpoint(manager, wider, config={"model": {"hidden_size": 16}, "train": {"num_steps": 9}})
    assert manager.all_steps() == [3]
    manager.close()


def test_nan_loss_stops_with_the_step_named_and_last_checkpoint_intact(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 7 .*last good checkpoint: step 4"):
        _run_loop(tmp_path, 12, BatchIterator(nan_at=6), log_every=3)   # batch 6 feeds step 7
    entries = sorted(os.listdir(tmp_path / "checkpoints"))
    assert entries == ["4"], entries   # nothing from step 7 on, not even a tmp dir
    _, layout, _, _ = setup("8x1x1")
    restored = ckpt.restore_latest(str(tmp_path), layout)
    assert restored.step == 4 and int(restored.state.step) == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(restored.state.params))


def test_sigterm_checkpoints_and_resume_matches_uninterrupted_run(tmp_path):
    eval_fn = setup("8x1x1")[3]
    mesh = setup("8x1x1")[0]
    evaluator = BatchEvaluator(eval_fn, lambda: (make_batch(100 + i) for i in range(2)), mesh)
    eval_kw = dict(evaluate=evaluator, eval_every=4)
    full = _run_loop(tmp_path / "full", 8, BatchIterator(), **eval_kw)
    assert full["status"] == "completed" and full["final_step"] == 8 and full["checkpoint_step"] == 8

    def preempt(index):   # the preemption notice arrives while batch 4 (step 5) is being read
        if index == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    first = _run_loop(tmp_path / "cut", 8, BatchIterator(hook=preempt), **eval_kw)
    assert first["status"] == "preempted" and first["final_step"] == 5 and first["checkpoint_step"] == 5
    assert sorted(os.listdir(tmp_path / "cut" / "checkpoints")) == ["4", "5"]
    assert signal.getsignal(signal.SIGTERM) == handler_before   # the loop's handler is gone

    second = _run_loop(tmp_path / "cut", 8, BatchIterator(), **eval_kw)
    assert second["resumed_from"] == 5 and second["start_step"] == 5 and second["status"] == "completed"
    full_losses, cut_losses = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "cut")
    assert sorted(full_losses) == sorted(cut_losses) == list(range(1, 9))
    assert cut_losses == full_losses   # bitwise: data position, rngs and state all resumed exactly
    np.testing.assert_array_equal(jax.device_get(second["state"].params["Dense_0"]["kernel"]),
                                  jax.device_get(full["state"].params["Dense_0"]["kernel"]))
    assert second["final_eval"] == full["final_eval"]

    # Reports: JSONL, TensorBoard, summary.json, loss curve, eval metrics.
    workdir = tmp_path / "full"
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["tokens"] == 8 * B * L and summary["flops"] == 8e9
    assert summary["mfu"] == pytest.approx(1e9 / summary["step_time_s"] / (1e10 * 8))
    ev = summary["final_eval"]
    assert ev["perplexity"] == pytest.approx(math.exp(ev["loss"]), rel=1e-6) and 0 <= ev["accuracy"] <= 1
    evals = [r for r in mx.read_metrics(str(workdir)) if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    train_rec = [r for r in mx.read_metrics(str(workdir)) if r["split"] == "train"]
    assert train_rec[-1]["learning_rate"] == pytest.approx(float(SCHEDULE(7)))
    assert (workdir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(workdir / "tensorboard"))


def test_eval_average_weights_batches_by_tokens():
    mesh, layout, _, evaluate = setup("8x1x1")
    state = fresh_state("8x1x1")
    batches = [make_batch(200), make_batch(201)]
    batches[1]["weights"][:, 4:] = 0.0   # fewer tokens in the second batch
    got = evaluate_batches(evaluate, state.params, iter(batches), mesh, shd.batch_sharding(mesh))
    loss_fn = jax.jit(make_loss())
    losses, counts = zip(*[(float(loss), float(m["num_tokens"])) for loss, m in
                           (loss_fn(jax.device_get(state.params), b, None) for b in batches)])
    assert got["loss"] == pytest.approx(np.dot(losses, counts) / sum(counts), rel=1e-5)
    assert got["num_tokens"] == sum(counts)
    assert got["perplexity"] == pytest.approx(math.exp(got["lm_loss"]), rel=1e-6)


def test_eval_is_deterministic_whatever_dropout_is_configured():
    """Regression: the eval step ran the loss with a fixed rng, so a model configured with dropout dropped units
    in evaluation. Now it runs with rng None: the same numbers as the model without dropout."""
    mesh, layout, _, _ = setup("8x1x1")
    state = fresh_state("8x1x1")
    with_dropout = jit_eval_step(make_eval_step(make_loss(0.5)), layout, shd.batch_sharding(mesh), mesh)
    without = jit_eval_step(make_eval_step(make_loss(0.0)), layout, shd.batch_sharding(mesh), mesh)
    batches = [make_batch(300), make_batch(301)]
    a = evaluate_batches(with_dropout, state.params, iter(batches), mesh)
    b = evaluate_batches(without, state.params, iter(batches), mesh)
    assert a == b and a["loss"] > 0
    train_loss = float(jax.jit(make_loss(0.5))(jax.device_get(state.params), batches[0], jax.random.key(1))[0])
    assert train_loss != pytest.approx(float(make_loss(0.0)(jax.device_get(state.params), batches[0], None)[0]))


# --------------------------------------------------------------------------------------------------
# FLOPs and MFU


def test_flops_and_mfu_formulas():
    # BERT-base-like: 85M non-embedding params, 12 layers, d 768, seq 512.
    for kind, peak in [("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v5p", 459e12),
                       ("TPU v6 lite", 918e12), ("NVIDIA A100-SXM4-40GB", 312e12),
                       ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H200", 989e12)]:
        assert mx.peak_flops_per_device(kind) == peak, kind
    assert mx.peak_flops_per_device("cpu", cpu_peak=2.7e11) == 2.7e11
    assert mx.peak_flops_per_device("cpu") is None and mx.peak_flops_per_device("Mystery chip") is None
    # 1 PFLOP per step in 2 s on 4 x 275 TFLOP/s = 45.45 %.
    assert mx.mfu(1e15, 2.0, 275e12, 4) == pytest.approx(1e15 / 2.0 / 1.1e15)
    assert mx.mfu(1e15, 2.0, None, 4) is None
    measured = mx.measure_matmul_peak_flops(n=128, repeats=2)
    assert 1e8 < measured < 1e14


def test_a_negative_or_infinite_learning_rate_is_refused_naming_the_key():
    """A negative learning rate once trained to exit 0 with an eval perplexity of 5.5e34."""
    for bad in (-1e-3, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"optimizer.learning_rate=.* must be a finite number >= 0"):
            opt.OptimizerConfig(learning_rate=bad)
