"""NIQE, the "completely blind" image quality of Mittal, Soundararajan and Bovik (2013).

No reference image: NIQE measures how far the statistics of an image's normalised luminance lie
from those of pristine natural photographs. Lower is better. The pristine model (a 36-dimensional
Gaussian) is the authors' own, shipped in ``mesrgan/metrics/niqe_params`` (cite the paper wherever NIQE
scores are reported; see the README there).

The pipeline is the authors' MATLAB ``niqe.m`` (``computequality.m``), step by step, as the field
computes it (PIRM 2018, BasicSR's ``calculate_niqe``):

1. One channel: ``convert="y"`` the BT.601 luma of MATLAB's ``rgb2ycbcr`` (16..235),
   ``convert="gray"`` MATLAB's ``rgb2gray``; rounded to integer levels, because MATLAB receives a
   uint8 image. ``crop_border`` pixels are removed from every edge.
2. The image is cut to whole 96x96 blocks (the remainder on the bottom and right is dropped).
3. At two scales, the full image and MATLAB's ``imresize(im, 0.5)`` (antialiased bicubic, float):
   MSCN coefficients ``(im - mu) / (sigma + 1)``, with ``mu`` and ``sigma`` the local mean and
   standard deviation under the 7x7 Gaussian window, replicate padding; exactly 0 where the 7x7
   neighbourhood is constant (a float sum leaves a residue of ~1e-14 there, whose sign would put
   the pixel on one side of the AGGD fits below; see ``_mscn``).
4. Per block (96x96 at the first scale, 48x48 at the second), 18 features: an asymmetric
   generalised Gaussian (AGGD) fitted to the coefficients (shape, mean of the two widths), and one
   fitted to the products of neighbours along 4 directions (shape, mean, left and right widths),
   neighbours taken with a circular shift inside the block as MATLAB's ``circshift`` does. The
   shape is found on MATLAB's grid 0.2:0.001:10 by moment matching.
5. A Gaussian fitted to the blocks' 36 features (``nanmean``; ``nancov`` over the blocks without a
   NaN feature, 1/(n-1) weighting); the score is the Mahalanobis-like distance
   ``sqrt((mu_p - mu_d)^T pinv((S_p + S_d) / 2) (mu_p - mu_d))``.

Everything is computed in float64 on the CPU, whatever the input's device.

How close it is: on the Set14 image baboon (``tests/data/niqe/baboon.png``, Y channel, border 0)
MATLAB R2021a's run of the authors' code gives 5.72957338; this gives 5.7295738841, 5.0e-7 away
(``tests/test_niqe.py`` holds it within 1e-5). BasicSR 1.4.2's ``calculate_niqe`` as published
gives 5.7295726 there (float32, 7.9e-7 from MATLAB) and differs from this by up to 0.003 on the
photographs and bicubic x4 down-up copies of ``tests/test_niqe.py``; BasicSR's code run in float64
with the same exact 0 on constant neighbourhoods agrees with this to ~1e-12 on all of them.
"""
from __future__ import annotations

import math
import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ._color import gray_of, integer_y_times_255000, y_of
# NIQE's second scale is MATLAB's imresize, which the data pipeline already reproduces; one copy
# of that algorithm in the package is better than two that could drift apart.
from ..data.resize import imresize

__all__ = ["niqe", "NIQE_CONVERSIONS", "NIQE_BLOCK", "niqe_features", "load_pristine_model"]

#: Accepted values of ``niqe(..., convert=...)``.
NIQE_CONVERSIONS = ("y", "gray")
#: Side of the square blocks of the first scale, as the authors fitted their pristine model.
NIQE_BLOCK = 96

_PARAMS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "niqe_params", "niqe_pris_params.npz")
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical, the two diagonals


@lru_cache(maxsize=1)
def load_pristine_model():
    """The authors' pristine model: ``(mu (36,), cov (36, 36), window (7, 7))``, float64 tensors."""
    if not os.path.isfile(_PARAMS_FILE):
        raise RuntimeError(f"the NIQE pristine-model file {_PARAMS_FILE} is missing; reinstall mesrgan")
    with np.load(_PARAMS_FILE) as params:
        mu = torch.from_numpy(params["mu_pris_param"].astype(np.float64).reshape(-1))
        cov = torch.from_numpy(params["cov_pris_param"].astype(np.float64))
        window = torch.from_numpy(params["gaussian_window"].astype(np.float64))
    return mu, cov, window


@lru_cache(maxsize=1)
def _shape_grid():
    """The AGGD shape grid and Gamma(1/a), Gamma(2/a), Gamma(3/a) on it, float64."""
    # MATLAB's 0.2:0.001:10, built from integers so that no step error accumulates
    grid = torch.arange(200, 10_001, dtype=torch.float64) / 1000
    gammas = [torch.tensor([math.gamma(k / a) for a in grid.tolist()], dtype=torch.float64) for k in (1, 2, 3)]
    return grid, gammas[0], gammas[1], gammas[2]


# --------------------------------------------------------------------------------------------
# features


