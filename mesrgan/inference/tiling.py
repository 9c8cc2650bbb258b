"""Running a generator on images of any size: overlapping tiles, grey / alpha handling.

Used by ``python -m mesrgan.upscale`` and ``python -m mesrgan.evaluate``; importable on its own.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
import torch

from ..data import imresize
from ..io.images import to_samples

__all__ = ["upscale_tensor", "upscale_pixels", "tile_edges", "tile_memory", "image_memory", "tile_for_budget",
           "DEFAULT_MAX_MEMORY", "DEFAULT_TILE_PAD", "MIN_TILE"]

# BT.601 luma weights, as Pillow's convert("L") uses them: turn the RGB output of a grey input
# back into grey
_LUMA = (0.299, 0.587, 0.114)


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


class _Samples:
    """An image's uint8 / uint16 samples ``(H, W, C)`` seen as a ``(1, 3, H, W)`` float tensor in
    [0, 1] one tile at a time: each tile is converted as :func:`_as_float` converts a whole image
    (the same float32 values), so no float copy of the whole input needs to exist."""

    def __init__(self, samples):
        self.samples = samples
        self.shape = (1, 3, *samples.shape[:2])

    def crop(self, y0, y1, x0, x1):
        t = _as_float(self.samples[y0:y1, x0:x1]).permute(2, 0, 1)[None]
        return t if t.shape[1] == 3 else t.expand(1, 3, *t.shape[2:])


# --- memory of one image -----------------------------------------------------------------------
# The memory a tile takes is dominated by the network's tail, which runs at the output resolution
# with the trunk's width (ESRGAN's RRDBNet at x4: several 64-channel float32 tensors of 16x the
# tile's pixels alive at once, 16 KiB per padded LR pixel). tile_memory() traces the model once on
# a small probe, takes the peak of the bytes its ops' results hold at any moment, per LR pixel,
# and scales it to the padded tile. Resident memory measured on the CPU (docs/evaluation.md,
# "Memory of huge images") stayed below _TILE_FACTOR times that plus _TILE_CONSTANT (oneDNN's
# scratch, the output cache's idle blocks, allocator slack) for every model measured.
DEFAULT_MAX_MEMORY = 1_000_000_000  # bytes: the default budget of one image (mesrgan.upscale --max-memory)
MIN_TILE = 32  # the smallest tile tile_for_budget() chooses, whatever the budget
DEFAULT_TILE_PAD = 16  # context pixels around each tile, for every program and function that tiles
_TILE_FACTOR = 1.3
_TILE_CONSTANT = 64_000_000
_PROBE = 8  # the probe is _PROBE x _PROBE LR pixels (a multiple of every pixel-unshuffle factor)
_PROBED = weakref.WeakKeyDictionary()  # model -> {(device, dtype, channels): peak bytes per LR pixel}


def _live_bytes_per_pixel(model, channels=3):
    """Peak bytes held by the results of the model's ops at any one moment, per LR input pixel,
    traced on a ``_PROBE``-pixel square (every size gives the same figure: each activation is a
    fixed number of bytes per pixel)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    device, dtype = _model_device_dtype(model, torch.empty(0))
    key = (str(device), dtype, channels)
    try:
        known = _PROBED.setdefault(model, {})
    except TypeError:  # not weak-referenceable: probe every time
        known = {}
    if key in known:
        return known[key]

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live = self.peak = 0
            self.held = set()

        def _free(self, ptr, n):
            self.live -= n
            self.held.discard(ptr)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and t.device.type != "meta":
                    st = t.untyped_storage()
                    ptr, n = st.data_ptr(), st.nbytes()
                    if ptr and ptr not in self.held:
                        self.held.add(ptr)
                        self.live += n
                        self.peak = max(self.peak, self.live)
                        weakref.finalize(st, self._free, ptr, n)
            return out

    x = torch.rand(1, channels, _PROBE, _PROBE, device=device).to(dtype)
    mode = LiveBytes()
    with torch.no_grad(), mode:
        y = model(x)
    del y
    known[key] = mode.peak / _PROBE ** 2 + x.element_size() * channels  # the tile's own input copy too
    return known[key]


