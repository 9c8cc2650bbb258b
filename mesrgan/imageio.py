"""Reading and writing images for inference, keeping channel layout, bit depth and format.

Pillow does most of the work. It cannot hold 16-bit colour (it reduces 16-bit RGB / RGBA / LA
PNGs to 8 bits on load and cannot save them), so 16-bit PNGs are decoded and encoded here with
``zlib`` and numpy: non-interlaced files of every colour type; an interlaced 16-bit PNG falls back
to Pillow's 8-bit reading with a warning.

Pixels travel as float32 numpy arrays ``(H, W, C)`` in [0, 1], C being 1 (grey), 2 (grey + alpha),
3 (RGB) or 4 (RGBA).
"""
from __future__ import annotations

import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageReadError", "LoadedImage", "IMAGE_EXTENSIONS", "is_image_file", "read_image",
           "write_image", "read_png16", "write_png16"]

#: File extensions treated as images when a folder is scanned.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm",
                    ".pgm", ".pnm", ".tga")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> channels, and back
_PNG_CHANNELS = {0: 1, 4: 2, 2: 3, 6: 4}
_PNG_COLOR_TYPE = {c: t for t, c in _PNG_CHANNELS.items()}


class ImageReadError(ValueError):
    """The file is missing, not an image, or an image kind this module does not handle."""


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


def read_png16(path) -> np.ndarray:
    """Decode a non-interlaced 16-bit PNG to a uint16 array ``(H, W, C)``, C = 1, 2, 3 or 4."""
    with open(path, "rb") as f:
        data = f.read()
    header = _png_header(data)
    if header is None:
        raise ImageReadError(f"{path}: not a PNG file")
    w, h, depth, ctype, interlace = header
    if depth != 16 or ctype not in _PNG_CHANNELS or interlace:
        raise ImageReadError(f"{path}: read_png16 handles non-interlaced 16-bit grey/RGB(A) PNGs, "
                             f"got bit depth {depth}, colour type {ctype}, interlace {interlace}")
    idat = b"".join(body for ctype_, body in _png_chunks(data) if ctype_ == b"IDAT")
    channels = _PNG_CHANNELS[ctype]
    bpp = 2 * channels
    try:
        raw = np.frombuffer(zlib.decompress(idat), np.uint8)
    except zlib.error as e:
        raise ImageReadError(f"{path}: corrupt PNG data ({e})") from e
    if raw.size != h * (1 + w * bpp):
        raise ImageReadError(f"{path}: corrupt PNG: {raw.size} bytes of pixel data, "
                             f"expected {h * (1 + w * bpp)} for {w}x{h}")
    pix = _unfilter(raw.reshape(h, 1 + w * bpp), h, w, bpp)
    return pix.reshape(h, w, channels, 2).view(">u2")[..., 0].astype(np.uint16)


def write_png16(path, pixels: np.ndarray) -> None:
    """Encode a uint16 array ``(H, W)`` or ``(H, W, C)``, C = 1..4, as a 16-bit PNG."""
    if pixels.dtype != np.uint16:
        raise TypeError(f"write_png16: pixels must be uint16, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    h, w, c = pixels.shape
    if c not in _PNG_COLOR_TYPE:
        raise ValueError(f"write_png16: expected 1 to 4 channels, got {c}")
    rows = np.ascontiguousarray(pixels, dtype=">u2").view(np.uint8).reshape(h, w * c * 2)
    # "Up" filter on every row: cheap to compute and compresses photographs well
    up = np.empty_like(rows)
    up[0] = rows[0]
    up[1:] = rows[1:] - rows[:-1]  # uint8 arithmetic wraps modulo 256, as PNG wants
    raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1)

    def chunk(ctype, body):
        return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body))

    ihdr = struct.pack(">IIBBBBB", w, h, 16, _PNG_COLOR_TYPE[c], 0, 0, 0)
    with open(path, "wb") as f:
        f.write(_PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
                + chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# any image


def read_image(path) -> LoadedImage:
    """Read an image file, applying its EXIF orientation.

    Grey, grey + alpha, RGB and RGBA are kept as such; palette images become RGB or RGBA (with
    their transparency); CMYK, YCbCr and the like become RGB; 16-bit PNGs and 16-bit grey TIFFs
    keep 16 bits. Raises :class:`ImageReadError` with the path and the reason otherwise.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ImageReadError(f"{path}: is a folder, not an image")
    with open(path, "rb") as f:
        head = f.read(33)
    header = _png_header(head)
    if header is not None and header[2] == 16 and header[3] in _PNG_CHANNELS:
        if not header[4]:
            return LoadedImage(read_png16(path).astype(np.float32) / 65535.0, 16, "PNG")
        warnings.warn(f"{path}: interlaced 16-bit PNG is read with 8-bit precision", stacklevel=2)
    try:
        with Image.open(path) as im:
            fmt = im.format or "PNG"
            im = ImageOps.exif_transpose(im)
            im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from e
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        if mode == "I" and (arr.min(initial=0) < 0 or arr.max(initial=0) > 65535):
            raise ImageReadError(f"{path}: 32-bit integer image with values outside 0..65535")
        return LoadedImage((arr / 65535.0).astype(np.float32)[..., None], 16, fmt)
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
    return LoadedImage(arr.astype(np.float32) / 255.0, 8, fmt)


_FORMAT_OF_EXT = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                  ".tif": "TIFF", ".tiff": "TIFF", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM",
                  ".gif": "GIF", ".tga": "TGA"}


def write_image(path, pixels: np.ndarray, *, bit_depth: int = 8, quality: int = 95) -> None:
    """Write float ``(H, W, C)`` pixels in [0, 1] (clamped, rounded) in the format of ``path``'s extension.

    ``bit_depth=16`` needs a ``.png`` path. Alpha cannot go into JPEG (a ValueError says so).
    ``quality`` applies to JPEG and WebP.
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
    if fmt == "JPEG" and c in (2, 4):
        raise ValueError(f"{path}: JPEG cannot store an alpha channel; use .png or .webp")
    # float32 is exact enough to round to 16 bits, and half the memory of float64 for big outputs
    x = np.nan_to_num(pixels.astype(np.float32, copy=True))
    np.clip(x, 0.0, 1.0, out=x)
    x *= 65535.0 if bit_depth == 16 else 255.0
    np.rint(x, out=x)
    if bit_depth == 16:
        write_png16(path, x.astype(np.uint16))
        return
    arr = x.astype(np.uint8)
    im = Image.fromarray(arr[..., 0] if c == 1 else arr)  # L, LA, RGB or RGBA from the shape
    kwargs = {"quality": quality} if fmt in ("JPEG", "WEBP") else {}
    im.save(path, fmt, **kwargs)
