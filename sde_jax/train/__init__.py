"""Training: the loop, orbax checkpoints, metrics (JSON lines + TensorBoard) and data parallelism (``parallel.py``)."""

from sde_jax.losses import TrainState, init_train_state, make_optimizer, make_train_step
from sde_jax.train.checkpoint import CheckpointError, Checkpointer
from sde_jax.train.loop import (NonFiniteLossError, TrainResult, WorkdirError, restore_for_eval, sde_from_config,
                                train)
from sde_jax.train.metrics import MetricsWriter, read_metrics
