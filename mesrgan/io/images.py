"""Reading and writing images for inference, keeping channel layout, bit depth and format.

Pillow does most of the work. It cannot hold 16-bit colour (it reduces 16-bit RGB / RGBA / LA
PNGs to 8 bits on load and cannot save them), so 16-bit PNGs are decoded and encoded here with
``zlib`` and numpy: non-interlaced files of every colour type; an interlaced 16-bit PNG falls back
to Pillow's 8-bit reading with a warning.

Pixels travel as float32 numpy arrays ``(H, W, C)`` in [0, 1], C being 1 (grey), 2 (grey + alpha),
3 (RGB) or 4 (RGBA); :func:`read_image_samples` gives the stored uint8 / uint16 samples instead.

Every read checks a pixel budget (width x height, any bit depth or mode) from the file's header
before anything is decoded: a few hundred bytes of PNG can claim 60000x60000 pixels, and a 16-bit
PNG is never seen by Pillow's own check. The default budget is Pillow's limit
(``PIL.Image.MAX_IMAGE_PIXELS``); ``MESRGAN_MAX_PIXELS`` or the programs' ``--max-pixels`` raise it.
"""
from __future__ import annotations

import os
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import atomic_path

__all__ = ["ImageReadError", "ImageTooLargeError", "LoadedImage", "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS",
           "MAX_PIXELS_ENV", "check_image", "default_max_pixels", "image_size", "is_image_file", "read_image",
           "read_image_samples", "to_samples", "write_image", "read_png16", "write_png16"]

#: File extensions treated as images when a folder is scanned.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm", ".pnm", ".tga")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels, and back
_PNG_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
_PNG_COLOR_TYPE = {c: t for t, c in _PNG_CHANNELS.items()}


#: The default pixel budget: Pillow's decompression-bomb limit (about 89.5 million pixels).
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
#: Environment variable that replaces the default budget (0: no budget), e.g. for training.
MAX_PIXELS_ENV = "MESRGAN_MAX_PIXELS"


class ImageReadError(ValueError):
    """The file is missing, not an image, or an image kind this module does not handle."""


class ImageTooLargeError(ImageReadError):
    """The header claims more pixels than the budget; nothing was decoded."""

    def __init__(self, path, width, height, max_pixels):
        self.path, self.width, self.height, self.max_pixels = path, width, height, max_pixels
        super().__init__(
            f"{path}: {width}x{height} = {width * height:,} pixels is over the pixel budget of {max_pixels:,} "
            f"(a guard against decompression bombs); for a trusted file raise it with --max-pixels N "
            f"(upscale, evaluate) or the environment variable {MAX_PIXELS_ENV}=N (every program, training too)")


def default_max_pixels() -> int:
    """The budget used when none is given: ``$MESRGAN_MAX_PIXELS`` if set, else Pillow's limit."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a whole number of pixels >= 0 (0: no budget), got {text!r}")
    return value


def _budget(max_pixels):
    if max_pixels is None:
        return default_max_pixels()
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ValueError(f"max_pixels must be an int >= 0 (0: no budget), got {max_pixels!r}")
    return max_pixels


def _check_budget(path, width, height, max_pixels):
    if max_pixels and width * height > max_pixels:
        raise ImageTooLargeError(path, width, height, max_pixels)


@dataclass
class LoadedImage:
    """An image as read from disk.

    Attributes:
        pixels: float32 ``(H, W, C)`` in [0, 1]; C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA.
        bit_depth: 8 or 16, the precision of the stored samples.
        format: Pillow's format name of the file ("PNG", "JPEG", "WEBP", ...).
    """

    pixels: np.ndarray
    bit_depth: int
    format: str


def is_image_file(path) -> bool:
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


# ---------------------------------------------------------------------------------------------
# 16-bit PNG


def _png_chunks(data):
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        yield ctype, data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if ctype == b"IEND":
            return


def _png_header(data):
    """``(width, height, bit_depth, color_type, interlace)`` or None when not a PNG."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return w, h, depth, ctype, interlace