def _aggd_fit(v):
    """AGGD fit per row of ``v`` ``(B, n)``: ``(shape, its grid index, left width, right width)``, each ``(B,)``.

    A row without negative (or positive) values gets NaN widths, as MATLAB's mean of an empty set.
    """
    grid, g1, g2, g3 = _shape_grid()
    neg, pos = v < 0, v > 0
    sq = v * v
    left_std = ((sq * neg).sum(1) / neg.sum(1)).sqrt()
    right_std = ((sq * pos).sum(1) / pos.sum(1)).sqrt()
    gamma_hat = left_std / right_std
    r_hat = v.abs().mean(1) ** 2 / sq.mean(1)
    r_hat_norm = r_hat * (gamma_hat ** 3 + 1) * (gamma_hat + 1) / (gamma_hat ** 2 + 1) ** 2
    r_gam = g2 ** 2 / (g1 * g3)
    # torch.argmin, like MATLAB's min and numpy's argmin, gives the first index for a NaN row
    index = ((r_gam[None, :] - r_hat_norm[:, None]) ** 2).argmin(1)
    shape = grid[index]
    width = (g1[index] / g3[index]).sqrt()
    return shape, index, left_std * width, right_std * width


def _block_features(blocks):
    """The 18 features of each block, ``(B, h, w) -> (B, 18)``."""
    _, g1, g2, _ = _shape_grid()
    shape, _, beta_l, beta_r = _aggd_fit(blocks.flatten(1))
    feats = [shape, (beta_l + beta_r) / 2]
    for shift in _SHIFTS:
        pair = blocks * torch.roll(blocks, shifts=shift, dims=(1, 2))
        shape, index, beta_l, beta_r = _aggd_fit(pair.flatten(1))
        mean = (beta_r - beta_l) * g2[index] / g1[index]
        feats += [shape, mean, beta_l, beta_r]
    return torch.stack(feats, 1)


def _mscn(img, window):
    """Mean-subtracted contrast-normalised coefficients of ``img`` ``(H, W)`` (MATLAB imfilter, replicate).

    A pixel whose whole 7x7 neighbourhood is one value has the coefficient exactly 0, as in exact
    arithmetic and (the baboon check shows it) in MATLAB's result. The float sum of the 49 weights times the value is off by
    ~1e-14 (the weights do not sum to exactly 1), and the sign of that residue would count the
    pixel on one side of the AGGD fits, which count pixels: 13 such pixels of the baboon test
    image moved NIQE by 3.9e-4 from MATLAB's value. The test is exact equality: the first scale
    has integer levels, and ``imresize(., 0.5)`` reproduced a constant region exactly wherever we
    checked (every 8-bit level, a patch inside the image and at its corners).
    """
    pad = window.shape[0] // 2
    padded = F.pad(img[None, None], (pad, pad, pad, pad), mode="replicate")
    kernel = window[None, None]
    mu = F.conv2d(padded, kernel)[0, 0]
    sigma = (F.conv2d(padded * padded, kernel)[0, 0] - mu * mu).abs().sqrt()
    mscn = (img - mu) / (sigma + 1)
    side = window.shape[0]
    spread = (F.max_pool2d(padded, side, 1) + F.max_pool2d(-padded, side, 1))[0, 0]
    return torch.where(spread == 0, torch.zeros_like(mscn), mscn)


