"""sde_jax: score-based generative models through SDEs, as pure JAX functions."""

from sde_jax.sde import SDE, LearnedVDMSDE, LinearSDE, SubVPSDE, VDMSDE, VESDE, VPSDE, get_sde, probability_flow_drift, reverse_drift
from sde_jax.score import ScoreModel, denoise, score_fn
from sde_jax.gmm import GaussianMixture, isotropic_mixture, random_mixture
from sde_jax.sampling import decode, encode, sample
from sde_jax.likelihood import bits_per_dim, dequantize, log_likelihood
from sde_jax.elbo import elbo
from sde_jax.vdm import pf_ode_bpd, trained_score, vdm_elbo_bpd
from sde_jax.latent import latent_bound
from sde_jax.eval import (evaluate_bpd, evaluate_nll, frechet_distance, gaussian_frechet_distance, kid,
                          sliced_wasserstein)
from sde_jax.guidance import classifier_free_guidance, classifier_guidance, colorize, inpaint
from sde_jax.smc import ClassTwist, InpaintTwist, smc_sample
from sde_jax.losses import drop_labels
from sde_jax.classifier import classifier_loss, noisy_classifier_loss

__version__ = "0.1.0"
