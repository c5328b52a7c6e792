"""Metrics: one JSON object per logged step in ``<workdir>/metrics.jsonl``, and the same scalars as TensorBoard
event files in ``<workdir>/tensorboard/`` (tensorboardX's ``SummaryWriter``, no TensorFlow needed)."""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Any

from tensorboardX import SummaryWriter

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_WRITERS = itertools.count()  # event file names carry pid and counter: writers opened in one second never clash


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
    different values. Only the lead process writes (``enabled``).

    TensorBoard: each writer opens a new event file; after a resume it starts with a ``SessionLog START`` at the
    restored step (tensorboardX's ``purge_step``), which makes TensorBoard hide the older files' events from
    that step on."""

    def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True, tensorboard: bool = True):
        self.path = os.path.join(workdir, METRICS_FILE)
        self.enabled = enabled
        self._events = None
        if enabled:
            truncate_metrics(self.path, resume_step)
            if tensorboard:
                self._events = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                             purge_step=resume_step if resume_step > 0 else None,
                                             filename_suffix=f".{os.getpid()}.{next(_WRITERS)}")

    def write(self, step: int, metrics: dict) -> None:
        """Log ``metrics`` (name -> number) at ``step``."""
        if not self.enabled:
            return
        rec = {"step": int(step), **{k: _clean(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._events is not None:
            for k, v in metrics.items():
                self._events.add_scalar(k, float(v), int(step))
            self._events.flush()  # a killed run keeps every logged step

    def close(self) -> None:
        if self._events is not None:
            self._events.close()


def read_metrics(workdir: str) -> list[dict]:
    """All records of ``<workdir>/metrics.jsonl``."""
    with open(os.path.join(workdir, METRICS_FILE)) as f:
        return [json.loads(line) for line in f if line.strip()]


def logged_train_seconds(metrics: list[dict]) -> float | None:
    """Wall seconds of a run's training from its metrics log: sum over logging intervals of (steps in the interval) /
    steps_per_sec, which covers every session of a resumed run (and not its evaluations); None if no row has a
    finite positive rate."""
    total, last, seen = 0.0, 0, False
    for m in metrics:
        try:
            sps = float(m.get("steps_per_sec"))
        except (TypeError, ValueError):
            continue
        if not (math.isfinite(sps) and sps > 0):
            continue
        total += (m["step"] - last) / sps
        last, seen = m["step"], True
    return total if seen else None
