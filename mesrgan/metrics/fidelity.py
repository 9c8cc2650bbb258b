"""Super-resolution metrics with the field's conventions: PSNR, SSIM and RMSE (full reference),
and NIQE (no reference; :func:`niqe`, implemented in :mod:`mesrgan.metrics.niqe`, documented there).

For PSNR, SSIM and RMSE, two kinds of input are accepted, and both arguments of one call must be of the same kind:

* ``numpy.ndarray`` of dtype ``uint8`` and shape ``(H, W, 3)``, RGB. Computed in float64; each
  function returns a Python ``float``.
* ``torch.Tensor`` of a floating dtype and shape ``(N, 3, H, W)``, RGB in ``[0, 1]``, on any
  device. Computed in float64 (float32 on devices without float64, such as MPS); each function
  returns a float64 tensor of shape ``(N,)`` on the input's device, one value per image. Values
  are neither clamped nor rounded: quantise to 8 bits first (as a saved PNG would be) to reproduce
  numbers that were measured on image files.

Every metric works on the 0..255 scale: a float tensor is multiplied by 255, so the same picture
gives the same number as a uint8 array or as a tensor. Hence RMSE is in 8-bit grey levels and
``psnr == 20 * log10(255 / rmse)`` (PSNR with data range 1 on ``[0, 1]`` data is the same number).

Conventions (what SR papers report, e.g. BasicSR's ``calculate_psnr`` / ``calculate_ssim``):

* ``crop_border=c`` removes ``c`` pixels from every edge before measuring (SR papers use
  ``c = scale``).
* ``y_channel=True`` measures the luma of MATLAB's ``rgb2ycbcr`` (ITU-R BT.601, "studio" range
  16..235): ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` with R, G, B in 0..255, unrounded.
  Otherwise the three RGB channels are measured.
* PSNR and RMSE pool the squared error over all measured pixels and channels of one image.
* SSIM (Wang et al., 2004): 11x11 Gaussian window with sigma = 1.5 (normalised to sum 1), constants
  ``C1 = (0.01 * 255)**2`` and ``C2 = (0.03 * 255)**2``, statistics over the window with
  population (1/N) weighting, SSIM map over the *valid* region only (no padding), mean of the map;
  without ``y_channel`` the mean is taken per channel and the three means are averaged. No
  downsampling of large images (the 2009 ``ssim.m`` does that; SR papers' code does not).
* ``ssim(..., window="global")`` is the convention of the MESRGAN paper's Table II: one window
  covering the whole (cropped) image per channel, i.e. SSIM of the global means, variances
  (population, 1/N) and covariance, averaged over the channels. It runs far higher than the
  standard SSIM (0.9+ where the standard one gives 0.6-0.8), so never compare the two.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ._color import y_of as _y_of
from .niqe import niqe  # noqa: F401  (one of the metrics: mesrgan.metrics.fidelity.niqe)

__all__ = ["psnr", "ssim", "rmse", "niqe", "rgb_to_y", "SSIM_WINDOWS"]

#: Accepted values of ``ssim(..., window=...)``.
SSIM_WINDOWS = ("gaussian", "global")

_WIN_SIZE = 11
_WIN_SIGMA = 1.5
_K1, _K2 = 0.01, 0.03
_DATA_RANGE = 255.0
_C1 = (_K1 * _DATA_RANGE) ** 2
_C2 = (_K2 * _DATA_RANGE) ** 2


# --------------------------------------------------------------------------------------------
# input checking: one place that turns both input kinds into float64 on the 0..255 scale


def _check_crop(crop_border, h, w):
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)):
        raise TypeError(f"crop_border must be an int, got {type(crop_border).__name__}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if 2 * crop_border >= h or 2 * crop_border >= w:
        raise ValueError(
            f"crop_border={crop_border} removes the whole image: it must be less than half of "
            f"the image size, got an image of {h}x{w} (HxW)")
    return int(crop_border)


def _prepare(sr, hr, crop_border, y_channel):
    """Returns ``(x, y, kind)``: float tensors ``(N, C, H, W)`` on the 0..255 scale (C = 1 or 3).

    ``kind`` is "numpy" or "torch" and decides the type of the result.
    """
    if isinstance(sr, np.ndarray) and isinstance(hr, np.ndarray):
        for name, a in (("sr", sr), ("hr", hr)):
            if a.dtype != np.uint8:
                raise TypeError(
                    f"{name}: numpy images must be uint8 (H, W, 3) RGB, got dtype {a.dtype}; "
                    "pass float data as a torch tensor (N, 3, H, W) in [0, 1]")
            if a.ndim != 3 or a.shape[2] != 3:
                raise ValueError(f"{name}: numpy images must have shape (H, W, 3), got {a.shape}")
        if sr.shape != hr.shape:
            raise ValueError(f"sr and hr must have the same shape, got {sr.shape} and {hr.shape}")
        # float64 on the CPU: torch does the arithmetic, numpy semantics are kept by the caller
        x = torch.from_numpy(sr.astype(np.float64)).permute(2, 0, 1)[None]
        y = torch.from_numpy(hr.astype(np.float64)).permute(2, 0, 1)[None]
        kind = "numpy"
    elif isinstance(sr, torch.Tensor) and isinstance(hr, torch.Tensor):
        for name, t in (("sr", sr), ("hr", hr)):
            if not t.is_floating_point():
                raise TypeError(
                    f"{name}: tensors must be floating point in [0, 1], got dtype {t.dtype}; "
                    "pass 8-bit images as uint8 numpy arrays (H, W, 3)")
            if t.ndim != 4 or t.shape[1] != 3:
                raise ValueError(f"{name}: tensors must have shape (N, 3, H, W), got {tuple(t.shape)}")
        if sr.shape != hr.shape:
            raise ValueError(
                f"sr and hr must have the same shape, got {tuple(sr.shape)} and {tuple(hr.shape)}")
        if sr.device != hr.device:
            raise ValueError(f"sr and hr must be on the same device, got {sr.device} and {hr.device}")
        dtype = torch.float32 if sr.device.type == "mps" else torch.float64
        x = sr.detach().to(dtype) * _DATA_RANGE
        y = hr.detach().to(dtype) * _DATA_RANGE
        kind = "torch"
    else:
        raise TypeError(
            "sr and hr must both be uint8 numpy arrays (H, W, 3) or both float torch tensors "
            f"(N, 3, H, W), got {type(sr).__name__} and {type(hr).__name__}")
    if not isinstance(y_channel, bool):
        raise TypeError(f"y_channel must be a bool, got {type(y_channel).__name__}")
    c = _check_crop(crop_border, x.shape[-2], x.shape[-1])
    if c:
        x = x[..., c:-c, c:-c]
        y = y[..., c:-c, c:-c]
    if y_channel:
        x, y = _y_of(x), _y_of(y)
    return x, y, kind


def _result(values, kind):
    return float(values[0]) if kind == "numpy" else values


def rgb_to_y(img):
    """Luma of MATLAB's ``rgb2ycbcr`` (BT.601, studio range 16..235), unrounded.

    Args:
        img: uint8 numpy ``(H, W, 3)`` RGB, or a float tensor ``(N, 3, H, W)`` in [0, 1].

    Returns:
        For numpy, a float64 array ``(H, W)`` on the 0..255 scale (16..235);
        for a tensor, ``(N, 1, H, W)`` in [0, 1] scale (i.e. ``Y / 255``), in the input's dtype.
    """
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise TypeError(f"img: expected a uint8 (H, W, 3) array, got {img.dtype} {img.shape}")
        rgb = torch.from_numpy(img.astype(np.float64)).permute(2, 0, 1)[None]
        return _y_of(rgb)[0, 0].numpy()
    if isinstance(img, torch.Tensor):
        if not img.is_floating_point() or img.ndim != 4 or img.shape[1] != 3:
            raise TypeError(
                f"img: expected a float tensor (N, 3, H, W), got {img.dtype} {tuple(img.shape)}")
        return _y_of(img * _DATA_RANGE) / _DATA_RANGE
    raise TypeError(f"img must be a numpy array or a torch tensor, got {type(img).__name__}")


# --------------------------------------------------------------------------------------------
# the metrics


def _mse(x, y):
    return (x - y).pow(2).flatten(1).mean(1)


def rmse(sr, hr, *, crop_border=0, y_channel=False):
    """Root mean squared error on the 0..255 scale (8-bit grey levels).

    The squared error is averaged over every measured pixel and channel of each image (three RGB
    channels, or Y of BT.601 with ``y_channel=True``), after removing ``crop_border`` pixels from
    every edge; then the square root is taken.

    Args:
        sr, hr: uint8 numpy ``(H, W, 3)`` RGB, or float tensors ``(N, 3, H, W)`` in [0, 1].
        crop_border: pixels removed from every edge, ``0 <= crop_border < min(H, W) / 2``.
        y_channel: measure MATLAB rgb2ycbcr's Y (16..235) instead of RGB.

    Returns:
        ``float`` for numpy input; a float64 tensor ``(N,)`` on the input's device for tensors.
    """
    x, y, kind = _prepare(sr, hr, crop_border, y_channel)
    return _result(_mse(x, y).sqrt(), kind)


def psnr(sr, hr, *, crop_border=0, y_channel=False):
    """Peak signal-to-noise ratio in dB: ``10 * log10(255**2 / MSE)``; ``inf`` for identical images.

    MSE is pooled over every measured pixel and channel of each image as in :func:`rmse`, on the
    0..255 scale (equivalently: data range 1 on [0, 1] data). SR papers' setting is
    ``crop_border=scale, y_channel=True`` (Y of MATLAB's rgb2ycbcr, BT.601, 16..235).

    Args:
        sr, hr: uint8 numpy ``(H, W, 3)`` RGB, or float tensors ``(N, 3, H, W)`` in [0, 1].
        crop_border: pixels removed from every edge, ``0 <= crop_border < min(H, W) / 2``.
        y_channel: measure Y instead of RGB.

    Returns:
        ``float`` for numpy input; a float64 tensor ``(N,)`` (one PSNR per image) for tensors.
    """
    x, y, kind = _prepare(sr, hr, crop_border, y_channel)
    mse = _mse(x, y)
    # mse == 0 gives +inf, which is the right answer for identical images
    values = 10.0 * torch.log10(_DATA_RANGE ** 2 / mse)
    return _result(values, kind)


def _gaussian_window(dtype, device):
    coords = torch.arange(_WIN_SIZE, dtype=dtype, device=device) - (_WIN_SIZE - 1) / 2
    g = torch.exp(-(coords ** 2) / (2 * _WIN_SIGMA ** 2))
    g = g / g.sum()
    # outer product of the normalised 1-D kernel == MATLAB's normalised 2-D fspecial('gaussian')
    return g[:, None] * g[None, :]


def _ssim_gaussian(x, y):
    n, c, h, w = x.shape
    if h < _WIN_SIZE or w < _WIN_SIZE:
        raise ValueError(
            f"SSIM with an {_WIN_SIZE}x{_WIN_SIZE} window needs at least {_WIN_SIZE}x{_WIN_SIZE} "
            f"pixels after cropping, got {h}x{w} (HxW); use window='global' for tiny images")
    win = _gaussian_window(x.dtype, x.device).expand(c, 1, _WIN_SIZE, _WIN_SIZE)

    def filt(t):  # 'valid' correlation, one window per channel
        return F.conv2d(t, win, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / (
        (mu_x ** 2 + mu_y ** 2 + _C1) * (var_x + var_y + _C2))
    # mean per channel, then over channels: equal to the mean over all since every map has one size
    return ssim_map.flatten(2).mean(2).mean(1)


def _ssim_global(x, y):
    xf, yf = x.flatten(2), y.flatten(2)
    mu_x, mu_y = xf.mean(2), yf.mean(2)
    var_x = (xf - mu_x[..., None]).pow(2).mean(2)
    var_y = (yf - mu_y[..., None]).pow(2).mean(2)
    cov = ((xf - mu_x[..., None]) * (yf - mu_y[..., None])).mean(2)
    s = ((2 * mu_x * mu_y + _C1) * (2 * cov + _C2)) / ((mu_x ** 2 + mu_y ** 2 + _C1) * (var_x + var_y + _C2))
    return s.mean(1)


def ssim(sr, hr, *, crop_border=0, y_channel=False, window="gaussian"):
    """Structural similarity (Wang et al., 2004), on the 0..255 scale.

    ``window="gaussian"`` (default, the standard of SR papers): 11x11 Gaussian window, sigma 1.5,
    ``C1 = (0.01*255)**2``, ``C2 = (0.03*255)**2``, SSIM map over the valid region (no padding),
    averaged; per channel and then averaged over R, G, B unless ``y_channel=True``.

    ``window="global"`` (the MESRGAN paper's Table II, not comparable with the standard): one
    window covering the whole cropped image, per channel: SSIM of the global means, population
    variances and covariance, averaged over channels. Same constants.

    Args:
        sr, hr: uint8 numpy ``(H, W, 3)`` RGB, or float tensors ``(N, 3, H, W)`` in [0, 1].
        crop_border: pixels removed from every edge, ``0 <= crop_border < min(H, W) / 2``.
        y_channel: measure Y of MATLAB's rgb2ycbcr (BT.601, 16..235) instead of RGB.
        window: ``"gaussian"`` or ``"global"``.

    Returns:
        ``float`` for numpy input; a float64 tensor ``(N,)`` (one SSIM per image) for tensors.
    """
    if window not in SSIM_WINDOWS:
        raise ValueError(f"window must be one of {SSIM_WINDOWS}, got {window!r}")
    x, y, kind = _prepare(sr, hr, crop_border, y_channel)
    values = _ssim_gaussian(x, y) if window == "gaussian" else _ssim_global(x, y)
    return _result(values, kind)
