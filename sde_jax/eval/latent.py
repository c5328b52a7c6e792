"""A trained VAE as a tool for latent diffusion: its record (latent scale and weight fingerprint) beside its
checkpoints, the frozen VAE of a workdir (:func:`load_vae`, which refuses weights the scale was not computed
with), its compiled halves, the encoding of an image set, and the latent diffusion bound over a data set in padded
batches (:func:`evaluate_latent_bound`; the bound itself is :func:`sde_jax.latent.latent_bound`).

The network is a Flax ``Module.apply`` of ``sde_jax.nn.VAE`` (methods ``"encode"`` and ``"decode"``); its apply
function is the static part of each compiled program and the parameters are an argument, never constants.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from sde_jax.data.images import from_model_scale, to_model_scale
from sde_jax.eval.batching import map_padded, padded_batches
from sde_jax.latent import check_scale, discretized_logistic_logp, params_fingerprint, to_bins
from sde_jax.likelihood import check_positive_int

Array = jax.Array

__all__ = ["evaluate_latent_bound", "vae_encode", "vae_decode", "vae_nll", "encode_images", "RECORD_FILE",
           "write_vae_record", "read_vae_record", "FrozenVAE", "load_vae"]

RECORD_FILE = "latent.json"  # beside a VAE's checkpoints: its latent scale and the fingerprint of its weights


def evaluate_latent_bound(bound_fn: Callable[[Array, Array], tuple[dict, dict]], data: Any, key: Array, *,
                          batch_size: int = 100, progress: bool = True) -> dict[str, Any]:
    """:func:`sde_jax.latent.latent_bound` over a data set (N, *S) in padded batches of ``batch_size`` (one
    compilation; batch i uses fold_in(key, i)). ``bound_fn(x, key) -> (terms, info)`` is the bound with everything
    but x and key bound. Returns ``{name: per-example bits/dim (N,)}`` for each term, the ``mean`` and ``stderr``
    (sd / sqrt(N)) of each, ``nfe_mean`` and ``n_examples``."""
    batch_size = check_positive_int(batch_size, "batch_size")
    values: dict[str, list] = {}
    nfes = []
    batches = padded_batches(data, batch_size)
    if progress:
        from tqdm.auto import tqdm  # as sde_jax.eval.nll: only when a progress bar is asked for

        total = -(-len(data) // batch_size) if hasattr(data, "shape") else None
        batches = tqdm(batches, total=total, desc="latent bound", unit="batch")
    for i, (x, n) in enumerate(batches):
        terms, info = bound_fn(jnp.asarray(x, jnp.float32), jax.random.fold_in(key, i))
        for name, v in terms.items():
            values.setdefault(name, []).append(np.asarray(v)[:n])
        nfes.append(float(np.mean(np.asarray(info["nfe"]))))
    if not values:
        raise ValueError("the data set is empty: nothing to evaluate.")
    out: dict[str, Any] = {name: np.concatenate(v) for name, v in values.items()}
    n = len(out["total"])
    out["mean"] = {name: float(np.mean(out[name])) for name in values}
    out["stderr"] = {name: float(np.std(out[name], ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
                     for name in values}
    out.update(nfe_mean=float(np.mean(nfes)), n_examples=n)
    return out


# ------------------------------------------------------------------------------------------ the frozen VAE
def write_vae_record(workdir: str, params: Any, scale: float, latent_shape: tuple[int, ...], **extra: Any) -> dict:
    """Write ``<workdir>/latent.json``: the latent scale c, the latent shape and the fingerprint of the weights
    ``params`` it was computed with (and ``extra`` entries, e.g. reconstruction error), atomically. Returns the
    record."""
    record = {"scale": check_scale(scale), "fingerprint": params_fingerprint(params),
              "latent_shape": [int(s) for s in latent_shape], **extra}
    path = os.path.join(workdir, RECORD_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".tmp", path)
    return record


def read_vae_record(workdir: str) -> dict:
    """The record :func:`write_vae_record` left in ``workdir``; FileNotFoundError (saying how to make it) if there is
    none, ValueError if its scale is missing or invalid."""
    path = os.path.join(workdir, RECORD_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the VAE in {workdir} has no latent scale. Run experiments.vae "
                                f"there to the end (it writes {RECORD_FILE} after training; rerunning resumes).")
    with open(path) as f:
        record = json.load(f)
    if "fingerprint" not in record:
        raise ValueError(f"{path} has no 'fingerprint' of the VAE weights; rerun experiments.vae in {workdir}.")
    record["scale"] = check_scale(record.get("scale"))
    return record


# ------------------------------------------------------------------------------------------ compiled VAE halves
# ``apply_fn`` is a VAE's Flax ``Module.apply`` (hashable, unlike a module whose config holds lists).
@eqx.filter_jit
def vae_encode(apply_fn: Callable, params: Any, x: Array) -> tuple[Array, Array]:
    """q(z | x)'s mean and log-variance of images x (B, H, W, C) on [-1, 1]."""
    return apply_fn(params, x, method="encode")


@eqx.filter_jit
def vae_decode(apply_fn: Callable, params: Any, z: Array) -> tuple[Array, Array]:
    """p(x | z)'s logistic location (on [-1, 1]) and log-scale per pixel."""
    return apply_fn(params, z, method="decode")


