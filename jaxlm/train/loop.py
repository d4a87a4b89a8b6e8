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
- `prefetch` > 0: a background thread reads the next host batches, stacks them and puts them on the devices
  while the current step computes; it records the iterator's position after every call, so a checkpoint holds
  the position of the batches the loop has used (not of those read ahead), and the iterator is moved back there
  when the loop returns.
- `steps_per_call` = k > 1 (with `train_steps`, `jit_train_steps`): k steps per compiled call, a scan over k
  stacked batches. A call never crosses a log / eval / checkpoint step or the end: it starts at a multiple of k
  and runs k steps when the next such boundary is at least k steps away, else one step (`train_step`). Which
  program runs a step depends on the step number and the config alone, so a resumed run repeats the
  uninterrupted one's calls exactly; preemption is checked between calls.
"""
from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding

from jaxlm import sharding as shd
from jaxlm.train import checkpoint as ckpt
from jaxlm.train import metrics as mx
from jaxlm.train.accounting import Accounting
from jaxlm.train.evaluation import Evaluator, to_global
from jaxlm.train.step import stacked_sharding

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


def steps_per_call_plan(steps_per_call: int, num_steps: int, intervals: tuple[int, ...]) -> Callable[[int], int]:
    """step -> how many steps the call starting there runs: `steps_per_call` when step is a multiple of it and
    the next boundary (a multiple of an interval, or num_steps) is that far away or further; else 1."""
    k = steps_per_call
    intervals = tuple(i for i in intervals if i > 0)

    def plan(step: int) -> int:
        if k <= 1 or step % k:
            return 1
        boundary = min([num_steps] + [(step // i + 1) * i for i in intervals])
        return k if step + k <= boundary else 1

    return plan


class _Call(NamedTuple):
    steps: int               # 1: one batch for train_step; k > 1: k stacked batches for train_steps
    batch: Mapping[str, Any]  # global arrays
    position: Any            # train_iter.get_state() after this call's batches (None: not tracked)


_END = object()


class _Position:
    """What a checkpoint saves as the data position: the iterator state after the last batch the loop used."""

    def __init__(self, state: Any):
        self.state = state

    def get_state(self):
        return self.state


class _Feed:
    """The loop's calls in order: host batches read from `train_iter` (stacked by `plan`) and put on the devices,
    in the loop's thread (`ahead` = 0) or by a background thread that stays up to `ahead` calls ahead. With the
    thread the iterator's position after each call is recorded (`train_iter.get_state()`, read in the thread)."""

    def __init__(self, train_iter: Iterator, start_step: int, num_steps: int, plan: Callable[[int], int],
                 to_device: Callable, stack_to_device: Callable, ahead: int):
        self._it, self._step, self._num_steps, self._plan = train_iter, start_step, num_steps, plan
        self._to_device, self._stack_to_device = to_device, stack_to_device
        self.threaded = ahead > 0
        self.position: Any = None   # after the calls taken so far (threaded)
        if self.threaded:
            self.position = train_iter.get_state()
            self._queue: queue.Queue = queue.Queue(maxsize=ahead)
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="jaxlm-prefetch", daemon=True)
            self._thread.start()
        else:
            self._calls = self._produce()

    def _produce(self) -> Iterator[_Call]:
        track = self.threaded
        while self._step < self._num_steps:
            n = self._plan(self._step)
            batches, positions = [], []
            for _ in range(n):
                try:
                    batches.append(next(self._it))
                except StopIteration:
                    break
                positions.append(self._it.get_state() if track else None)
            if len(batches) < n:  # the data ran out inside a stacked call: its batches go one by one
                for batch, position in zip(batches, positions):
                    yield _Call(1, self._to_device(batch), position)
                return
            self._step += n
            yield _Call(n, self._to_device(batches[0]) if n == 1 else self._stack_to_device(batches), positions[-1])

    def _run(self) -> None:
        try:
            for call in self._produce():
                if not self._put(call):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001  (re-raised in the loop's thread)
            self._put(e)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> _Call | None:
        """The next call, None when the data ran out (or num_steps is reached)."""
        if not self.threaded:
            return next(self._calls, None)
        item = self._queue.get()
        if item is _END:
            self._queue.put(_END)  # idempotent end
            return None
        if isinstance(item, BaseException):
            raise item
        self.position = item.position
        return item

    def close(self) -> None:
        """Stops the thread; the iterator goes back to the position of the last call taken (set_state)."""
        if not self.threaded:
            return
        self._stop.set()
        self._thread.join(timeout=60)
        if self._thread.is_alive():
            log.warning("the prefetch thread is still reading a batch; the data iterator's position is not reset")
        elif self.position is not None and hasattr(self._it, "set_state"):
            self._it.set_state(self.position)


def train(*, state: Any, train_step: Callable, train_iter: Iterator[Mapping[str, Any]], num_steps: int,
          workdir: str, mesh: Mesh, batch_sharding: NamedSharding | None = None,
          checkpoint_manager: ocp.CheckpointManager | None = None, checkpoint_every: int = 1000,
          evaluate: Evaluator | None = None, eval_every: int = 0,
          log_every: int = 50, flops_per_step: float | None = None, tokens_per_step: int | None = None,
          peak_flops_per_device: float | None = None, config: Any = None,
          progress: bool = True, tensorboard: bool = True, handle_sigterm: bool = True,
          extra_summary: Mapping[str, Any] | None = None, accounting: Accounting | None = None,
          train_steps: Callable | None = None, steps_per_call: int = 1, prefetch: int = 0,
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
    train_steps / steps_per_call: `jit_train_steps(...)` result and k: k steps per call where the log / eval /
      checkpoint steps allow (module docstring); intervals that k divides keep every call at k steps.
    prefetch: calls a background thread prepares ahead (host batches read, stacked, put on the devices); 0
      reads each batch in the loop's thread when it is due. Needs `get_state`/`set_state` on train_iter (else 0).

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
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call={steps_per_call} must be >= 1")
    if steps_per_call > 1 and train_steps is None:
        raise ValueError("steps_per_call > 1 needs train_steps (jaxlm.train.jit_train_steps)")
    plan = steps_per_call_plan(steps_per_call, num_steps,
                               (max(log_every, 1), eval_every if evaluate is not None else 0, checkpoint_every))
    stacked = stacked_sharding(batch_sharding)

    def stack_to_device(batches):
        if all(isinstance(v, jax.Array) for v in batches[0].values()):
            return {k: jax.numpy.stack([b[k] for b in batches]) for k in batches[0]}
        host = {k: np.stack([np.asarray(b[k]) for b in batches]) for k in batches[0]}
        return {k: jax.make_array_from_process_local_data(stacked, v) for k, v in host.items()}

    can_rewind = hasattr(train_iter, "get_state") and hasattr(train_iter, "set_state")

    writer = mx.MetricWriter(workdir, tensorboard=tensorboard)
    bar = mx.ProgressBar(num_steps, initial=step, enabled=progress)
    pending: list[tuple[int, int, dict]] = []   # (last step, steps, device metrics) of calls not yet fetched
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] | None = None
    eval_at = -1
    saved_step = checkpoint_manager.latest_step() if checkpoint_manager is not None else None
    status = "completed"
    timing = {"first_step_s": None, "steady_s": 0.0, "steady_steps": 0, "first_call_steps": 1}
    t_interval, paused, interval_steps = time.perf_counter(), 0.0, 0

    def flush_and_check() -> None:
        """Fetches pending metrics, stops on the first non-finite step, logs the interval's means."""
        nonlocal pending, t_interval, paused, interval_steps, last_train
        if not pending:
            return
        fetched, steps = [], []
        for (last, n, _), m in zip(pending, jax.device_get([m for _, _, m in pending])):
            if n == 1:
                fetched.append(m)
            else:  # a stacked call: one entry per step
                fetched.extend({k: v[i] for k, v in m.items()} for i in range(n))
            steps.extend(range(last - n + 1, last + 1))
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
            means.update(accounting.update(steps[-1], steps[-1] - start_step - timing["first_call_steps"]))
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
        position = _Position(feed.position) if feed is not None and feed.threaded else train_iter
        if ckpt.save_checkpoint(checkpoint_manager, step, state, data_iter=position, config=config,
                                metrics=metrics):
            saved_step = step
        if wait:
            checkpoint_manager.wait_until_finished()
        paused += time.perf_counter() - t

    flag = _StopFlag()
    feed = None
    try:
        with flag.installed(handle_sigterm and jax.process_count() == 1):
            feed = _Feed(train_iter, step, num_steps, plan, lambda b: to_global(b, mesh, batch_sharding),
                         stack_to_device, prefetch if can_rewind else 0)
            while step < num_steps:
                if _should_stop(flag, step):
                    status = "preempted"
                    break
                call = feed.next()
                if call is None:
                    status = "data_exhausted"
                    log.warning("training data ran out at step %d of %d", step, num_steps)
                    break
                n = call.steps
                state, metrics = (train_step if n == 1 else train_steps)(state, call.batch)
                step += n
                pending.append((step, n, metrics))
                bar.update(n)
                if timing["first_step_s"] is None:  # compile + first call, kept out of throughput
                    jax.block_until_ready(metrics)
                    timing["first_step_s"] = time.perf_counter() - t_begin
                    timing["first_call_steps"] = n
                    if accounting is not None:  # from here: compilation is not accounted as training
                        accounting.start()
                    flush_and_check()
                    timing["steady_s"], timing["steady_steps"] = 0.0, 0
                else:
                    interval_steps += n
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
        if feed is not None:
            feed.close()
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
        summary["accounting"] = accounting.summary(step - start_step - timing["first_call_steps"])  # after compiling
    if is_main:
        mx.write_summary(workdir, summary, echo=progress)
    summary["state"] = state
    return summary
