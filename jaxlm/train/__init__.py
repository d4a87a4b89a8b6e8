"""Training machinery between a `loss_fn(params, batch, rng) -> (loss, metrics)` and a data iterator."""
from jaxlm.train.checkpoint import make_checkpoint_manager, restore_checkpoint, restore_latest, save_checkpoint
from jaxlm.train.evaluation import BatchEvaluator, evaluate_batches
from jaxlm.train.loop import NonFiniteLossError, train
from jaxlm.train.metrics import MetricWriter, measure_matmul_peak_flops, mfu, peak_flops_per_device
from jaxlm.train.optimizer import OptimizerConfig, make_optimizer, make_schedule
from jaxlm.train.state import StateLayout, TrainState, abstract_train_state, create_train_state, with_memory
from jaxlm.train.step import (
    average_eval_metrics,
    jit_eval_step,
    jit_train_step,
    jit_train_steps,
    make_eval_step,
    make_train_step,
)

__all__ = [
    "BatchEvaluator", "MetricWriter", "NonFiniteLossError", "OptimizerConfig", "StateLayout", "TrainState",
    "abstract_train_state", "average_eval_metrics", "create_train_state", "evaluate_batches", "jit_eval_step",
    "jit_train_step", "jit_train_steps", "make_checkpoint_manager", "make_eval_step", "make_optimizer",
    "make_schedule", "make_train_step", "measure_matmul_peak_flops", "mfu", "peak_flops_per_device",
    "restore_checkpoint", "restore_latest", "save_checkpoint", "train", "with_memory",
]
