"""Pretraining objectives: per-row data transforms (numpy: mlm, nsp, clm) and losses (jax).

`train` sees an objective only as `loss_fn(params, batch, rng) -> (loss, metrics)` (jaxlm.objectives.pretraining).
"""
