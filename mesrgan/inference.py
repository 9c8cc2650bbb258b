"""Running a generator on images of any size: overlapping tiles, grey / alpha handling.

Used by ``python -m mesrgan.upscale`` and ``python -m mesrgan.evaluate``; importable on its own.
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["upscale_tensor", "upscale_pixels", "tile_edges"]

# BT.601 luma weights, as Pillow's convert("L") uses them: turn the RGB output of a grey input
# back into grey
_LUMA = (0.299, 0.587, 0.114)


class UsageError(Exception):
    """A problem with the command line or the checkpoint: nothing is processed."""


def load_checkpoint(weights: str, model: str | None, device, scale: int | None = None):
    """``mesrgan.models.load_generator`` for the command-line programs, its errors turned into
    one-line :class:`UsageError` messages. Returns ``(generator, info, scale)``; ``scale`` is the
    checkpoint's (or the given one, or 4), and a given one that differs is an error."""
    import os

    from .models import CheckpointError, load_generator

    if not os.path.exists(weights):
        raise UsageError(f"--weights: checkpoint {weights!r} does not exist")
    if os.path.isdir(weights):
        raise UsageError(f"--weights: {weights!r} is a folder; pass a checkpoint file (e.g. runs/NAME/best.pt)")
    try:
        generator, info = load_generator(weights, model=model, device=device)
    except CheckpointError as e:  # already names the file and what it holds
        raise UsageError(f"--weights: {e}") from e
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        raise UsageError(f"--weights: cannot load {weights!r}: {e}") from e
    got = info["config"].get("scale")
    if scale is not None and got is not None and got != scale:
        raise UsageError(f"--scale {scale}: the checkpoint {weights!r} holds a x{got} {info['model']} generator")
    return generator, info, got or scale or 4


def tile_edges(length: int, tile: int) -> list[int]:
    """Split ``length`` pixels into ``ceil(length / tile)`` nearly equal spans (none above ``tile``).

    Equal spans avoid a sliver of a last tile, which would cost a full model call for a few pixels.
    """
    n = max(1, math.ceil(length / tile))
    return [round(i * length / n) for i in range(n + 1)]


def _aligned(edges, m):
    """Tile edges moved to multiples of ``m`` (the first and last kept), empty spans dropped."""
    if m == 1:
        return edges
    inner = [round(e / m) * m for e in edges[1:-1]]
    out = [edges[0]]
    for e in inner + [edges[-1]]:
        if e > out[-1]:
            out.append(e)
    return out


def _model_device_dtype(model, fallback):
    p = next(iter(model.parameters()), None)
    return (p.device, p.dtype) if p is not None else (fallback.device, fallback.dtype)


