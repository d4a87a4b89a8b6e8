"""Peak FLOP/s, MFU, metric writers (JSONL, TensorBoard, tqdm) and the end-of-run report.

Only process 0 writes files or draws the progress bar; other processes get no-op writers. The workdir may
be local or remote (gs://, s3://, ...): files go through etils.epath, like Orbax's checkpoints.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxlm.paths import is_remote

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LOSS_CURVE_FILE = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"

# ---------------------------------------------------------------------------------------------
# Peak FLOP/s and MFU (the FLOPs themselves are counted by the model families: jaxlm.models.family)


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


class _ObjectFile:
    """A file on an object store that grows by appends. Objects cannot be appended to, so the whole text is
    kept in memory and the object rewritten by flush(). It starts from the object's current text, so a
    resumed run extends the file as a local append would."""

    def __init__(self, path: epath.Path):
        self.path = path
        self._parts = [path.read_text()] if path.exists() else []
        self._dirty = False

    def write(self, text: str) -> None:
        self._parts.append(text)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            self.path.write_text("".join(self._parts))
            self._dirty = False

    def close(self) -> None:
        self.flush()


class _MirroredDir:
    """A local temp dir whose files sync() copies to a remote dir, for tensorboardX: it writes local paths
    (and gs:// only through google-cloud-storage, outside epath). Event files only grow, so one whose
    size has not changed since its last copy is skipped."""

    def __init__(self, remote: epath.Path):
        self.local = tempfile.mkdtemp(prefix="jaxlm-tensorboard-")
        self.remote = remote
        self._copied: dict[str, int] = {}

    def sync(self) -> None:
        for entry in os.scandir(self.local):
            size = entry.stat().st_size
            if self._copied.get(entry.name) != size:
                with open(entry.path, "rb") as f:
                    (self.remote / entry.name).write_bytes(f.read())
                self._copied[entry.name] = size

    def close(self) -> None:
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)


class MetricWriter:
    """Appends {"step", "split", "time", ...} lines to workdir/metrics.jsonl and mirrors them as
    TensorBoard scalars `<split>/<name>` in workdir/tensorboard. No-op on processes other than 0.

    A local metrics.jsonl is appended to and flushed on every write. On a remote workdir, metrics.jsonl
    is rewritten whole (`_ObjectFile`) and the event files, written to a local temp dir, are copied up
    (`_MirroredDir`): at most every `sync_every_s` seconds from write(), and always on flush() and close()
    (events still in tensorboardX's queue at a flush go up with the next sync; close() drains it).
    """

    def __init__(self, workdir: str, *, tensorboard: bool = True, enabled: bool | None = None,
                 sync_every_s: float = 60.0):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.remote = is_remote(workdir)
        self.sync_every_s = sync_every_s
        self._synced_at = time.monotonic()
        self._file = None
        self._tb = None
        self._tb_mirror = None
        if not self.enabled:
            return
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        self._file = _ObjectFile(epath.Path(self.path)) if self.remote else open(self.path, "a", encoding="utf-8")
        if tensorboard:
            from tensorboardX import SummaryWriter  # slow import: only when used
            tb_dir = os.path.join(workdir, TENSORBOARD_DIR)
            if self.remote:
                self._tb_mirror = _MirroredDir(epath.Path(tb_dir))
                tb_dir = self._tb_mirror.local
            self._tb = SummaryWriter(tb_dir)

    def write(self, step: int, metrics: Mapping[str, Any], split: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items() if v is not None}
        record = {"step": int(step), "split": split, "time": time.time(), **values}
        self._file.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))
        if not self.remote:
            self._file.flush()
        elif time.monotonic() - self._synced_at >= self.sync_every_s:
            try:
                self.flush()
            except Exception as e:  # every sync rewrites all: a failed one loses nothing, so keep training
                self._synced_at = time.monotonic()
                log.warning("could not copy metrics to %s (retrying in %.0f s): %s", os.path.dirname(self.path),
                            self.sync_every_s, e)

    def flush(self) -> None:
        if self._file:
            self._file.flush()
        if self._tb:
            self._tb.flush()
        if self._tb_mirror:
            self._tb_mirror.sync()
        self._synced_at = time.monotonic()

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        if self._tb:
            self._tb.close()
            self._tb = None
        if self._tb_mirror:
            self._tb_mirror.close()
            self._tb_mirror = None


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
    """Every record of workdir/metrics.jsonl (local or remote), in the order written; [] if none."""
    path = epath.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
    with epath.Path(path).open("wb") as f:  # matplotlib opens local paths only: hand it a file
        fig.savefig(f, format=os.path.splitext(path)[1][1:] or None)
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
    directory = epath.Path(workdir)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=repr))
    if echo:
        print("\n" + format_summary(summary), flush=True)
    if plot:
        try:
            plot_loss_curves(workdir)
        except Exception as e:  # a plot must never take a finished run down with it
            log.warning("could not draw the loss curve: %s", e)
