"""Evaluation in one place: data-set NLL / bits/dim in padded batches (``nll.py``), sample distances (sliced
Wasserstein, Fréchet distance, KID: ``distances.py``), a trained classifier's labels and features
(``classifier.py``), a trained VAE for latent diffusion and the latent bound over a data set (``latent.py``), the
padded fixed-shape batching they share (``batching.py``), and a compile counter (``compiles.py``)."""

from sde_jax.eval.batching import map_padded, pad_rows, padded_batches
from sde_jax.eval.compiles import count_compiles
from sde_jax.eval.classifier import (accuracy, clean_time, embed, feature_distances, features, load_classifier,
                                     predict)
from sde_jax.eval.distances import frechet_distance, gaussian_frechet_distance, kid, sliced_wasserstein
from sde_jax.eval.latent import FrozenVAE, evaluate_latent_bound, load_vae
from sde_jax.eval.nll import EvalResult, evaluate_bpd, evaluate_nll

__all__ = [
    "EvalResult", "evaluate_nll", "evaluate_bpd",
    "frechet_distance", "gaussian_frechet_distance", "kid", "sliced_wasserstein",
    "features", "load_classifier", "clean_time", "embed", "predict", "accuracy", "feature_distances",
    "pad_rows", "padded_batches", "map_padded", "count_compiles", "FrozenVAE", "load_vae", "evaluate_latent_bound",
]
