"""The pretraining objectives jaxlm knows, keyed by `config.objective`: one line per objective."""
from __future__ import annotations

from jaxlm.objectives.base import Objective
from jaxlm.objectives.clm import CausalLM
from jaxlm.objectives.mlm import MaskedLM
from jaxlm.objectives.nsp import MaskedLMWithNSP
from jaxlm.objectives.plm import PermutationLM
from jaxlm.objectives.span_corruption import SpanCorruption

OBJECTIVES: dict[str, type[Objective]] = {
    o.name: o for o in (MaskedLM, MaskedLMWithNSP, CausalLM, SpanCorruption, PermutationLM)}


def register_objective(objective: type[Objective]) -> type[Objective]:
    """Adds an objective class under its `name` (usable as a decorator); a name taken by another is an error."""
    if not objective.name:
        raise ValueError(f"{objective.__name__} has no `name`")
    if OBJECTIVES.get(objective.name, objective) is not objective:
        raise ValueError(f"objective name {objective.name!r} is taken by {OBJECTIVES[objective.name].__name__}")
    OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> type[Objective]:
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective={name!r} is not an objective; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name]


def objective_from_config(config) -> Objective:
    """The objective of a pretraining config, with its settings from config.data and config.loss."""
    return get_objective(config.objective).from_config(config.data, config.loss)
