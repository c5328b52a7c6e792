"""CIFAR-10 network presets of Song et al. (ICLR 2021), mirroring score_sde's configs.

Each function returns the keyword arguments of ``build_model`` (the ``"name"`` key included), so
``build_model(**cifar10_preset("ncsnpp_continuous"))`` builds the network and any field can be overridden:
``cifar10_preset("ncsnpp_continuous", nf=16)``. Sources: ``configs/default_cifar10_configs.py`` (dropout 0.1,
image 32x32x3, sigma 0.01 -> 50, beta 0.1 -> 20) and, per preset, the files named in its docstring.

Reference fields not listed here are either the defaults of ``NCSNpp``/``DDPM`` (``resamp_with_conv=True``,
``fir_kernel=(1, 3, 3, 1)``, ``attention_type="ddpm"``, swish, GroupNorm) or do not concern the network:
``conv_size=3`` is set by the configs but not read by score_sde's models; ``scale_by_sigma`` (VE: divide the output
by sigma(t)) is ``PARAMETERIZATION[name] == "scaled_score"`` here; ``data.centered`` is the data pipeline's job.

Time: the networks take t in [0, 1]. VP presets embed 999 t with sinusoids (score_sde's continuous VP labels).
VE presets embed log sigma(t) = log sigma_min + t log(sigma_max / sigma_min) with Gaussian Fourier features, exactly
what score_sde feeds them (``ve_time_embedding``). Parameter counts (32x32x3) are in ``REFERENCE_PARAM_COUNTS``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

NAMES = ("ddpm", "ddpmpp_continuous", "ddpmpp_deep_continuous", "ncsnpp_continuous", "ncsnpp_deep_continuous")

# How sde_jax.score_fn must read each preset's output: VP networks predict the noise, VE networks sigma * score.
PARAMETERIZATION = {
    "ddpm": "eps",
    "ddpmpp_continuous": "eps",
    "ddpmpp_deep_continuous": "eps",
    "ncsnpp_continuous": "scaled_score",
    "ncsnpp_deep_continuous": "scaled_score",
}

# Parameter counts of score_sde's CIFAR-10 models (32x32x3 input), to the 0.01M they are quoted to.
REFERENCE_PARAM_COUNTS = {
    "ddpm": 35.22e6,
    "ddpmpp_continuous": 61.80e6,
    "ddpmpp_deep_continuous": 106.63e6,
    "ncsnpp_continuous": 62.76e6,
    "ncsnpp_deep_continuous": 107.59e6,
}

_COMMON = dict(nf=128, ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1, resamp_with_conv=True)


def ve_time_embedding(sigma_min: float = 0.01, sigma_max: float = 50.0) -> dict[str, float]:
    """``time_shift``, ``time_scale`` with time_shift + time_scale t = log sigma(t) of ``VESDE(sigma_min, sigma_max)``.

    sigma(t) = sigma_min (sigma_max / sigma_min)^t, so log sigma(t) = log sigma_min + t log(sigma_max / sigma_min).
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max; got sigma_min={sigma_min}, sigma_max={sigma_max}.")
    return dict(time_shift=math.log(sigma_min), time_scale=math.log(sigma_max / sigma_min))


def ddpm() -> dict[str, Any]:
    """DDPM (Ho et al. 2020) as in score_sde ``configs/vp/cifar10_ddpm.py`` (``vp/ddpm/cifar10.py``): 35.22M.

    Embeds 999 t: with ``sde_jax.losses.discrete_loss``'s t_i = i / (N - 1) and N = 1000 this is DDPM's step i.
    """
    return dict(name="ddpm", **_COMMON, num_res_blocks=2, time_scale=999.0)


def _ddpmpp(num_res_blocks: int) -> dict[str, Any]:
    return dict(
        name="ncsnpp", **_COMMON, num_res_blocks=num_res_blocks, fir=False, fir_kernel=(1, 3, 3, 1),
        skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="none",
        progressive_combine="sum", init_scale=0.0, embedding_type="positional", fourier_scale=16.0,
        time_scale=999.0, time_shift=0.0,
    )


def _ncsnpp(num_res_blocks: int, sigma_min: float, sigma_max: float) -> dict[str, Any]:
    return dict(
        name="ncsnpp", **_COMMON, num_res_blocks=num_res_blocks, fir=True, fir_kernel=(1, 3, 3, 1),
        skip_rescale=True, resblock_type="biggan", progressive="none", progressive_input="residual",
        progressive_combine="sum", init_scale=0.0, embedding_type="fourier", fourier_scale=16.0,
        **ve_time_embedding(sigma_min, sigma_max),
    )


def ddpmpp_continuous() -> dict[str, Any]:
    """DDPM++ cont. (VP), score_sde ``configs/vp/cifar10_ddpmpp_continuous.py``: 4 BigGAN blocks per level, 61.80M."""
    return _ddpmpp(num_res_blocks=4)


def ddpmpp_deep_continuous() -> dict[str, Any]:
    """DDPM++ cont. (deep, VP), ``configs/vp/cifar10_ddpmpp_deep_continuous.py``: 8 blocks per level, 106.63M."""
    return _ddpmpp(num_res_blocks=8)


def ncsnpp_continuous(sigma_min: float = 0.01, sigma_max: float = 50.0) -> dict[str, Any]:
    """NCSN++ cont. (VE), ``configs/ve/cifar10_ncsnpp_continuous.py``: FIR, residual input pyramid, 62.76M."""
    return _ncsnpp(4, sigma_min, sigma_max)


def ncsnpp_deep_continuous(sigma_min: float = 0.01, sigma_max: float = 50.0) -> dict[str, Any]:
    """NCSN++ cont. (deep, VE), ``configs/ve/cifar10_ncsnpp_deep_continuous.py``: 8 blocks per level, 107.59M."""
    return _ncsnpp(8, sigma_min, sigma_max)


_FACTORIES: dict[str, Callable[[], dict[str, Any]]] = {
    "ddpm": ddpm,
    "ddpmpp_continuous": ddpmpp_continuous,
    "ddpmpp_deep_continuous": ddpmpp_deep_continuous,
    "ncsnpp_continuous": ncsnpp_continuous,
    "ncsnpp_deep_continuous": ncsnpp_deep_continuous,
}


def cifar10_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """``build_model`` kwargs of a CIFAR-10 preset with ``overrides`` applied (e.g. ``nf=16``, ``num_classes=10``)."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown CIFAR-10 preset {name!r}; choose one of {NAMES}.")
    cfg = _FACTORIES[name]()
    unknown = set(overrides) - set(cfg) - {"num_classes", "dtype", "param_dtype"}
    if unknown:
        raise ValueError(f"preset {name!r} has no field(s) {sorted(unknown)}; its fields are {sorted(cfg)}.")
    return {**cfg, **overrides}


def cifar10_presets() -> dict[str, dict[str, Any]]:
    """All CIFAR-10 presets: {name: build_model kwargs}."""
    return {name: factory() for name, factory in _FACTORIES.items()}
