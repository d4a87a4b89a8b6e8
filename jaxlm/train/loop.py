"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly.

- Resumes automatically from the latest complete checkpoint (state and data-iterator position), so a
  resumed run sees exactly the batches and rngs an uninterrupted one would.
- Metrics stay on device and are fetched in one go at log / eval / checkpoint boundaries (no per-step
  host sync); every step's `is_finite` is checked then, so a non-finite loss is reported with the
  exact step. A non-finite state is never saved: the check precedes every save, and the loop raises
  `NonFiniteLossError` leaving the last good checkpoint untouched.
- SIGTERM (preemption) sets a flag; at the next step boundary the loop saves the current step, waits
  for the write and returns with status 'preempted'. With several processes, the step to save is
  agreed through JAX's preemption sync point instead (JAX's coordination service owns SIGTERM there).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding

from jaxlm import sharding as shd
from jaxlm.train import checkpoint as ckpt
from jaxlm.train import metrics as mx
from jaxlm.train.accounting import Accounting
from jaxlm.train.evaluation import Evaluator, to_global

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient norm became NaN/inf; `step` is the update that produced it."""

    def __init__(self, step: int, loss: float, grad_norm: float, last_checkpoint: int | None, where: str):
        self.step, self.loss, self.grad_norm, self.last_checkpoint = step, loss, grad_norm, last_checkpoint
        kept = (f"last good checkpoint: step {last_checkpoint} in {where}" if last_checkpoint is not None
                else "no checkpoint was saved")
        super().__init__(f"non-finite loss at step {step} (loss={loss}, grad_norm={grad_norm}); stopping "
                         f"without saving this state; {kept}")


class _StopFlag:
    """SIGTERM (how Cloud TPU announces preemption) and the first SIGINT (Ctrl-C) -> flag: the loop checkpoints at
    the current step and stops cleanly. A second SIGINT aborts at once (KeyboardInterrupt). Installed only for the
    duration of the loop (main thread, one process)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.warned = False
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt("second Ctrl-C: aborting without a checkpoint")
        name = signal.Signals(signum).name
        log.warning("received %s: will checkpoint and stop at the next step boundary%s", name,
                    " (Ctrl-C again to abort at once)" if signum == signal.SIGINT else "")
        self.requested = True

    @contextlib.contextmanager
    def installed(self, enabled: bool):
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = {sig: signal.signal(sig, self._handler) for sig in self.SIGNALS}
        try:
            yield self
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)


def _should_stop(flag: _StopFlag, step: int) -> bool:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError as e:   # preemption service disabled: no coordinated stop possible
            if not flag.warned:
                log.warning("cannot agree on a preemption step across processes: %s", e)
                flag.warned = True
            return False
    return flag.requested


