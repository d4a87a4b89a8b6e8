"""The loop's calls: several steps per compiled call (`steps_per_call`, a scan over stacked batches) and batches
prefetched by a background thread give the uninterrupted run's per-step losses and parameters bitwise, through
a preemption and resume too; the checkpointed data position is the loop's, not the prefetcher's."""
import os
import signal

import jax
import numpy as np
import pytest

from jaxlm import sharding as shd
from jaxlm.train import checkpoint as ckpt
from jaxlm.train import metrics as mx
from jaxlm.train.loop import steps_per_call_plan
from jaxlm.train.step import jit_train_steps, make_train_step
from tests.test_train import SCHEDULE, TX, BatchIterator, _run_loop, make_loss
from tests.test_train import setup as loop_setup

MESH = "8x1x1"


def _train_steps():
    mesh, layout, _, _ = loop_setup(MESH)
    return jit_train_steps(make_train_step(make_loss(0.1), TX, learning_rate_fn=SCHEDULE), layout,
                           shd.batch_sharding(mesh), mesh)


def _run(workdir, num_steps, iterator, **kw):
    return _run_loop(workdir, num_steps, iterator, MESH, tensorboard=False, **kw)


def _losses(workdir):
    return dict(zip(*mx.loss_history(mx.read_metrics(str(workdir)), "train")))


def _kernel(summary):
    return np.asarray(jax.device_get(summary["state"].params["Dense_0"]["kernel"]))


def test_the_plan_never_crosses_a_boundary():
    plan = steps_per_call_plan(4, 22, (8, 12))
    calls, step = [], 0
    while step < 22:
        calls.append(plan(step))
        step += calls[-1]
    # calls of 4 up to 20 (16 + 4 is still short of the end, 22), then steps 20 and 21 one by one
    assert calls == [4, 4, 4, 4, 4, 1, 1]
    assert steps_per_call_plan(1, 10, (3,))(0) == 1
    assert steps_per_call_plan(4, 10, (3,))(1) == 1   # off the k grid: one step


def test_steps_per_call_and_prefetch_equal_single_steps_bitwise_through_a_preemption(tmp_path):
    single = _run(tmp_path / "single", 16, BatchIterator(), log_every=4)
    multi_kw = dict(train_steps=_train_steps(), steps_per_call=4, prefetch=2, log_every=4)
    multi = _run(tmp_path / "multi", 16, BatchIterator(), **multi_kw)
    assert multi["status"] == "completed" and multi["final_step"] == 16
    expected = _losses(tmp_path / "single")   # (its first record is step 1: its first call is one step)
    assert {s: expected[s] for s in (8, 12, 16)} == {s: _losses(tmp_path / "multi")[s] for s in (8, 12, 16)}
    np.testing.assert_array_equal(_kernel(multi), _kernel(single))

    def preempt(index):  # read ahead by the prefetch thread: the loop stops at the next call boundary
        if index == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    iterator = BatchIterator(hook=preempt)
    first = _run(tmp_path / "cut", 16, iterator, **multi_kw)
    assert first["status"] == "preempted" and first["final_step"] % 4 == 0 and first["final_step"] < 16
    assert iterator.index == first["final_step"]   # moved back from the prefetcher's position to the loop's
    saved = ckpt.make_checkpoint_manager(str(tmp_path / "cut"))
    try:
        assert saved.latest_step() == first["final_step"]
    finally:
        saved.close()
    second = _run(tmp_path / "cut", 16, BatchIterator(), **multi_kw)
    assert second["resumed_from"] == first["final_step"] and second["final_step"] == 16
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "multi")
    np.testing.assert_array_equal(_kernel(second), _kernel(single))


def test_a_stacked_call_that_runs_out_of_data_takes_the_rest_one_by_one(tmp_path):
    summary = _run(tmp_path / "short", 12, BatchIterator(n=6), train_steps=_train_steps(), steps_per_call=4,
                   prefetch=0, log_every=4, checkpoint_every=0)
    assert summary["status"] == "data_exhausted" and summary["final_step"] == 6
    assert sorted(_losses(tmp_path / "short")) == [4, 6]


def test_steps_per_call_needs_the_multi_step_function(tmp_path):
    with pytest.raises(ValueError, match="train_steps"):
        _run(tmp_path, 4, BatchIterator(), steps_per_call=2)
