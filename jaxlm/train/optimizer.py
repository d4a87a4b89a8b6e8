"""Optimizers and learning-rate schedules from one small config.

The config is a frozen dataclass (`OptimizerConfig`); ml_collections ConfigDicts stay at the edges and
are converted once with `OptimizerConfig.from_dict` (unknown keys are an error naming the key).
`make_optimizer` returns `(optax transform, schedule fn)` so the step can log the learning rate.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from jaxlm.train.backbone import layerwise_lr_scales, scale_updates

SCHEDULES = ("linear", "cosine", "inverse_sqrt", "rsqrt_decay", "constant")
OPTIMIZERS = ("adamw", "adafactor")
# Leaf names that are never decayed whatever their rank (a scanned layer stack turns a bias [d] into
# [layers, d], so rank alone is not enough).
NO_DECAY_NAMES = ("bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer + schedule settings, for pretraining and fine-tuning alike (config.optimizer has exactly these
    keys, from this class). `learning_rate` is the peak value reached after warmup."""

    name: str = "adamw"
    learning_rate: float = 1e-4
    warmup_steps: int = 0               # -1: warmup_ratio x total steps (fine-tuning recipes state a ratio)
    warmup_ratio: float = 0.0
    total_steps: int = -1               # where linear/cosine decay reach end_learning_rate; -1: the run's steps
    schedule: str = "linear"
    end_learning_rate: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0   # None or 0: no clipping
    # < 1: layer l of L trains with lr x decay^(L - l), embeddings with decay^(L + 1), head and pooler with lr
    # (ELECTRA, Clark et al. 2020, e.g. 0.8 for base models).
    layerwise_lr_decay: float = 1.0
    # Adafactor only.
    adafactor_decay_rate: float = 0.8
    adafactor_clipping_threshold: float | None = 1.0
    adafactor_multiply_by_parameter_scale: bool = False
    adafactor_factored: bool = True

    def __post_init__(self):
        checks = [
            (self.name in OPTIMIZERS, f"optimizer.name={self.name!r}; expected one of {OPTIMIZERS}"),
            (self.schedule in SCHEDULES, f"optimizer.schedule={self.schedule!r}; expected one of {SCHEDULES}"),
            (math.isfinite(self.learning_rate) and self.learning_rate >= 0,
             f"optimizer.learning_rate={self.learning_rate} must be a finite number >= 0"),
            (self.end_learning_rate >= 0, f"optimizer.end_learning_rate={self.end_learning_rate} must be >= 0"),
            (self.warmup_steps >= -1, f"optimizer.warmup_steps={self.warmup_steps} must be >= 0 (or -1: "
                                      "warmup_ratio x total steps)"),
            (0 <= self.warmup_ratio <= 1, f"optimizer.warmup_ratio={self.warmup_ratio} must be in [0, 1]"),
            (self.total_steps >= -1 and self.total_steps != 0,
             f"optimizer.total_steps={self.total_steps} must be > 0 (or -1: the run's steps)"),
            (0 < self.layerwise_lr_decay <= 1,
             f"optimizer.layerwise_lr_decay={self.layerwise_lr_decay} must be in (0, 1]"),
            (self.weight_decay >= 0, f"optimizer.weight_decay={self.weight_decay} must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | Any) -> "OptimizerConfig":
        """From a dict or ml_collections ConfigDict; unknown keys raise naming the key."""
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown optimizer config keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def resolved(self, num_steps: int | None = None) -> "OptimizerConfig":
        """total_steps and warmup_steps as numbers: -1 total = the run's `num_steps`, -1 warmup = warmup_ratio x
        total. A run of 0 or 1 steps (evaluation only) gets a decay that still ends after its warmup."""
        total = self.total_steps
        needs_total = self.schedule in ("linear", "cosine") or self.warmup_steps < 0
        if total < 0 and num_steps is None and not needs_total:
            return self  # a constant or 1/sqrt schedule never reads total_steps
        if total < 0:
            if num_steps is None or num_steps < 1:
                raise ValueError(f"optimizer.total_steps=-1 takes the run's number of steps, which is {num_steps}; "
                                 "set the run's steps (config.train.num_steps / num_epochs) to a positive number")
            total = num_steps
        warmup = self.warmup_steps if self.warmup_steps >= 0 else int(round(self.warmup_ratio * total))
        if self.schedule in ("linear", "cosine") and total <= warmup:
            if self.total_steps < 0:
                total = warmup + 1  # warmup_ratio 1, or a 1-step run
            else:
                raise ValueError(f"optimizer.total_steps={total} must exceed optimizer.warmup_steps={warmup} for a "
                                 f"{self.schedule} decay")
        return dataclasses.replace(self, total_steps=total, warmup_steps=warmup)


def make_schedule(cfg: OptimizerConfig, peak: Any = None) -> Callable[[Any], jax.Array]:
    """lr(step): linear warmup 0 -> peak over warmup_steps, then the chosen decay.

    peak: the peak as an array instead of cfg.learning_rate (a per-trial value inside a vmapped step, so that one
    compiled program trains every learning rate of a sweep: jaxlm.train.trials).

    step counts updates already applied (optax's count), so the first update uses lr(0) (0 when
    warming up, as in optax and HF). inverse_sqrt: peak * sqrt(warmup / step) after warmup, floored at
    end_learning_rate. rsqrt_decay (T5 / t5x): the same decay with no ramp, peak held constant for the first
    warmup steps, i.e. peak * sqrt(warmup / max(step, warmup)) = 1 / sqrt(max(step, 10^4)) for T5's 0.01, 10^4.
    """
    peak, end = float(cfg.learning_rate) if peak is None else peak, float(cfg.end_learning_rate)
    warmup, total, kind = int(cfg.warmup_steps), int(cfg.total_steps), cfg.schedule

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak * step / max(warmup, 1)
        frac = jnp.clip((step - warmup) / max(total - warmup, 1), 0.0, 1.0)
        if kind == "linear":
            decayed = peak + (end - peak) * frac
        elif kind == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        elif kind in ("inverse_sqrt", "rsqrt_decay"):
            decayed = jnp.maximum(end, peak * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1))))
        else:
            decayed = jnp.full_like(step, peak)
        return decayed if kind == "rsqrt_decay" else jnp.where(step < warmup, warm, decayed)

    return schedule


