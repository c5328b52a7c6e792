"""Counting XLA compilations: the check that new weights of a score model reuse a compiled sampler or likelihood."""

from __future__ import annotations

import contextlib
from typing import Iterator

import jax

__all__ = ["count_compiles"]


@contextlib.contextmanager
def count_compiles() -> Iterator[list[str]]:
    """A list that gets one entry per XLA backend compilation inside the ``with`` block::

        with count_compiles() as compiles:
            sj.sample(score, sde, key, shape)
        assert len(compiles) == 0   # e.g. after a first call with other weights of the same shapes
    """
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if "backend_compile" in event:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
