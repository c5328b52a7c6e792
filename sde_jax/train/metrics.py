"""Metrics: one JSON object per logged step in ``<workdir>/metrics.jsonl``, and the same scalars as TensorBoard
event files in ``<workdir>/tensorboard/`` (written without TensorFlow, see ``tensorboard.py``)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from sde_jax.train.tensorboard import EventWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _clean(v: Any) -> Any:
    """A JSON-safe value: ints stay ints, floats stay floats, NaN/Inf become the strings "nan"/"inf"."""
    if isinstance(v, bool):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, int):
        return int(v)
    return f if math.isfinite(f) else str(f)


def truncate_metrics(path: str, step: int) -> None:
    """Keep the records of ``path`` with step <= ``step`` (and drop a line cut by a crash); atomic, so a kill
    during the rewrite loses nothing."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= step:
                kept.append(json.dumps(rec) + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("".join(kept))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsWriter:
    """Appends ``{"step": int, ...}`` lines and TensorBoard scalars. On resume, lines past the restored step are
    dropped first (and TensorBoard is told to drop its events past it), so a step is never logged twice with
    different values. Only the lead process writes (``enabled``)."""

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.enabled = enabled
        self._events = None
        if enabled:
            truncate_metrics(self.path, resume_step)
            if tensorboard:
                self._events = EventWriter(os.path.join(workdir, TENSORBOARD_DIR), start_step=resume_step)

    def write(self, step: int, metrics: dict) -> None:
        """Log ``metrics`` (name -> number) at ``step``."""
        if not self.enabled:
            return
        rec = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._events is not None:
            self._events.scalars(step, {k: float(v) for k, v in metrics.items()})

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``<workdir>/metrics.jsonl``."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]