def tile_memory(model, tile: int, tile_pad: int = DEFAULT_TILE_PAD, image_size: tuple[int, int] | None = None) -> int:
    """Estimated peak memory (bytes) of running ``model`` on one tile of ``tile`` LR pixels with
    ``tile_pad`` pixels of context on every side: ``_TILE_FACTOR * B * (tile + 2 * tile_pad)**2 +
    _TILE_CONSTANT``, where ``B`` is the model's peak activation bytes per LR pixel (traced once per
    model on a small probe; ESRGAN's RRDBNet at x4 with 64 features: 16,384 B; the MESRGAN paper's
    pixel-shuffle generators: 8,704 B). ``tile=0`` is the whole image (``image_size=(h, w)``
    needed); a padded tile is never larger than the image. On a GPU the activations are device
    memory; this figure is then their estimate."""
    _check_tiling(tile, tile_pad)
    th = tw = tile + 2 * tile_pad
    if image_size is not None:
        th, tw = (n if tile == 0 else min(n, tile + 2 * tile_pad) for n in image_size)
    elif tile == 0:
        raise ValueError("tile=0 (the whole image) needs image_size")
    return int(_TILE_FACTOR * _live_bytes_per_pixel(model) * th * tw + _TILE_CONSTANT)


def image_memory(image_shape: tuple[int, int, int], scale: int, bit_depth: int = 8, input_bytes: int = 1,
                 write: bool = True) -> int:
    """Bytes that upscaling one ``(h, w, c)`` image takes besides its tiles' activations: the input's
    samples (``input_bytes`` per sample) and the ``scale``x result at ``bit_depth`` (1 or 2 bytes per
    sample: a 9600x6400 RGB 8-bit result is 184 MB), and with ``write`` the 8-bit writer's copy
    (Pillow holds 4 bytes per pixel, 1 for grey) when the result is encoded after the tiles have
    gone. The larger of the two phases is returned: tiling runs with the input and the result,
    writing with the result and the writer's copy (the input is dropped before)."""
    h, w, c = image_shape
    out_px = h * w * scale * scale
    result = out_px * c * (2 if bit_depth == 16 else 1)
    tiling = h * w * c * input_bytes + result
    writing = result + (out_px * (1 if c == 1 else 4) if write and bit_depth != 16 else 0)
    return max(tiling, writing)


def tile_for_budget(model, budget_bytes: int = DEFAULT_MAX_MEMORY, *, image_shape: tuple[int, int, int] | None = None,
                    scale: int = 4, tile_pad: int = DEFAULT_TILE_PAD, bit_depth: int = 8, input_bytes: int = 1) -> int:
    """The largest tile whose estimated memory fits ``budget_bytes`` (the default: 1 GB).

    With ``image_shape=(h, w, c)`` the image's own buffers (:func:`image_memory`) are taken out of
    the budget first, so that the whole upscale of that image, input and result included, stays
    within it; the tile is then at most the image (one tile: the untiled result). The answer is
    never below ``MIN_TILE``: where the buffers alone leave too little, the memory used is the
    buffers plus ``tile_memory(model, MIN_TILE, tile_pad)``, over the budget.
    """
    _check_tiling(0, tile_pad)
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or not budget_bytes > 0:
        raise ValueError(f"budget_bytes must be a positive number, got {budget_bytes!r}")
    left = budget_bytes
    if image_shape is not None:
        left -= image_memory(image_shape, scale, bit_depth, input_bytes=input_bytes)
    per_px = _TILE_FACTOR * _live_bytes_per_pixel(model)
    side = math.isqrt(max(int((left - _TILE_CONSTANT) / per_px), 0))
    tile = max(side - 2 * tile_pad, MIN_TILE)
    if image_shape is not None:
        tile = min(tile, max(image_shape[:2]))
    return tile


def _tiles(model, lr, tile, tile_pad, progress):
    """Run ``model`` over ``lr`` tile by tile; yields ``(y0, y1, x0, x1, scale, sr)`` per tile.

    ``lr`` is a ``(N, C, h, w)`` float tensor or a :class:`_Samples`. ``[y0:y1, x0:x1]`` is the
    tile's place in LR pixels and ``sr`` its upscaled pixels (the context cropped off),
    ``(N, C', (y1 - y0) * scale, (x1 - x0) * scale)`` on the model's device and in its dtype. The
    caller places each tile where it wants it, so no full-size float result needs to exist.
    """
    if isinstance(lr, _Samples):
        device, dtype = _model_device_dtype(model, torch.empty(0))
        crop = lr.crop
    else:
        device, dtype = _model_device_dtype(model, lr)

        def crop(y0, y1, x0, x1):
            return lr[..., y0:y1, x0:x1]
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
            sr = model(crop(iy0, iy1, ix0, ix1).to(device=device, dtype=dtype))
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