@eqx.filter_jit
def vae_nll(apply_fn: Callable, params: Any, x: Array, z: Array, num_bins: int = 256) -> Array:
    """-log p(x | z) = -sum_d log DLogistic(k_d; mu_d(z), s_d(z)) in nats per example (B,), k = ``to_bins(x)``."""
    loc, log_scale = apply_fn(params, z, method="decode")
    logp = discretized_logistic_logp(to_bins(x, num_bins), loc, log_scale, num_bins)
    return -jnp.sum(logp.reshape(x.shape[0], -1), axis=-1)


@eqx.filter_jit
def _encode_stacked(apply_fn: Callable, params: Any, images: Array) -> Array:
    mean, logvar = apply_fn(params, to_model_scale(images), method="encode")
    return jnp.stack([mean, logvar], axis=1)


def encode_images(apply_fn: Callable, params: Any, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """q(z | x)'s mean and log-variance (N, *latent_shape) of uint8 images (N, H, W, C), read at their bin centres
    on [-1, 1], in padded batches of ``batch_size`` (one compilation), as host arrays. ``apply_fn`` is a VAE's
    ``Module.apply``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"encode_images needs uint8 NHWC images; got {images.dtype} of shape {images.shape}.")
    both = map_padded(lambda x: _encode_stacked(apply_fn, params, x), (images,), batch_size)
    return both[:, 0], both[:, 1]


@dataclasses.dataclass
class FrozenVAE:
    """A trained VAE (``sde_jax.nn.VAE``) read from its workdir ``directory``, with its latent scale and weight
    fingerprint.

    ``encode(x) -> (m, v)`` and ``decoder_nll(x, z)`` are the arguments ``sde_jax.latent.latent_bound`` takes (x
    images on [-1, 1]); ``images(z)`` decodes latents to uint8 images (the logistic's location, rounded to its
    bin). Each compiles once per shape, with the parameters as an argument."""

    model: Any
    params: Any
    config: Any
    scale: float
    fingerprint: str
    latent_shape: tuple[int, ...]
    step: int = 0
    directory: str = ""

    @property
    def num_bins(self) -> int:
        return int(self.config.loss.get("num_bins", 256))

    def encode(self, x: Array) -> tuple[Array, Array]:
        """q(z | x): mean and log-variance (B, *latent_shape) of images x (B, H, W, C) on [-1, 1]."""
        return vae_encode(self.model.apply, self.params, jnp.asarray(x, jnp.float32))

    def decode(self, z: Array) -> tuple[Array, Array]:
        """p(x | z): the logistic's location and log-scale per pixel."""
        return vae_decode(self.model.apply, self.params, jnp.asarray(z, jnp.float32))

    def decoder_nll(self, x: Array, z: Array) -> Array:
        """-log p(x | z) in nats per example (B,): the discretised logistic's mass of x's bins."""
        return vae_nll(self.model.apply, self.params, jnp.asarray(x, jnp.float32), jnp.asarray(z, jnp.float32),
                       self.num_bins)

    def encode_images(self, images: np.ndarray, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """:func:`encode_images` of uint8 images with these weights."""
        return encode_images(self.model.apply, self.params, images, batch_size)

    def images(self, z: Array) -> np.ndarray:
        """uint8 images (B, H, W, C) of latents z (unscaled: divide a diffusion sample u by the scale first)."""
        return from_model_scale(self.decode(z)[0], "minus_one_one", self.num_bins)


def load_vae(vae_dir: str) -> FrozenVAE:
    """The VAE trained by ``experiments.vae`` in ``vae_dir`` (EMA weights), with the scale of its record.

    FileNotFoundError if ``vae_dir`` holds no trained model or no record; ValueError if it is not a VAE, or if its
    weights are not the ones the record's scale was computed with (their fingerprints differ)."""
    from sde_jax.train.checkpoint import restore  # here: orbax is only needed when a checkpoint is read

    if not vae_dir:
        raise ValueError("no VAE given: pass the workdir of experiments.vae (--config.vae_dir=...).")
    r = restore(vae_dir)
    if r.config.model.get("name") != "vae":
        raise ValueError(f"{vae_dir} holds a {r.config.model.get('name')!r} model, not a VAE (experiments.vae).")
    record = read_vae_record(vae_dir)
    fingerprint = params_fingerprint(r.params)
    if fingerprint != record["fingerprint"]:
        raise ValueError(f"the VAE weights in {vae_dir} (step {r.step}, fingerprint {fingerprint[:12]}) are not the "
                         f"ones its latent scale was computed with (fingerprint {record['fingerprint'][:12]} in "
                         f"{RECORD_FILE}), e.g. it was trained further after writing it. Rerun experiments.vae there "
                         "to record the scale of the current weights.")
    from sde_jax.nn.autoencoder import latent_shape  # here: Flax is only needed once a VAE is read

    m = r.model
    shape = latent_shape(r.config.data.shape, m.ch_mult, m.latent_channels, m.patch_size)
    if list(shape) != list(record.get("latent_shape", shape)):
        raise ValueError(f"{vae_dir}/{RECORD_FILE} records latent shape {record['latent_shape']}, but the VAE's config "
                         f"gives {list(shape)}; rerun experiments.vae there.")
    return FrozenVAE(r.model, r.params, r.config, record["scale"], fingerprint, shape, r.step, vae_dir)
