"""Training and validation data: image folders, random HR crops, LR by MATLAB-style bicubic.

Sampling is a pure function of ``(seed, sample id)``: sample ``k`` of a run comes from image
``perm_e[k mod n]`` (``perm_e`` a seeded permutation for epoch ``e = k // n``), and its crop
position and flips/rotation come from a generator seeded with ``(seed, k)``. The training loop
asks for sample ids ``iteration * batch + j`` (:class:`SampleIdSampler`), so a resumed run, a run
with a different number of DataLoader workers, or a run split over K processes (each takes its
slice of every global batch) sees exactly the same batches. That is what makes ``--resume``
reproduce an uninterrupted run step for step, with no worker RNG state to save.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import UnidentifiedImageError

from ..io.images import ImageTooLargeError, check_image, read_image_samples, to_samples
from .resize import imresize

__all__ = ["IMAGE_EXTENSIONS", "find_images", "load_image", "scan_images", "match_pairs",
           "augment", "CropDataset", "SampleIdSampler", "prepare_validation"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def find_images(dirs) -> list[str]:
    """All image files (``IMAGE_EXTENSIONS``, any case) under ``dirs``, recursively, sorted.

    Symbolic links are followed, but no directory is entered twice (directories are told apart
    by device and inode), so a link to ``.`` or to a parent adds nothing and cannot loop, and an
    image file reached by two paths is listed once.

    Args:
        dirs: one folder or a list of folders. A missing folder is an error.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    found, seen_dirs, seen_files = [], set(), set()
    for d in dirs:
        d = os.fspath(d)
        if not os.path.isdir(d):
            raise FileNotFoundError(f"data folder {d!r} does not exist or is not a folder")
        for root, subdirs, files in os.walk(d, followlinks=True):
            st = os.stat(root)
            if (st.st_dev, st.st_ino) in seen_dirs:
                subdirs[:] = []  # a loop, or a folder already walked through another link
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            subdirs.sort()
            for f in sorted(files):
                if not f.lower().endswith(IMAGE_EXTENSIONS) or f.startswith("."):
                    continue
                path = os.path.join(root, f)
                try:
                    fst = os.stat(path)
                    key = (fst.st_dev, fst.st_ino)
                except OSError:
                    key = path  # a broken link: listed, and reported as unreadable when scanned
                if key not in seen_files:
                    seen_files.add(key)
                    found.append(path)
    return found


