"""Configs: the shared base config of every experiment, and the factories config -> SDE, network, loss, optimiser.

A config is an ``ml_collections.ConfigDict`` with the groups ``seed``, ``data``, ``sde``, ``model``, ``loss``,
``train``, ``sample`` and ``eval``. :func:`base_config` holds the defaults the experiments share (score_sde's VP /
VE SDE constants and optimiser, the unweighted continuous DSM loss, logging and checkpointing); each experiment
starts from it and overrides what differs.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import jax
import optax
from ml_collections import ConfigDict

from sde_jax.classifier import classifier_loss, noisy_classifier_loss
from sde_jax.losses import discrete_loss, dsm_loss, vae_loss, vdm_loss
from sde_jax.nn import build_model
from sde_jax.sde import SDE, LearnedVDMSDE, get_sde
from sde_jax.vdm import is_trainable


def base_config() -> ConfigDict:
    """The defaults every experiment shares; ``data``, ``model`` and ``eval`` are the experiment's own.

    sde: VP with beta 0.1 -> 20 (and VE's sigma 0.01 -> 50), N = 1000 levels; loss: continuous denoising score
    matching of the noise (``eps``), unweighted, summed over pixels; train: batch 128, Adam lr 2e-4 with 5000
    warm-up steps, gradient norm clipped to 1, EMA 0.999 (Song et al. 2021, score_sde's defaults).
    """
    c = ConfigDict()
    c.seed = 0
    c.data = ConfigDict()
    c.sde = ConfigDict({"name": "vp", "beta_min": 0.1, "beta_max": 20.0, "sigma_min": 0.01, "sigma_max": 50.0,
                        "N": 1000})
    c.model = ConfigDict()
    c.loss = ConfigDict({"kind": "dsm", "parameterization": "eps", "weighting": "score_matching",
                         "importance_sampling": False, "reduce_mean": False})
    c.train = ConfigDict({"steps": 10000, "batch_size": 128, "lr": 2e-4, "warmup": 5000, "grad_clip": 1.0,
                          "ema_decay": 0.999, "log_every": 50, "checkpoint_every": 1000, "max_to_keep": 3,
                          "skip_nonfinite": False})
    c.sample = ConfigDict({"seed": 1})
    c.eval = ConfigDict()
    return c


def sde_from_config(cfg: Any) -> SDE:
    """``config.sde`` -> SDE: ``name`` plus the keys that SDE's constructor takes (others, e.g. VE's sigmas for
    VP, are ignored). ValueError for a missing or unknown name.

    ``name="vdm_learned"``: VDM's learned schedule (``LearnedVDMSDE.init`` with ``gamma_min``, ``gamma_max``,
    ``width``; its random shape weights from ``jax.random.key(0)``), the *initial* schedule of a run: it trains
    inside the parameters with ``loss.kind="vdm"`` and the trained one comes back with them
    (``sde_jax.vdm.trained_score``)."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError("config.sde needs a name (e.g. 'vp', 'subvp', 've', 'vdm' or 'vdm_learned').")
    name = cfg.pop("name")
    if name == "vdm_learned":
        return LearnedVDMSDE.init(jax.random.key(0), float(cfg.get("gamma_min", -13.3)),
                                  float(cfg.get("gamma_max", 5.0)), int(cfg.get("width", 1024)))
    own = inspect.signature(type(get_sde(name))).parameters  # get_sde names the choices for an unknown name
    return get_sde(name, **{k: v for k, v in cfg.items() if k in own})


def model_from_config(cfg: Any, sde: SDE | None = None) -> Any:
    """``config.model`` -> Flax network: ``name`` plus its keyword arguments (``sde_jax.nn.build_model``); a network
    that reads the noise process (the MLP's ``x_damping``) gets ``sde``."""
    cfg = dict(cfg)
    if "name" not in cfg:
        raise ValueError("config.model needs a name (e.g. 'mlp', 'unet', 'ncsnpp' or 'classifier').")
    if cfg.get("x_damping"):
        if sde is None:
            raise ValueError("model.x_damping needs the noise process: model_from_config(config.model, sde).")
        cfg["sde"] = sde
    return build_model(cfg.pop("name"), **cfg)


def loss_from_config(cfg: Any, model_apply: Callable, sde: SDE, model_cfg: Any = None) -> Callable[..., tuple[Any, dict]]:
    """``config.loss``: kind "dsm" (continuous, with weighting / importance_sampling), "discrete" or "vdm" (VDM's
    ELBO in bits/dim, with ``num_bins``, ``antithetic`` and ``group``; the only loss that trains a learned
    schedule) for score models, "classifier" or "noisy_classifier" (p_t(y | x_t) for classifier guidance,
    ``sde_jax.classifier``), "vae" (latent diffusion's autoencoder, ``losses.vae_loss`` with ``kl_weight`` and
    ``num_bins``); with
    ``loss.p_uncond`` > 0 labels are dropped to the model's null label (``model.num_classes``), and a model with
    ``dropout`` > 0 trains with dropout on. ``loss.eps`` (optional) is the smallest training time (default
    ``sde.eps``; score_sde trains from 1e-5)."""
    model_cfg = dict(model_cfg or {})
    p_uncond = float(cfg.get("p_uncond", 0.0))
    null_label = model_cfg.get("num_classes")
    if p_uncond > 0 and null_label is None:
        raise ValueError(f"loss.p_uncond={p_uncond} needs a class-conditional model: set model.num_classes.")
    common = dict(p_uncond=p_uncond, null_label=null_label, dropout=float(model_cfg.get("dropout", 0.0)) > 0)
    kind = cfg.kind
    if is_trainable(sde) and kind != "vdm":
        raise ValueError(f"a learned schedule ({type(sde).__name__}) trains only with loss.kind='vdm'; got "
                         f"loss.kind={kind!r}. Use a fixed SDE (e.g. sde.name='vdm') for other losses.")
    if kind == "vdm":
        return vdm_loss(model_apply, sde, cfg.parameterization, num_bins=int(cfg.get("num_bins", 256)),
                        antithetic=bool(cfg.get("antithetic", True)), group=int(cfg.get("group", 8)), **common)
    if kind == "classifier":
        return classifier_loss(model_apply)
    if kind == "vae":
        return vae_loss(model_apply, kl_weight=float(cfg.kl_weight), num_bins=int(cfg.get("num_bins", 256)))
    if kind == "noisy_classifier":
        return noisy_classifier_loss(model_apply, sde, cfg.get("eps"))
    if kind == "dsm":
        return dsm_loss(model_apply, sde, cfg.parameterization, weighting=cfg.weighting,
                        importance_sampling=cfg.importance_sampling, reduce_mean=cfg.reduce_mean,
                        eps=cfg.get("eps"), **common)
    if kind == "discrete":
        return discrete_loss(model_apply, sde, cfg.parameterization, reduce_mean=cfg.reduce_mean, **common)
    raise ValueError(f"unknown loss.kind {kind!r}; choose 'dsm', 'discrete', 'vdm', 'classifier', "
                     "'noisy_classifier' or 'vae'.")


def optimizer_from_config(tc: Any) -> optax.GradientTransformation:
    """``config.train``: lr, warmup, grad_clip and (optional) decay_steps of ``sde_jax.train.step.make_optimizer``."""
    from sde_jax.train.step import make_optimizer  # here, not above: sde_jax.train imports this module

    return make_optimizer(tc.lr, warmup=tc.warmup, grad_clip=tc.grad_clip, decay_steps=int(tc.get("decay_steps", 0)))