def _unfilter(raw, h, w, bpp):
    """Undo PNG's per-row filters (None, Sub, Up, Average, Paeth). raw: (h, 1 + w*bpp) uint8.

    Pixel (y, x) depends on its left, upper and upper-left neighbours only, so all pixels on one
    anti-diagonal y + x = d are independent: the loop runs over h + w - 1 diagonals, vectorised
    along each one, instead of over h * w pixels.
    """
    ftype = raw[:, 0].astype(np.int32)
    if ftype.max(initial=0) > 4:
        raise ImageReadError(f"corrupt PNG: unknown row filter type {int(ftype.max())}")
    filt = raw[:, 1:].reshape(h, w, bpp).astype(np.int32)
    if ftype.max(initial=0) <= 2:
        # None / Sub / Up only: one vectorised step per row (uint8 arithmetic wraps modulo 256)
        filt8 = raw[:, 1:].reshape(h, w, bpp)
        out8 = np.empty_like(filt8)
        prev = np.zeros((w, bpp), np.uint8)
        for y in range(h):
            f = ftype[y]
            row = filt8[y] if f == 0 else np.cumsum(filt8[y], axis=0, dtype=np.uint8) if f == 1 \
                else filt8[y] + prev
            out8[y] = row
            prev = out8[y]
        return out8
    out = np.zeros((h + 1, w + 1, bpp), np.int32)  # one zero row on top and column on the left
    for d in range(h + w - 1):
        ys = np.arange(max(0, d - w + 1), min(h - 1, d) + 1)
        xs = d - ys
        a = out[ys + 1, xs]       # left
        b = out[ys, xs + 1]       # up
        c = out[ys, xs]           # up-left
        f = ftype[ys][:, None]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        pred = np.select([f == 1, f == 2, f == 3, f == 4], [a, b, (a + b) >> 1, paeth], 0)
        out[ys + 1, xs + 1] = (filt[ys, xs] + pred) & 255
    return out[1:, 1:].astype(np.uint8)


