"""Data: toy 2-D sets generated in code; image pipelines live beside them."""

from sde_jax.data.toy2d import ENTROPY, TOY_SETS, sample_toy
