"""Training: the train step (``step.py``), the loop, orbax checkpoints and restore, metrics (JSON lines +
TensorBoard) and data parallelism (``parallel.py``)."""

from sde_jax.train.step import (StepOutput, TrainState, example_keys, init_params, init_train_state, make_optimizer,
                                make_train_step)
from sde_jax.train.checkpoint import CheckpointError, Checkpointer, Restored, restore, restore_for_eval
from sde_jax.train.loop import NonFiniteLossError, TrainResult, WorkdirError, train
from sde_jax.train.metrics import MetricsWriter, read_metrics