def read_png16(path, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode a non-interlaced 16-bit PNG to a uint16 array ``(H, W, C)``, C = 1, 2, 3 or 4.

    ``max_pixels``: the pixel budget (None: :func:`default_max_pixels`; 0: none), checked from the
    header; the pixel data is never inflated past the size the header gives.
    """
    with open(path, "rb") as f:
        data = f.read()
    header = _png_header(data)
    if header is None:
        raise ImageReadError(f"{path}: not a PNG file")
    w, h, depth, ctype, interlace = header
    if depth != 16 or ctype not in _PNG_CHANNELS or interlace:
        raise ImageReadError(f"{path}: read_png16 handles non-interlaced 16-bit grey/RGB(A) PNGs, "
                             f"got bit depth {depth}, colour type {ctype}, interlace {interlace}")
    _check_budget(path, w, h, _budget(max_pixels))
    idat = b"".join(body for ctype_, body in _png_chunks(data) if ctype_ == b"IDAT")
    channels = _PNG_CHANNELS[ctype]
    bpp = 2 * channels
    expected = h * (1 + w * bpp)
    try:
        # max_length bounds the output: a stream that inflates to more than the header's size
        # stops one byte past it instead of filling memory
        raw = np.frombuffer(zlib.decompressobj().decompress(idat, expected + 1), np.uint8)
    except zlib.error as e:
        raise ImageReadError(f"{path}: corrupt PNG data ({e})") from e
    if raw.size != expected:
        raise ImageReadError(f"{path}: corrupt PNG: {'more than ' if raw.size > expected else ''}{raw.size} bytes "
                             f"of pixel data, expected {expected} for {w}x{h}")
    pix = _unfilter(raw.reshape(h, 1 + w * bpp), h, w, bpp)
    return pix.reshape(h, w, channels, 2).view(">u2")[..., 0].astype(np.uint16)


_PNG_BAND_BYTES = 8 << 20  # rows filtered and compressed at a time by write_png16


def _png_chunk(ctype, body):
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))


def write_png16(path, pixels: np.ndarray) -> None:
    """Encode a uint16 array ``(H, W)`` or ``(H, W, C)``, C = 1..4, as a 16-bit PNG.

    Rows are filtered and compressed in bands, each written as its own IDAT chunk, so the memory
    used beyond ``pixels`` is a few megabytes whatever the image size.
    """
    if pixels.dtype != np.uint16:
        raise TypeError(f"write_png16: pixels must be uint16, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    if c not in _PNG_COLOR_TYPE:
        raise ValueError(f"write_png16: expected 1 to 4 channels, got {c}")
    row_bytes = w * c * 2
    band = max(1, _PNG_BAND_BYTES // max(row_bytes, 1))
    compressor = zlib.compressobj(6)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, _PNG_COLOR_TYPE[c], 0, 0, 0)
    prev = np.zeros(row_bytes, np.uint8)  # the row above the first one is zero for PNG's filters
    with open(path, "wb") as f:
        f.write(_PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr))
        for y0 in range(0, h, band):
            rows = np.ascontiguousarray(pixels[y0:y0 + band], dtype=">u2").view(np.uint8).reshape(-1, row_bytes)
            # "Up" filter on every row: cheap to compute and compresses photographs well
            raw = np.empty((rows.shape[0], 1 + row_bytes), np.uint8)
            raw[:, 0] = 2
            raw[0, 1:] = rows[0] - prev  # uint8 arithmetic wraps modulo 256, as PNG wants
            raw[1:, 1:] = rows[1:] - rows[:-1]
            prev = rows[-1].copy()
            body = compressor.compress(raw.tobytes())
            if body:
                f.write(_png_chunk(b"IDAT", body))
        f.write(_png_chunk(b"IDAT", compressor.flush()) + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# any image


_PILLOW_LIMIT_LOCK = threading.Lock()


def _open_unchecked(path):
    """``Image.open`` with Pillow's own bomb check off: the caller checks its budget instead, so
    that a budget raised above Pillow's limit is honoured. Opening reads the header only."""
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _check_path(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a folder, not an image")
    return path


# what a failing decoder raises; DecompressionBombError for Pillow's own checks inside a file
# (GIF frames, ICO entries) that the header did not show
_DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` from the file's header, without decoding it (no budget applies)."""
    path = _check_path(path)
    with open(path, "rb") as f:
        header = _png_header(f.read(33))
    if header is not None:
        return header[0], header[1]
    try:
        with _open_unchecked(path) as im:
            return im.size
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from e


def check_image(path, *, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image within the pixel budget (None: :func:`default_max_pixels`;
    0: none), after Pillow's integrity check (chunk CRCs and the like, no full decode).

    Raises :class:`ImageTooLargeError` or :class:`ImageReadError`.
    """
    w, h = image_size(path)
    _check_budget(os.fspath(path), w, h, _budget(max_pixels))
    try:
        with _open_unchecked(path) as im:
            im.verify()
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{os.fspath(path)}: cannot read image ({e})") from e
    return w, h


def read_image_samples(path, *, max_pixels: int | None = None) -> tuple[np.ndarray, int, str]:
    """The stored samples of an image file, after its EXIF orientation.

    Returns ``(samples, bit_depth, format)``: samples uint8 (bit depth 8) or uint16 (16) of shape
    ``(H, W, C)``, C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA, and Pillow's format name. Palette
    images become RGB or RGBA (with their transparency); CMYK, YCbCr and the like become RGB;
    16-bit PNGs and 16-bit grey TIFFs keep 16 bits.

    ``max_pixels``: the pixel budget (None: :func:`default_max_pixels`; 0: none). A larger image
    raises :class:`ImageTooLargeError` before any decoding; anything else unreadable raises
    :class:`ImageReadError` with the path and the reason.
    """
    path = _check_path(path)
    budget = _budget(max_pixels)
    with open(path, "rb") as f:
        header = _png_header(f.read(33))
    if header is not None:
        _check_budget(path, header[0], header[1], budget)
        if header[2] == 16 and header[3] in _PNG_CHANNELS:
            if not header[4]:
                return read_png16(path, max_pixels=0), 16, "PNG"
            warnings.warn(f"{path}: interlaced 16-bit PNG is read with 8-bit precision", stacklevel=3)
    try:
        with _open_unchecked(path) as im:
            _check_budget(path, im.size[0], im.size[1], budget)
            fmt = im.format or "PNG"
            im = ImageOps.exif_transpose(im)
            im.load()
    except ImageTooLargeError:
        raise
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from e
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im)
        if mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
            raise ImageReadError(f"{path}: 32-bit integer image with values outside 0..65535")
        return arr.astype(np.uint16)[..., None], 16, fmt
    if mode == "F":
        raise ImageReadError(f"{path}: floating-point images (mode F) are not supported")
    if mode == "1":
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if (mode == "PA" or "transparency" in im.info) else "RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr, 8, fmt


def read_image(path, *, max_pixels: int | None = None) -> LoadedImage:
    """Read an image file as float32 pixels in [0, 1], applying its EXIF orientation.

    Channels, bit depth, the pixel budget and the errors are those of :func:`read_image_samples`.
    """
    samples, bit_depth, fmt = read_image_samples(path, max_pixels=max_pixels)
    pixels = samples.astype(np.float32)
    pixels /= 65535.0 if bit_depth == 16 else 255.0
    return LoadedImage(pixels, bit_depth, fmt)


_FORMAT_OF_EXT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM",
                  ".gif": "GIF", ".tga": "TGA"}


def to_samples(pixels: np.ndarray, bit_depth: int) -> np.ndarray:
    """uint8 (bit depth 8) or uint16 (16) samples of float pixels in [0, 1] (clamped, rounded to
    nearest) or of uint8 / uint16 samples (rescaled)."""
    target = np.uint16 if bit_depth == 16 else np.uint8
    if pixels.dtype == target:
        return pixels
    if pixels.dtype == np.uint8:  # 8 -> 16 bits: v * 257 maps 0..255 onto 0..65535 exactly
        return pixels.astype(np.uint16) * np.uint16(257)
    if pixels.dtype == np.uint16:  # 16 -> 8 bits, rounded
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    # float32 is exact enough to round to 16 bits, and half the memory of float64 for big outputs
    x = np.nan_to_num(pixels.astype(np.float32, copy=True))
    np.clip(x, 0.0, 1.0, out=x)
    x *= 65535.0 if bit_depth == 16 else 255.0
    np.rint(x, out=x)
    return x.astype(target)


def write_image(path, pixels: np.ndarray, *, bit_depth: int = 8, quality: int = 95) -> None:
    """Write ``(H, W, C)`` pixels in the format of ``path``'s extension.

    ``pixels``: float in [0, 1] (clamped, rounded), or uint8 / uint16 samples (written as they
    are at their own bit depth, else rescaled). ``bit_depth=16`` needs a ``.png`` path. Alpha
    cannot go into JPEG (a ValueError says so). ``quality`` (1..100) applies to JPEG and WebP.
    The file is written whole or not at all (:func:`mesrgan.io.atomic.atomic_path`).
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    fmt = _FORMAT_OF_EXT.get(ext)
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {ext!r}; use one of {sorted(_FORMAT_OF_EXT)}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    c = pixels.shape[2]
    if c not in (1, 2, 3, 4):
        raise ValueError(f"write_image: expected 1 to 4 channels, got {c}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt != "PNG":
        raise ValueError(f"{path}: 16-bit output needs a .png file name")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an int from 1 to 100, got {quality!r}")
    if fmt == "JPEG" and c in (2, 4):
        raise ValueError(f"{path}: JPEG cannot store an alpha channel; use .png or .webp")
    arr = to_samples(pixels, bit_depth)
    # whole or absent: a kill or a full disk mid-write leaves the earlier file (or none) under this name
    with atomic_path(path) as tmp:
        if bit_depth == 16:
            write_png16(tmp, arr)
        else:
            im = Image.fromarray(arr[..., 0] if c == 1 else arr)  # L, LA, RGB or RGBA from the shape
            kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
            im.save(tmp, fmt, **kwargs)