def _blocks(img, side):
    """``(H, W)`` with H, W multiples of ``side`` -> ``(H/side * W/side, side, side)``, row-major."""
    h, w = img.shape
    return img.reshape(h // side, side, w // side, side).permute(0, 2, 1, 3).reshape(-1, side, side)


def niqe_features(gray):
    """The 36 NIQE features of every 96x96 block of one channel, ``(H, W)`` float64 0..255.

    ``H`` and ``W`` must be multiples of 96. Returns ``(blocks, 36)``: 18 features of the block at
    full scale, then 18 of the same region at half scale.
    """
    _, _, window = load_pristine_model()
    scales = []
    img = gray
    for side in (NIQE_BLOCK, NIQE_BLOCK // 2):
        scales.append(_block_features(_blocks(_mscn(img, window), side)))
        if side == NIQE_BLOCK:
            img = imresize(img[None, None], 0.5)[0, 0]
    return torch.cat(scales, 1)


def _quality(features):
    mu_p, cov_p, _ = load_pristine_model()
    mu_d = features.nanmean(0)
    complete = features[~features.isnan().any(1)]
    if complete.shape[0] < 2:
        # every block flat (e.g. a constant image): the covariance, and so NIQE, is undefined
        return math.nan
    cov_d = torch.cov(complete.T)
    d = mu_p - mu_d
    # pinv's default tolerance, max(m, n) * eps * largest singular value, is MATLAB's
    return float((d @ torch.linalg.pinv((cov_p + cov_d) / 2) @ d).sqrt())


# --------------------------------------------------------------------------------------------
# input checking


def _check_args(crop_border, convert):
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise TypeError(f"crop_border must be an int, got {type(crop_border).__name__}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if convert not in NIQE_CONVERSIONS:
        raise ValueError(f"convert must be one of {NIQE_CONVERSIONS}, got {convert!r}")


def _channels(img):
    """``img`` -> ``(N, C, H, W)`` float64 CPU tensor on the 0..255 scale (C = 1 or 3), and its kind."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise TypeError(f"img: numpy images must be uint8 (H, W, 3) RGB or (H, W) grey, got dtype {img.dtype}; "
                            "pass float data as a torch tensor (N, 3, H, W) in [0, 1]")
        if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)):
            raise ValueError(f"img: numpy images must have shape (H, W, 3) or (H, W), got {img.shape}")
        # Copied only when not C-contiguous or read-only (a view of a decoded image: torch warns on those).
        t = torch.from_numpy(np.require(img, requirements=["C", "W"]))
        t = t[None, None] if img.ndim == 2 else t.permute(2, 0, 1)[None]
        return t, "numpy"
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise TypeError(f"img: tensors must be floating point in [0, 1], got dtype {img.dtype}; "
                            "pass 8-bit images as uint8 numpy arrays (H, W, 3)")
        if img.ndim != 4 or img.shape[1] not in (1, 3):
            raise ValueError(f"img: tensors must have shape (N, 3, H, W) or (N, 1, H, W), got {tuple(img.shape)}")
        return img.detach().to("cpu", torch.float64).clamp(0, 1) * 255.0, "torch"
    raise TypeError(f"img must be a uint8 numpy array or a float torch tensor, got {type(img).__name__}")


def _one_channel(x, convert):
    """``(N, C, H, W)`` (uint8, or float64 0..255) -> ``(N, H, W)`` float64 integer levels.

    Rounded half away from zero, as MATLAB rounds (the levels are >= 0, so floor(x + 0.5)).
    """
    if x.shape[1] == 1:
        return torch.floor(x[:, 0].double() + 0.5)
    if x.dtype == torch.uint8 and convert == "y":
        # 255000 * Y is an integer for 8-bit RGB: round the exact value, so that exact ties such
        # as Y = 198.5 for (231, 209, 182) go up as MATLAB's do, wherever a float sum would land
        y_255000 = integer_y_times_255000(x.long())
        return torch.div(y_255000 + 127_500, 255_000, rounding_mode="floor")[:, 0].double()
    luma = y_of(x.double()) if convert == "y" else gray_of(x.double())
    return torch.floor(luma + 0.5)[:, 0]


def _check_size(h, w, crop_border):
    ch, cw = h - 2 * crop_border, w - 2 * crop_border
    if ch < NIQE_BLOCK or cw < NIQE_BLOCK or (ch // NIQE_BLOCK) * (cw // NIQE_BLOCK) < 2:
        got = f"{ch}x{cw} (HxW)" + (f" after cropping {crop_border} px from {h}x{w}" if crop_border else "")
        raise ValueError(
            f"img: NIQE needs at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks to fit its Gaussian "
            f"(at least {NIQE_BLOCK}x{2 * NIQE_BLOCK} or {2 * NIQE_BLOCK}x{NIQE_BLOCK} pixels), got {got}")


def niqe(img, *, crop_border=0, convert="y"):
    """NIQE of an image (Mittal et al., 2013), as the authors' MATLAB code computes it. Lower is better.

    Args:
        img: uint8 numpy ``(H, W, 3)`` RGB or ``(H, W)`` grey; or a float tensor ``(N, 3, H, W)``
            or ``(N, 1, H, W)`` in [0, 1] (scaled by 255; values outside [0, 1] are clamped), on
            any device.
        crop_border: pixels removed from every edge before measuring (SR papers: the scale).
        convert: ``"y"`` (default): the BT.601 luma of MATLAB's ``rgb2ycbcr``; ``"gray"``:
            MATLAB's ``rgb2gray``. Ignored for one-channel input. The channel is rounded to
            integer levels, as MATLAB sees a uint8 image.

    Returns:
        ``float`` for numpy input; a float64 tensor ``(N,)`` on the input's device for tensors.
        NaN when no two blocks have any texture (a constant image), where NIQE is undefined.

    Raises:
        ValueError: fewer than two 96x96 blocks after cropping; bad shape or ``convert``.
        TypeError: a numpy array that is not uint8, an integer tensor, another type.
    """
    _check_args(crop_border, convert)
    x, kind = _channels(img)
    h, w = x.shape[-2:]
    _check_size(h, w, crop_border)
    if crop_border:
        x = x[..., crop_border:h - crop_border, crop_border:w - crop_border]
    gray = _one_channel(x, convert)
    bh, bw = (gray.shape[1] // NIQE_BLOCK) * NIQE_BLOCK, (gray.shape[2] // NIQE_BLOCK) * NIQE_BLOCK
    values = [_quality(niqe_features(g[:bh, :bw].contiguous())) for g in gray]
    if kind == "numpy":
        return values[0]
    return torch.tensor(values, dtype=torch.float64, device=img.device)
