"""Pretraining objectives, one module each (settings, data transform, batch spec, init inputs, loss, FLOPs),
registered by name (jaxlm.objectives.registry). `train` sees an objective only as
`loss_fn(params, batch, rng) -> (loss, metrics)`; see jaxlm.objectives.base for the interface."""
from jaxlm.objectives.base import LossConfig, Objective
from jaxlm.objectives.registry import OBJECTIVES, get_objective, objective_from_config, register_objective

__all__ = ["LossConfig", "OBJECTIVES", "Objective", "get_objective", "objective_from_config", "register_objective"]