def _to_uint8_rgb(samples: np.ndarray) -> np.ndarray:
    """uint8 / uint16 ``(H, W, C)`` samples -> uint8 RGB: grey repeated, alpha dropped (the colour
    channels are kept as stored), 16 bits rounded to 8."""
    samples = to_samples(samples, 8)
    rgb = samples[..., :3] if samples.shape[2] >= 3 else np.repeat(samples[..., :1], 3, axis=2)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def load_image(path: str, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to an ``(H, W, 3)`` uint8 RGB array (grayscale/alpha converted).

    Reads with :func:`mesrgan.io.images.read_image_samples` (EXIF orientation applied, the pixel
    budget ``max_pixels`` checked first; None: the default budget).
    """
    samples, _, _ = read_image_samples(path, max_pixels=max_pixels)
    return _to_uint8_rgb(samples)


def _image_size(path: str, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image within the pixel budget, checking that the file is not
    truncated or corrupt (:func:`mesrgan.io.images.check_image`)."""
    return check_image(path, max_pixels=max_pixels)


def scan_images(paths, min_size: int, what: str = "HR", max_pixels: int | None = None):
    """Keep the readable images of at least ``min_size`` pixels on both sides.

    Unreadable or corrupt files, and images over the pixel budget ``max_pixels`` (None: the
    default budget of :mod:`mesrgan.io.images`), are skipped with a warning naming each of them;
    images that are too small are skipped with one warning that counts them.

    Returns:
        list of ``(path, (width, height))``.
    """
    kept, small, bad = [], 0, []
    for p in paths:
        try:
            w, h = _image_size(p, max_pixels)
        except ImageTooLargeError as e:
            bad.append(p)
            warnings.warn(f"skipping image: {e}", stacklevel=2)
            continue
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            bad.append(p)
            warnings.warn(f"skipping unreadable image {p}: {e}", stacklevel=2)
            continue
        if w < min_size or h < min_size:
            small += 1
            continue
        kept.append((p, (w, h)))
    if small:
        warnings.warn(f"skipped {small} {what} image(s) smaller than {min_size}x{min_size} pixels "
                      "(the crop size)", stacklevel=2)
    return kept


def match_pairs(hr_dirs, lr_dirs, scale: int):
    """Pair LR and HR images by relative path without extension (``x.png`` in HR with ``x.png``,
    ``x.jpg`` or ``xx4.png`` in LR). Returns ``[(hr_path, lr_path)]``; unmatched HR images are an
    error so a half-prepared folder is not silently used."""
    if len(hr_dirs) != len(lr_dirs):
        raise ValueError(f"--data-lr must be given once per --data folder: got {len(hr_dirs)} HR "
                         f"and {len(lr_dirs)} LR folders")
    pairs = []
    for hd, ld in zip(hr_dirs, lr_dirs):
        lr_index = {}
        for p in find_images(ld):
            stem = os.path.splitext(os.path.relpath(p, ld))[0]
            lr_index[stem] = p
            for suffix in (f"x{scale}", f"_x{scale}", f"_lr"):
                if stem.endswith(suffix):
                    lr_index.setdefault(stem[: -len(suffix)], p)
        missing = []
        for p in find_images(hd):
            stem = os.path.splitext(os.path.relpath(p, hd))[0]
            if stem in lr_index:
                pairs.append((p, lr_index[stem]))
            else:
                missing.append(p)
        if missing:
            raise FileNotFoundError(f"{len(missing)} HR image(s) in {hd!r} have no LR partner in "
                                    f"{ld!r}, e.g. {missing[0]!r}")
    return pairs


def augment(arrays, hflip: bool, vflip: bool, rot90: bool):
    """Apply the same flips / transpose to every ``(C, H, W)`` tensor of ``arrays``."""
    out = []
    for a in arrays:
        if hflip:
            a = a.flip(-1)
        if vflip:
            a = a.flip(-2)
        if rot90:
            a = a.transpose(-1, -2)
        out.append(a.contiguous())
    return out


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    # Copied only when not C-contiguous or read-only (a view of a decoded image: torch warns on those).
    return torch.from_numpy(np.require(a, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round ``[0, 1]`` data to 8-bit levels, as saving a PNG would."""
    return x.clamp(0, 1).mul(255).round().div(255)


@dataclass
class _Source:
    hr: object            # path or HxWx3 uint8 array
    lr: object = None     # paired LR (path or array), or None to make it by imresize
    name: str = ""


class CropDataset(torch.utils.data.Dataset):
    """Random HR crops with their LR counterparts.

    ``dataset[k]`` is sample id ``k`` (any non-negative int; see the module notes) and returns
    ``{"lr": (3, crop/scale, crop/scale), "hr": (3, crop, crop)}`` float32 tensors in ``[0, 1]``.
    Without paired LR images the LR crop is ``imresize(HR crop, 1/scale)``, rounded to 8 bits
    (``quantize_lr``) as a saved LR image would be.

    Build it with :meth:`from_folders`, :meth:`from_arrays` or :meth:`from_pairs`. ``max_pixels``
    is the pixel budget of each image file (None: :func:`mesrgan.io.images.default_max_pixels`,
    which ``MESRGAN_MAX_PIXELS`` sets); files over it are skipped with a warning when scanned.
    """

    def __init__(self, sources, crop_size: int, scale: int, *, seed: int = 0, augment: bool = True,
                 quantize_lr: bool = True, cache: bool = False, max_pixels: int | None = None):
        if crop_size % scale:
            raise ValueError(f"crop_size must be a multiple of scale: got crop_size={crop_size}, "
                             f"scale={scale}")
        if not sources:
            raise ValueError("no training images: every image was skipped or none was found")
        self.sources = list(sources)
        self.crop_size, self.scale = int(crop_size), int(scale)
        self.seed, self.augment, self.quantize_lr = int(seed), bool(augment), bool(quantize_lr)
        self._perm_epoch, self._perm = -1, None
        self._cache = {} if cache else None
        self._bad = set()
        self.max_pixels = max_pixels

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def from_folders(cls, dirs, crop_size: int, scale: int, **kw):
        paths = find_images(dirs)
        if not paths:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under "
                                    f"{', '.join(map(str, dirs))}")
        kept = scan_images(paths, crop_size, max_pixels=kw.get("max_pixels"))
        if not kept:
            raise ValueError(f"none of the {len(paths)} image file(s) under {', '.join(map(str, dirs))} "
                             f"is readable and at least {crop_size}x{crop_size} pixels")
        return cls([_Source(p, None, p) for p, _ in kept], crop_size, scale, **kw)

    @classmethod
    def from_arrays(cls, named_arrays, crop_size: int, scale: int, **kw):
        small = [n for n, a in named_arrays if min(a.shape[:2]) < crop_size]
        if small:
            warnings.warn(f"skipped {len(small)} HR image(s) smaller than {crop_size}x{crop_size} "
                          "pixels (the crop size)", stacklevel=2)
        return cls([_Source(a, None, n) for n, a in named_arrays if min(a.shape[:2]) >= crop_size],
                   crop_size, scale, **kw)

    @classmethod
    def from_pairs(cls, hr_dirs, lr_dirs, crop_size: int, scale: int, **kw):
        pairs = match_pairs(list(hr_dirs), list(lr_dirs), scale)
        if not pairs:
            raise FileNotFoundError(f"no images found under {', '.join(map(str, hr_dirs))}")
        budget = kw.get("max_pixels")
        sizes = dict(scan_images([h for h, _ in pairs], crop_size, max_pixels=budget))
        lr_ok = dict(scan_images([l for h, l in pairs if h in sizes], crop_size // scale, what="LR",
                                 max_pixels=budget))
        sources = []
        for h, l in pairs:
            if h in sizes and l in lr_ok:
                (hw, hh), (lw, lh) = sizes[h], lr_ok[l]
                if hw < lw * scale or hh < lh * scale:
                    raise ValueError(f"paired images disagree with scale {scale}: HR {h!r} is "
                                     f"{hw}x{hh}, LR {l!r} is {lw}x{lh}")
                sources.append(_Source(h, l, h))
        return cls(sources, crop_size, scale, **kw)

    # ---- sampling ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sources)

    def _image_index(self, k: int) -> int:
        n = len(self.sources)
        epoch = k // n
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, 1, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[k % n])

    def _load(self, src) -> np.ndarray:
        if isinstance(src, np.ndarray):
            return src
        if self._cache is not None and src in self._cache:
            return self._cache[src]
        a = load_image(src, self.max_pixels)
        if self._cache is not None:
            self._cache[src] = a
        return a

    def __getitem__(self, k: int):
        k = int(k)
        if k < 0:
            raise IndexError(f"sample id must be >= 0, got {k}")
        idx = self._image_index(k)
        while idx in self._bad and len(self._bad) < len(self.sources):
            idx = (idx + 1) % len(self.sources)
        for _ in range(len(self.sources)):
            src = self.sources[idx]
            try:
                hr_img = self._load(src.hr)
                lr_img = None if src.lr is None else self._load(src.lr)
                break
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
                # Headers were checked when scanning; a file that fails to decode only now (a
                # truncated JPEG, say) is skipped from here on, and the next image stands in.
                warnings.warn(f"skipping unreadable image {src.name}: {e}", stacklevel=2)
                self._bad.add(idx)
                idx = (idx + 1) % len(self.sources)
                while idx in self._bad and len(self._bad) < len(self.sources):
                    idx = (idx + 1) % len(self.sources)
        else:
            raise RuntimeError("every training image failed to decode")
        rng = np.random.default_rng([self.seed, 2, k])
        s, c = self.scale, self.crop_size
        if src.lr is None:
            h, w = hr_img.shape[:2]
            y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
            hr = _to_tensor(hr_img[y:y + c, x:x + c])
            lr = None
        else:
            lc = c // s
            h, w = lr_img.shape[:2]
            y, x = int(rng.integers(0, h - lc + 1)), int(rng.integers(0, w - lc + 1))
            lr = _to_tensor(lr_img[y:y + lc, x:x + lc])
            hr = _to_tensor(hr_img[y * s:(y + lc) * s, x * s:(x + lc) * s])
        flips = rng.random(3) < 0.5 if self.augment else (False, False, False)
        if lr is None:
            # Flips and the transpose commute exactly with imresize on a crop that is a multiple
            # of the scale (symmetric kernel, symmetric borders), so augmenting HR first and then
            # downscaling is the same as augmenting both.
            (hr,) = augment([hr], *flips)
            lr = imresize(hr, 1.0 / s)
            if self.quantize_lr:
                lr = quantize(lr)
        else:
            lr, hr = augment([lr, hr], *flips)
        return {"lr": lr, "hr": hr}


class SampleIdSampler(torch.utils.data.Sampler):
    """Yields the sample ids of global batches ``start_batch, start_batch + 1, ...`` for one
    process: ids ``b * batch_size + rank * per_rank + j`` for ``j < per_rank``, where
    ``per_rank = batch_size // world_size``. Infinite unless ``num_batches`` is given.

    This plays the role of ``DistributedSampler``: K processes together see exactly the batches
    one process would.
    """

    def __init__(self, batch_size: int, start_batch: int = 0, rank: int = 0, world_size: int = 1,
                 num_batches: int | None = None):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the number of "
                             f"processes {world_size}")
        self.batch_size, self.start_batch = int(batch_size), int(start_batch)
        self.rank, self.world_size = int(rank), int(world_size)
        self.per_rank = self.batch_size // self.world_size
        self.num_batches = num_batches

    def __iter__(self):
        b = self.start_batch
        while self.num_batches is None or b < self.start_batch + self.num_batches:
            base = b * self.batch_size + self.rank * self.per_rank
            yield from range(base, base + self.per_rank)
            b += 1

    def __len__(self):
        if self.num_batches is None:
            raise TypeError("SampleIdSampler is infinite")
        return self.num_batches * self.per_rank


def prepare_validation(named_arrays, scale: int, max_size: int = 0):
    """Validation pairs: HR cropped to a multiple of ``scale`` (centre-cropped to at most
    ``max_size`` pixels a side when ``max_size > 0``, to bound the cost of validating on CPU),
    LR = 8-bit ``imresize(HR, 1/scale)``.

    Returns:
        list of ``(name, lr (1, 3, h, w), hr (1, 3, h*scale, w*scale))`` float32 tensors.
    """
    out = []
    for name, a in named_arrays:
        h, w = a.shape[:2]
        if max_size and max_size > 0:
            th, tw = min(h, max_size), min(w, max_size)
            y0, x0 = (h - th) // 2, (w - tw) // 2
            a = a[y0:y0 + th, x0:x0 + tw]
            h, w = th, tw
        h, w = h - h % scale, w - w % scale
        if h < scale or w < scale:
            continue
        hr = _to_tensor(a[:h, :w])[None]
        lr = quantize(imresize(hr, 1.0 / scale))
        out.append((name, lr, hr))
    return out
