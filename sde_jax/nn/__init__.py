"""Flax score networks. Every network is ``module.apply(params, x, t) -> array shaped like x``.

Image networks (``DDPM``, ``NCSNpp``) also take optional class labels: ``apply(params, x, t, y=None)``.
``Classifier`` is the exception: ``apply(params, x, t=None) -> logits (B, C)`` (for classifier guidance and the
classifier-feature FD / KID); so is ``VAE`` (latent diffusion's autoencoder: ``method="encode"`` / ``"decode"``).
CIFAR-10 configurations of Song et al. (ICLR 2021): ``build_model(**cifar10_preset("ncsnpp_continuous"))``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from sde_jax.nn.autoencoder import VAE
from sde_jax.nn.classifier import Classifier
from sde_jax.nn.ddpm import DDPM
from sde_jax.nn.embeddings import GaussianFourierProjection, TimeEmbedding, sinusoidal_embedding
from sde_jax.nn.layers import (
    AttnBlock,
    ConditioningEmbedding,
    Downsample,
    ResnetBlockBigGANpp,
    ResnetBlockDDPMpp,
    Upsample,
)
from sde_jax.nn.mlp import ScoreMLP
from sde_jax.nn.ncsnpp import NCSNpp
from sde_jax.nn.presets import PARAMETERIZATION, cifar10_preset, cifar10_presets, ve_time_embedding
from sde_jax.nn.unet import UNet

_MODELS = {"mlp": ScoreMLP, "unet": UNet, "ddpm": DDPM, "ncsnpp": NCSNpp, "classifier": Classifier,
           "vae": VAE}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """A network from its config name (``"mlp"``, ``"unet"``, ``"ddpm"``, ``"ncsnpp"``,
    ``"classifier"``, ``"vae"``) and keyword arguments."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(_MODELS)}.")
    return _MODELS[name](**kwargs)