def _check_tiling(tile, tile_pad):
    for name, v in (("tile", tile), ("tile_pad", tile_pad)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")


def _tiles(model, lr, tile, tile_pad, progress):
    """Run ``model`` over ``lr`` tile by tile; yields ``(y0, y1, x0, x1, scale, sr)`` per tile.

    ``[y0:y1, x0:x1]`` is the tile's place in LR pixels and ``sr`` its upscaled pixels (the
    context cropped off), ``(N, C', (y1 - y0) * scale, (x1 - x0) * scale)`` on the model's device
    and in its dtype. The caller places each tile where it wants it, so no full-size float
    result needs to exist.
    """
    device, dtype = _model_device_dtype(model, lr)
    h, w = lr.shape[-2:]
    # A model that pixel-unshuffles its input (Real-ESRGAN x2 / x1) must see every tile in the
    # phase it sees the whole image in: tiles and their context then start on multiples of this.
    m = int(getattr(model, "input_multiple", 1) or 1)
    ys, xs = (_aligned(tile_edges(n, tile or max(h, w)), m) for n in (h, w))
    total = (len(ys) - 1) * (len(xs) - 1)
    scale = None
    done = 0
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            iy0, iy1 = max(y0 - tile_pad, 0) // m * m, min(-(-(y1 + tile_pad) // m) * m, h)
            ix0, ix1 = max(x0 - tile_pad, 0) // m * m, min(-(-(x1 + tile_pad) // m) * m, w)
            sr = model(lr[..., iy0:iy1, ix0:ix1].to(device=device, dtype=dtype))
            th, tw = iy1 - iy0, ix1 - ix0
            if scale is None:
                scale = sr.shape[-1] // tw
                if scale < 1 or sr.shape[-1] != scale * tw or sr.shape[-2] != scale * th:
                    raise RuntimeError(
                        f"the model maps a {th}x{tw} input to {tuple(sr.shape[-2:])}: not an integer "
                        "upscaling, so it cannot be tiled")
            elif sr.shape[-2:] != (scale * th, scale * tw):
                raise RuntimeError(f"the model's output size is not {scale}x its input "
                                   f"({th}x{tw} -> {tuple(sr.shape[-2:])})")
            oy, ox = (y0 - iy0) * scale, (x0 - ix0) * scale
            yield y0, y1, x0, x1, scale, sr[..., oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale]
            del sr
            done += 1
            if progress is not None:
                progress(done, total)


def upscale_tensor(model, lr: torch.Tensor, *, tile: int = 0, tile_pad: int = 16, progress=None) -> torch.Tensor:
    """Run ``model`` on ``lr``, in overlapping tiles when ``tile > 0``.

    Each tile of ``tile x tile`` LR pixels is cut out with ``tile_pad`` extra pixels of context on
    every side (clipped at the image border), upscaled, and only its central part is kept. Pixels
    of the result therefore see at least ``tile_pad`` LR pixels of real context in each direction,
    and the image border is padded exactly as without tiling: when ``tile_pad`` reaches the
    receptive-field radius of the model the result equals the untiled one up to float rounding.
    Activations never exceed ``(tile + 2 * tile_pad)**2`` LR pixels (times the scale factor
    squared after upsampling), whatever the image size.

    Args:
        model: an ``nn.Module`` mapping ``(N, C, h, w)`` to ``(N, C', s*h, s*w)``; it runs on the
            device and in the dtype of its parameters, under ``torch.no_grad``.
        lr: ``(N, C, h, w)`` float tensor. Tiles are copied to the model's device and dtype one at a
            time, so ``lr`` and the result may stay on the CPU while the model is on a GPU.
        tile: tile size in LR pixels; ``0`` runs the whole image at once.
        tile_pad: context pixels around each tile (>= 0).
        progress: optional ``callable(done, total)`` called after each tile.

    Returns:
        ``(N, C', s*h, s*w)`` on ``lr``'s device, in ``lr``'s dtype. The values are not clamped.
    """
    if not isinstance(lr, torch.Tensor):
        raise TypeError(f"lr must be a torch.Tensor, got {type(lr).__name__}")
    if lr.ndim != 4 or not lr.is_floating_point():
        raise ValueError(f"lr must be a float tensor (N, C, H, W), got {lr.dtype} {tuple(lr.shape)}")
    _check_tiling(tile, tile_pad)
    h, w = lr.shape[-2:]
    out = None
    # no_grad rather than inference_mode: the result must stay an ordinary tensor that callers
    # may modify in place
    with torch.no_grad():
        for y0, y1, x0, x1, s, sr in _tiles(model, lr, tile, tile_pad, progress):
            if out is None:
                out = torch.empty((*lr.shape[:-3], sr.shape[-3], h * s, w * s), dtype=lr.dtype, device=lr.device)
            out[..., y0 * s:y1 * s, x0 * s:x1 * s] = sr.to(device=lr.device, dtype=lr.dtype)
    return out


_SAMPLE_DTYPES = {None: np.float32, 8: np.uint8, 16: np.uint16}


def _as_float(pixels):
    """float32 tensor in [0, 1] of float pixels or of uint8 / uint16 samples (divided by 255 /
    65535 in float32, exactly as :func:`mesrgan.imageio.read_image` does)."""
    if pixels.dtype in (np.uint8, np.uint16):
        # one float32 copy (the samples themselves may be a read-only view of the decoder's buffer)
        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).div_(
            255.0 if pixels.dtype == np.uint8 else 65535.0)
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def upscale_pixels(model, pixels: np.ndarray, *, tile: int = 0, tile_pad: int = 16, progress=None,
                   bit_depth: int | None = None) -> np.ndarray:
    """Upscale one image given as float ``(H, W, C)`` in [0, 1], or as its uint8 / uint16 samples
    (:func:`mesrgan.imageio.read_image_samples`, which saves holding a float copy), C = 1, 2, 3 or 4.

    The model sees RGB: a grey image is repeated into three channels and its output turned back
    into grey with BT.601 luma weights; an alpha channel is upscaled separately with MATLAB-style
    bicubic (:func:`mesrgan.data.imresize`) to the model's output size.

    Each tile goes straight into the result, converted as it comes, so the memory this takes is
    the result plus a few tiles: with ``bit_depth=8`` a 9600x6400 RGB result is 184 MB, where a
    float32 one would be 737 MB before any copy.

    Args:
        bit_depth: None for float32 pixels in [0, 1]; 8 or 16 for uint8 / uint16 samples, rounded
            exactly as :func:`mesrgan.imageio.write_image` rounds float pixels.

    Returns:
        ``(s*H, s*W, C)``: float32 clamped to [0, 1], or uint8 / uint16 samples.
    """
    from .data import imresize  # data is a sibling ingredient; imported here to keep this module light
    from .imageio import to_samples

    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"pixels must be (H, W, C) with C in 1..4, got {pixels.shape}")
    if pixels.dtype not in (np.float32, np.float64, np.uint8, np.uint16):
        raise ValueError(f"pixels must be float, uint8 or uint16, got {pixels.dtype}")
    if bit_depth not in _SAMPLE_DTYPES:
        raise ValueError(f"bit_depth must be None, 8 or 16, got {bit_depth!r}")
    _check_tiling(tile, tile_pad)
    h, w, c = pixels.shape
    lr = _as_float(pixels[..., :3] if c >= 3 else pixels[..., :1]).permute(2, 0, 1)[None]
    if c < 3:
        lr = lr.expand(1, 3, h, w)  # the model sees grey as RGB; tiles are copied anyway
    out, scale = None, None
    with torch.no_grad():
        for y0, y1, x0, x1, scale, sr in _tiles(model, lr, tile, tile_pad, progress):
            sr = sr[0].to(device="cpu", dtype=torch.float32)
            if sr.shape[0] != 3:
                raise RuntimeError(f"the model must output 3 channels (RGB), got {sr.shape[0]}")
            if c in (1, 2):
                sr = sum(wt * ch for wt, ch in zip(_LUMA, sr))[None]
            piece = sr.clamp_(0, 1).permute(1, 2, 0).numpy()
            if out is None:
                out = np.empty((h * scale, w * scale, c), _SAMPLE_DTYPES[bit_depth])
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale, :piece.shape[2]] = \
                piece if bit_depth is None else to_samples(piece, bit_depth)
    del lr
    if c in (2, 4):
        alpha = imresize(_as_float(pixels[..., -1:])[..., 0][None], scale).clamp_(0, 1)[0].numpy()
        out[..., -1] = alpha if bit_depth is None else to_samples(alpha, bit_depth)
    return out