def decay_mask(params: Any) -> Any:
    """True where weight decay applies: matrices (ndim >= 2, embeddings included, as BERT does),
    never biases or norm scales (by rank or by name, so scanned stacks are handled)."""
    def one(path, p):
        name = getattr(path[-1], "key", getattr(path[-1], "name", None)) if path else None
        return p.ndim >= 2 and name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(one, params)


def make_optimizer(cfg: OptimizerConfig | Mapping[str, Any], *, num_steps: int | None = None, params: Any = None,
                   weight_decay_mask: Callable[[Any], Any] = decay_mask, learning_rate: Any = None,
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
    """Returns (optax transform, schedule). Clipping (global norm) comes first in the chain; layer-wise lr decay
    (layerwise_lr_decay < 1) scales the updates last and needs the (abstract) params to know the layers.
    num_steps: the run's steps, for total_steps / warmup_steps of -1. learning_rate: the schedule's peak as a
    (traced) array instead of cfg.learning_rate (see make_schedule); the optimizer state has the same structure."""
    if not isinstance(cfg, OptimizerConfig):
        cfg = OptimizerConfig.from_dict(cfg)
    cfg = cfg.resolved(num_steps)
    schedule = make_schedule(cfg, learning_rate)
    if cfg.name == "adamw":
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay, mask=weight_decay_mask)
    else:
        opt = optax.adafactor(
            schedule, decay_rate=cfg.adafactor_decay_rate,
            clipping_threshold=cfg.adafactor_clipping_threshold,
            multiply_by_parameter_scale=cfg.adafactor_multiply_by_parameter_scale,
            factored=cfg.adafactor_factored,
            weight_decay_rate=cfg.weight_decay or None, weight_decay_mask=weight_decay_mask)
    if cfg.max_grad_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), opt)
    if cfg.layerwise_lr_decay < 1:
        if params is None:
            raise ValueError("optimizer.layerwise_lr_decay < 1 needs the params (make_optimizer(..., params=))")
        opt = optax.chain(opt, scale_updates(layerwise_lr_scales(params, cfg.layerwise_lr_decay)))
    return opt, schedule
