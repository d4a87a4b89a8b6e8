"""FLOPs, MFU, metric writers (JSONL, TensorBoard, tqdm) and the end-of-run report.

Only process 0 writes files or draws the progress bar; other processes get no-op writers.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"

# ---------------------------------------------------------------------------------------------
# FLOPs and MFU


def transformer_train_flops_per_token(num_non_embedding_params: int, num_layers: int, d_model: int,
                                      seq_len: int) -> float:
    """Training FLOPs per token: 6N (forward + backward matmuls) + 12 * layers * d_model * seq
    (attention scores and values, forward + backward; DESIGN.md section 6, Kaplan et al. / PaLM)."""
    return 6.0 * num_non_embedding_params + 12.0 * num_layers * d_model * seq_len


# Dense bf16 peak FLOP/s per device. Matched against jax's device_kind, most specific first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("tpu v5 lite", 197e12), ("tpu v5e", 197e12),
    ("tpu v6 lite", 918e12), ("tpu v6e", 918e12),
    ("tpu v5p", 459e12), ("tpu v5", 459e12),
    ("tpu v4", 275e12),
    ("h200", 989e12), ("h100", 989e12),
    ("a100", 312e12),
)


def peak_flops_per_device(device_kind: str, cpu_peak: float | None = None) -> float | None:
    """Peak FLOP/s of one device of this kind; CPUs have no table entry: `cpu_peak` (e.g. from
    `measure_matmul_peak_flops`) is returned for them. None (MFU not reported) if unknown."""
    kind = device_kind.lower()
    if kind == "cpu" or kind.startswith("cpu"):
        return cpu_peak
    for key, peak in PEAK_FLOPS:
        if key in kind:
            return peak
    log.warning("no peak FLOP/s known for device kind %r: MFU will not be reported", device_kind)
    return None


_MEASURED: dict[tuple, float] = {}


def measure_matmul_peak_flops(n: int = 1024, dtype: Any = jnp.float32, repeats: int = 5,
                              device: jax.Device | None = None) -> float:
    """Best-of-`repeats` FLOP/s of a jitted n x n x n matmul on one device (cached per process).

    On a CPU host with several (simulated) devices they share the cores: divide by their number for
    a per-device peak (`default_peak_flops_per_device` does).
    """
    device = device or jax.local_devices()[0]
    key = (n, jnp.dtype(dtype).name, device.id)
    if key not in _MEASURED:
        a = jax.device_put(jnp.ones((n, n), dtype), device)
        matmul = jax.jit(lambda x: x @ x)
        matmul(a).block_until_ready()
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            matmul(a).block_until_ready()
            best = min(best, time.perf_counter() - t)
        _MEASURED[key] = 2.0 * n ** 3 / best
    return _MEASURED[key]


def default_peak_flops_per_device(cpu_peak: float | None = None) -> float | None:
    """Peak for this process's devices: the table on accelerators; on CPU `cpu_peak` or a measured
    host matmul peak, split across the host's CPU devices."""
    dev = jax.local_devices()[0]
    if dev.platform == "cpu":
        host_peak = cpu_peak if cpu_peak is not None else measure_matmul_peak_flops()
        return host_peak / jax.local_device_count()
    return peak_flops_per_device(dev.device_kind)


def mfu(flops_per_step: float, step_time_s: float, peak_flops: float | None, num_devices: int) -> float | None:
    """Model FLOPs utilisation: flops per step / step time / (peak per device x devices)."""
    if not peak_flops or step_time_s <= 0:
        return None
    return flops_per_step / step_time_s / (peak_flops * num_devices)


# ---------------------------------------------------------------------------------------------
# Writers


def _scalar(v: Any) -> float | int:
    v = np.asarray(v)
    return v.item() if v.size == 1 else float(v.mean())


class MetricWriter:
    """Appends {"step", "split", "time", ...} lines to workdir/metrics.jsonl and mirrors them as
    TensorBoard scalars `<split>/<name>` in workdir/tensorboard. No-op on processes other than 0."""

    def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self._file = None
        self._tb = None
        if not self.enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # slow import: only when used
            self._tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR))

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items() if v is not None}
        record = {"step": int(step), "split": split, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def flush(self) -> None:
        if self._file:
            self._file.flush()
        if self._tb:
            self._tb.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb:
            self._tb.close()
            self._tb = None


class ProgressBar:
    """tqdm bar over steps with loss / lr / tok/s; silent off process 0 or when disabled."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self._bar = None
        if enabled and jax.process_index() == 0:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def show(self, metrics: Mapping[str, Any]) -> None:
        if self._bar is None:
            return
        post = {}
        for key, label, fmt in (("loss", "loss", "{:.4f}"), ("learning_rate", "lr", "{:.2e}"),
                                ("tokens_per_s", "tok/s", "{:,.0f}"), ("mfu", "mfu", "{:.1%}")):
            if metrics.get(key) is not None:
                post[label] = fmt.format(metrics[key])
        self._bar.set_postfix(post, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------------------------
# End-of-run report


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def loss_history(records: Iterable[Mapping[str, Any]], split: str) -> tuple[list[int], list[float]]:
    """(steps, losses) of one split; a step logged twice (a resumed run redoing steps) keeps the
    latest value."""
    by_step = {}
    for r in records:
        if r.get("split") == split and "loss" in r:
            by_step[int(r["step"])] = float(r["loss"])
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_loss_curves(workdir: str, path: str | None = None) -> str | None:
    """Train and eval loss vs step from metrics.jsonl into workdir/loss_curve.png (Agg, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(workdir)
    train, evals = loss_history(records, "train"), loss_history(records, "eval")
    if not train[0] and not evals[0]:
        return None
    fig = Figure(figsize=(7, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train[0]:
        ax.plot(*train, label="train", linewidth=1.2)
    if evals[0]:
        ax.plot(*evals, "o-", label="eval", linewidth=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(os.path.basename(os.path.abspath(workdir)))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = path or os.path.join(workdir, LOSS_CURVE_FILE)
    fig.savefig(path)
    return path


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:,.4f}".rstrip("0").rstrip(".")
        return f"{v:.3e}"
    return str(v)


def format_summary(summary: Mapping[str, Any]) -> str:
    """A two-column text table; nested dicts (final eval) become `eval/<name>` rows."""
    rows = []
    for k, v in summary.items():
        if isinstance(v, Mapping):
            rows += [(f"{k}/{kk}", _fmt(vv)) for kk, vv in v.items()]
        elif v is not None:
            rows.append((k, _fmt(v)))
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def write_summary(workdir: str, summary: Mapping[str, Any], *, plot: bool = True, echo: bool = True) -> None:
    """summary.json + printed table + loss curve (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, default=repr)
    if echo:
        print("\n" + format_summary(summary), flush=True)
    if plot:
        try:
            plot_loss_curves(workdir)
        except Exception as e:  # a plot must never take a finished run down with it
            log.warning("could not draw the loss curve: %s", e)
