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

SCHEDULES = ("linear", "cosine", "inverse_sqrt", "rsqrt_decay", "constant")
OPTIMIZERS = ("adamw", "adafactor")
# Leaf names that are never decayed whatever their rank (a scanned layer stack turns a bias [d] into
# [layers, d], so rank alone is not enough).
NO_DECAY_NAMES = ("bias", "scale")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer + schedule settings. `learning_rate` is the peak value reached after warmup."""

    name: str = "adamw"
    learning_rate: float = 1e-4
    warmup_steps: int = 0
    total_steps: int = 10_000           # where linear/cosine decay reach end_learning_rate
    schedule: str = "linear"
    end_learning_rate: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0   # None or 0: no clipping
    # Adafactor only.
    adafactor_decay_rate: float = 0.8
    adafactor_clipping_threshold: float | None = 1.0
    adafactor_multiply_by_parameter_scale: bool = False
    adafactor_factored: bool = True

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer.name={self.name!r}; expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optimizer.schedule={self.schedule!r}; expected one of {SCHEDULES}")
        if self.warmup_steps < 0:
            raise ValueError(f"optimizer.warmup_steps={self.warmup_steps} must be >= 0")
        if self.schedule in ("linear", "cosine") and self.total_steps <= self.warmup_steps:
            raise ValueError(f"optimizer.total_steps={self.total_steps} must exceed "
                             f"optimizer.warmup_steps={self.warmup_steps} for a {self.schedule} decay")

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | Any) -> "OptimizerConfig":
        """From a dict or ml_collections ConfigDict; unknown keys raise naming the key."""
        d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown optimizer config keys {unknown}; known: {sorted(known)}")
        return cls(**d)


def make_schedule(cfg: OptimizerConfig) -> Callable[[Any], jax.Array]:
    """lr(step): linear warmup 0 -> peak over warmup_steps, then the chosen decay.

    step counts updates already applied (optax's count), so the first update uses lr(0) (0 when
    warming up, as in optax and HF). inverse_sqrt: peak * sqrt(warmup / step) after warmup, floored at
    end_learning_rate. rsqrt_decay (T5 / t5x): the same decay with no ramp, peak held constant for the first
    warmup steps, i.e. peak * sqrt(warmup / max(step, warmup)) = 1 / sqrt(max(step, 10^4)) for T5's 0.01, 10^4.
    """
    peak, end = float(cfg.learning_rate), float(cfg.end_learning_rate)
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


def make_optimizer(cfg: OptimizerConfig | Mapping[str, Any],
                   weight_decay_mask: Callable[[Any], Any] = decay_mask,
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], jax.Array]]:
    """Returns (optax transform, schedule). Clipping (global norm) comes first in the chain."""
    if not isinstance(cfg, OptimizerConfig):
        cfg = OptimizerConfig.from_dict(cfg)
    schedule = make_schedule(cfg)
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
    return opt, schedule