def train(*, state: Any, train_step: Callable, train_iter: Iterator[Mapping[str, Any]], num_steps: int,
          workdir: str, mesh: Mesh, batch_sharding: NamedSharding | None = None,
          checkpoint_manager: ocp.CheckpointManager | None = None, checkpoint_every: int = 1000,
          evaluate: Evaluator | None = None, eval_every: int = 0,
          log_every: int = 50, flops_per_step: float | None = None, tokens_per_step: int | None = None,
          peak_flops_per_device: float | None = None, config: Any = None,
          progress: bool = True, tensorboard: bool = True, handle_sigterm: bool = True,
          extra_summary: Mapping[str, Any] | None = None, accounting: Accounting | None = None,
          ) -> dict[str, Any]:
    """Trains until `state.step == num_steps`; returns the run summary (also in workdir/summary.json).

    state: a freshly created state (donated to the first step: do not reuse it). If
      `checkpoint_manager` holds a checkpoint, it is restored onto this state's shardings instead,
      together with `train_iter`'s position (the iterator needs get_state/set_state for that).
    train_step: `jit_train_step(...)` result, (state, batch) -> (state, metrics).
    train_iter: host-local batches (numpy dicts); made global with `host_local_to_global`.
    evaluate: evaluate(params) -> dict of metrics (jaxlm.train.evaluation: BatchEvaluator for pretraining,
      the task's evaluator for fine-tuning); deterministic.
    checkpoint_every / eval_every / log_every: in steps (0 disables periodic eval/checkpoints); the
      final step is always logged, evaluated (if an eval set is given) and checkpointed.
    flops_per_step / tokens_per_step: for tokens/s, TFLOP/s and MFU (per-step totals over all devices).
    peak_flops_per_device: default: table by device kind (measured matmul peak on CPU).
    extra_summary: more entries for the summary (e.g. a baseline to read the final eval against).
    accounting: device-hours, energy and CO2e (jaxlm.train.accounting), from the first step after compilation:
      logged with the train metrics and under 'accounting' in the summary.

    Summary 'status': 'completed', 'preempted' (SIGTERM: checkpoint saved at 'final_step') or
    'data_exhausted'. A non-finite loss raises NonFiniteLossError instead. The returned dict also
    holds the final TrainState under 'state' (not written to summary.json).
    """
    t_begin = time.perf_counter()
    batch_sharding = batch_sharding or shd.batch_sharding(mesh)
    is_main = jax.process_index() == 0
    num_devices = mesh.devices.size
    if flops_per_step and peak_flops_per_device is None:
        peak_flops_per_device = mx.default_peak_flops_per_device()

    resumed_from = None
    if checkpoint_manager is not None:
        restored = ckpt.restore_checkpoint(checkpoint_manager, state, data_iter=train_iter, config=config)
        if restored is not None:
            state, resumed_from = restored.state, restored.step
            log.info("resumed from checkpoint step %d (data iterator restored: %s)", restored.step,
                     restored.data_iter_restored)
    step = int(jax.device_get(state.step))
    start_step = step

    writer = mx.MetricWriter(workdir, tensorboard=tensorboard)
    bar = mx.ProgressBar(num_steps, initial=step, enabled=progress)
    pending: list[tuple[int, dict]] = []   # (step, device metrics) not yet fetched
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] | None = None
    eval_at = -1
    saved_step = checkpoint_manager.latest_step() if checkpoint_manager is not None else None
    status = "completed"
    timing = {"first_step_s": None, "steady_s": 0.0, "steady_steps": 0}
    t_interval, paused, interval_steps = time.perf_counter(), 0.0, 0

    def flush_and_check() -> None:
        """Fetches pending metrics, stops on the first non-finite step, logs the interval's means."""
        nonlocal pending, t_interval, paused, interval_steps, last_train
        if not pending:
            return
        fetched = jax.device_get([m for _, m in pending])
        steps = [s for s, _ in pending]
        pending = []
        for s, m in zip(steps, fetched):
            if not m.get("is_finite", 1.0) or not np.isfinite(m["loss"]):
                if checkpoint_manager is not None:
                    checkpoint_manager.wait_until_finished()
                raise NonFiniteLossError(s, float(m["loss"]), float(m.get("grad_norm", np.nan)),
                                         saved_step, str(getattr(checkpoint_manager, "directory", "-")))
        elapsed = time.perf_counter() - t_interval - paused
        n = interval_steps
        t_interval, paused, interval_steps = time.perf_counter(), 0.0, 0
        timing["steady_s"] += elapsed
        timing["steady_steps"] += n
        means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[-1] if k != "is_finite"}
        if "learning_rate" in fetched[-1]:
            means["learning_rate"] = float(fetched[-1]["learning_rate"])
        step_time = elapsed / n if n else None
        if step_time:
            means["step_time_s"] = step_time
            if tokens_per_step:
                means["tokens_per_s"] = tokens_per_step / step_time
            if flops_per_step:
                means["tflops_per_s_per_device"] = flops_per_step / step_time / num_devices / 1e12
                means["mfu"] = mx.mfu(flops_per_step, step_time, peak_flops_per_device, num_devices)
        if accounting is not None and timing["first_step_s"] is not None:
            means.update(accounting.update(steps[-1], steps[-1] - start_step - 1))
        last_train = means
        writer.write(steps[-1], means, "train")
        bar.show(means)

    def run_eval() -> None:
        nonlocal last_eval, eval_at, paused
        t = time.perf_counter()
        last_eval = evaluate(state.params)
        eval_at = step
        writer.write(step, last_eval, "eval")
        paused += time.perf_counter() - t

    def save(wait: bool = False) -> None:
        nonlocal saved_step, paused
        if checkpoint_manager is None:
            return
        t = time.perf_counter()
        metrics = last_eval if eval_at == step else None
        if ckpt.save_checkpoint(checkpoint_manager, step, state, data_iter=train_iter, config=config,
                                metrics=metrics):
            saved_step = step
        if wait:
            checkpoint_manager.wait_until_finished()
        paused += time.perf_counter() - t

    flag = _StopFlag()
    try:
        with flag.installed(handle_sigterm and jax.process_count() == 1):
            while step < num_steps:
                if _should_stop(flag, step):
                    status = "preempted"
                    break
                try:
                    batch = next(train_iter)
                except StopIteration:
                    status = "data_exhausted"
                    log.warning("training data ran out at step %d of %d", step, num_steps)
                    break
                state, metrics = train_step(state, to_global(batch, mesh, batch_sharding))
                step += 1
                pending.append((step, metrics))
                bar.update()
                if timing["first_step_s"] is None:  # compile + first step, kept out of throughput
                    jax.block_until_ready(metrics)
                    timing["first_step_s"] = time.perf_counter() - t_begin
                    if accounting is not None:  # from here: compilation is not accounted as training
                        accounting.start()
                    flush_and_check()
                    timing["steady_s"], timing["steady_steps"] = 0.0, 0
                else:
                    interval_steps += 1
                last = step == num_steps
                do_eval = evaluate is not None and (last or (eval_every and step % eval_every == 0))
                do_ckpt = last or (checkpoint_every and step % checkpoint_every == 0)
                if last or do_eval or do_ckpt or step % max(log_every, 1) == 0:
                    flush_and_check()
                if do_eval:
                    run_eval()
                if do_ckpt:
                    save()
            flush_and_check()
            if status != "completed" or step == start_step:
                # Preempted / out of data / nothing to do: make sure the current step is on disk.
                save(wait=True)
    finally:
        if checkpoint_manager is not None:
            checkpoint_manager.wait_until_finished()
        bar.close()
        writer.close()

    steady = timing["steady_s"] / timing["steady_steps"] if timing["steady_steps"] else None
    summary = {
        "status": status,
        "start_step": start_step,
        "final_step": step,
        "resumed_from": resumed_from,
        "steps_run": step - start_step,
        "tokens": (step - start_step) * tokens_per_step if tokens_per_step else None,
        "tokens_total": step * tokens_per_step if tokens_per_step else None,
        "flops": (step - start_step) * flops_per_step if flops_per_step else None,
        "wall_time_s": time.perf_counter() - t_begin,
        "first_step_s": timing["first_step_s"],
        "step_time_s": steady,
        "tokens_per_s": tokens_per_step / steady if tokens_per_step and steady else None,
        "tflops_per_s_per_device": flops_per_step / steady / num_devices / 1e12 if flops_per_step and steady else None,
        "mfu": (mx.mfu(flops_per_step, steady, peak_flops_per_device, num_devices)
                if flops_per_step and steady else None),
        "peak_flops_per_device": peak_flops_per_device,
        "num_devices": num_devices,
        "device_kind": jax.devices()[0].device_kind,
        "final_train_loss": last_train.get("loss"),
        "checkpoint_step": saved_step,
        "final_eval": last_eval,
        **(extra_summary or {}),
    }
    if accounting is not None and timing["first_step_s"] is not None:
        summary["accounting"] = accounting.summary(step - start_step - 1)  # the steps after compilation
    if is_main:
        mx.write_summary(workdir, summary, echo=progress)
    summary["state"] = state
    return summary