def upscale_tensor(model, lr: torch.Tensor, *, tile: int = 0, tile_pad: int = DEFAULT_TILE_PAD,
                   progress=None) -> torch.Tensor:
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
# The alpha channel is resized in tiles of this many LR pixels with this much context (bicubic
# upscaling reads 2 pixels either side; the rest is margin).
_ALPHA_TILE, _ALPHA_PAD = 512, 8


def _as_float(pixels):
    """float32 tensor in [0, 1] of float pixels or of uint8 / uint16 samples (divided by 255 /
    65535 in float32, exactly as :func:`mesrgan.io.images.read_image` does)."""
    if pixels.dtype in (np.uint8, np.uint16):
        # one float32 copy (the samples themselves may be a read-only view of the decoder's buffer)
        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).div_(
            255.0 if pixels.dtype == np.uint8 else 65535.0)
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def upscale_pixels(model, pixels: np.ndarray, *, tile: int = 0, tile_pad: int = DEFAULT_TILE_PAD, progress=None,
                   bit_depth: int | None = None) -> np.ndarray:
    """Upscale one image given as float ``(H, W, C)`` in [0, 1], or as its uint8 / uint16 samples
    (:func:`mesrgan.io.images.read_image_samples`, which saves holding a float copy), C = 1, 2, 3 or 4.

    The model sees RGB: a grey image is repeated into three channels and its output turned back
    into grey with BT.601 luma weights; an alpha channel is upscaled separately with MATLAB-style
    bicubic (:func:`mesrgan.data.imresize`) to the model's output size.

    Each tile goes straight into the result, converted as it comes, so the memory this takes is
    the result plus a few tiles: with ``bit_depth=8`` a 9600x6400 RGB result is 184 MB, where a
    float32 one would be 737 MB before any copy.

    Args:
        bit_depth: None for float32 pixels in [0, 1]; 8 or 16 for uint8 / uint16 samples, rounded
            exactly as :func:`mesrgan.io.images.write_image` rounds float pixels.

    Returns:
        ``(s*H, s*W, C)``: float32 clamped to [0, 1], or uint8 / uint16 samples.
    """
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"pixels must be (H, W, C) with C in 1..4, got {pixels.shape}")
    if pixels.dtype not in (np.float32, np.float64, np.uint8, np.uint16):
        raise ValueError(f"pixels must be float, uint8 or uint16, got {pixels.dtype}")
    if bit_depth not in _SAMPLE_DTYPES:
        raise ValueError(f"bit_depth must be None, 8 or 16, got {bit_depth!r}")
    _check_tiling(tile, tile_pad)
    h, w, c = pixels.shape
    # converted to float tile by tile; the model sees grey as RGB
    lr = _Samples(pixels[..., :3] if c >= 3 else pixels[..., :1])
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
        # in tiles too: imresize builds dense resize matrices, whose size grows with the image
        ys, xs = tile_edges(h, _ALPHA_TILE), tile_edges(w, _ALPHA_TILE)
        for y0, y1 in zip(ys[:-1], ys[1:]):
            for x0, x1 in zip(xs[:-1], xs[1:]):
                iy0, iy1 = max(y0 - _ALPHA_PAD, 0), min(y1 + _ALPHA_PAD, h)
                ix0, ix1 = max(x0 - _ALPHA_PAD, 0), min(x1 + _ALPHA_PAD, w)
                a = imresize(_as_float(pixels[iy0:iy1, ix0:ix1, -1:])[..., 0][None], scale).clamp_(0, 1)[0]
                oy, ox = (y0 - iy0) * scale, (x0 - ix0) * scale
                a = a[oy:oy + (y1 - y0) * scale, ox:ox + (x1 - x0) * scale].numpy()
                out[y0 * scale:y1 * scale, x0 * scale:x1 * scale, -1] = \
                    a if bit_depth is None else to_samples(a, bit_depth)
    return out
