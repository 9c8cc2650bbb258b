"""Measure a generator on a test set: PSNR / SSIM / RMSE / NIQE per image and their mean, beside bicubic.

    python -m mesrgan.evaluate --weights CKPT [--model NAME] [--data DIR] [--scale S] [--data-lr DIR]
                               [--save-dir DIR] [--json FILE] [--device DEV] [--metrics standard|paper]
                               [--max-pixels N]

For each HR image of ``--data`` (the held-out bundled photographs when it is left out), the HR is
cropped to a multiple of the scale, LR = MATLAB-style bicubic downscaling of HR rounded to 8 bits
(or the image of the same name in ``--data-lr``), SR = the generator's output rounded to 8 bits,
and the bicubic baseline = bicubic upscaling of LR rounded to 8 bits.

Metric conventions (see :mod:`mesrgan.metrics`):

* ``--metrics standard`` (default; what SR papers report): Y of MATLAB's rgb2ycbcr (BT.601,
  16..235), ``scale`` pixels cropped from every border, SSIM with the 11x11 Gaussian window
  (sigma 1.5); RMSE in 8-bit grey levels of Y.
* ``--metrics paper``: the MESRGAN paper's Table II code: RGB, no crop, SSIM over the whole image as
  one window per channel; RMSE in 8-bit levels of RGB. Its SSIM is not comparable with standard SSIM.
* NIQE (no reference, lower is better; :func:`mesrgan.metrics.niqe`): of the SR and of the bicubic
  image alone, on Y, with the convention's border crop; "-" (null in JSON) for an image smaller
  than two 96x96 blocks. PI = ((10 - Ma) + NIQE) / 2 needs Ma et al.'s learned model: computed only
  when pyiqa and its NRQM model load (:mod:`mesrgan.metrics.pi`); otherwise one line says why it is missing.

An image whose header claims more than ``--max-pixels`` pixels is skipped unread (a guard against
decompression bombs), like any unreadable one: the others are still measured, the table and
``--json`` (written atomically) hold what was measured, and the failures are listed. ``--json`` and
``--save-dir`` are checked before any work. The exit status is 0 when every image was measured, 1
when some failed, 2 for a bad command line, checkpoint, data folder or output location.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

from .cli import (DTYPES, DTYPE_HELP, UsageError, check_dir, check_file, check_finite_weights, int_range,
                  load_checkpoint, output_stems, prepare_dir, prepare_file, resolve_device, resolve_dtype,
                  run_program, weights_file, weights_label, write_text_atomic)
from .data import bundled_images, imresize
from .io.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageReadError, is_image_file, read_image, write_image
from .inference import DEFAULT_TILE_PAD, upscale_tensor
from .metrics import NIQE_BLOCK, ma_scorer, niqe, perceptual_index, psnr, rmse, ssim

__all__ = ["main", "evaluate_images", "CONVENTIONS", "measure"]

#: metric conventions: keyword arguments of the metric functions (crop_border is set from the scale)
CONVENTIONS = {
    "standard": {"y_channel": True, "crop": "scale", "window": "gaussian",
                 "text": "Y of BT.601 (MATLAB rgb2ycbcr, 16-235), {crop} px border cropped, SSIM with an "
                         "11x11 Gaussian window (sigma 1.5) over the valid region; RMSE in 8-bit levels of Y"},
    "paper": {"y_channel": False, "crop": 0, "window": "global",
              "text": "the MESRGAN paper's Table II convention: RGB, no border crop, SSIM over the whole image "
                      "as one window per channel (not comparable with standard SSIM); RMSE in 8-bit RGB levels"},
}


def build_parser():
    p = argparse.ArgumentParser(allow_abbrev=False,
        prog="python -m mesrgan.evaluate",
        description="PSNR / SSIM / RMSE / NIQE of a super-resolution generator on a set of HR images, "
                    "beside the bicubic baseline.")
    p.add_argument("--weights", required=True, metavar="CKPT",
                   help="generator: a checkpoint (ours: last.pt, best.pt, a generator .pt; a bare state dict; "
                        "published ESRGAN RRDBNet weights), a training run folder (its best.pt, else "
                        "stage1_best.pt, else last.pt), or the name of a model shipped with mesrgan (mesrgan-lite-x4)")
    p.add_argument("--model", default=None, help="preset name, needed only when the checkpoint does not say")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="folder of HR images (default: the held-out bundled photographs)")
    p.add_argument("--scale", type=int, choices=(1, 2, 4), default=None,
                   help="upscaling factor; must match the checkpoint's (default: the checkpoint's)")
    p.add_argument("--data-lr", "--lr-data", dest="lr_data", default=None, metavar="DIR",
                   help="folder of paired LR images (same file stem, optionally with an x<scale> suffix); "
                        "default: bicubic downscaling of each HR image")
    p.add_argument("--save-dir", default=None, metavar="DIR",
                   help="write each SR image there as <name>.png (images that share a file stem get distinct "
                        "names: a_jpg.png, a_png.png; an existing file of that name is replaced whole)")
    p.add_argument("--json", default=None, metavar="FILE", help="write all numbers there as JSON")
    p.add_argument("--metrics", choices=sorted(CONVENTIONS), default="standard",
                   help="standard (default): Y of BT.601, crop = scale, 11x11 Gaussian SSIM, as SR papers report; "
                        "paper: the MESRGAN paper's Table II code: RGB, no crop, whole-image SSIM")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available; default)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                   help=DTYPE_HELP + ". The metrics are always computed in float64 on the 8-bit images")
    p.add_argument("--tile", type=int_range(1, zero_ok=True), default=0,
                   help="run the model in tiles of this many LR pixels (default 0: whole images, exact)")
    p.add_argument("--tile-pad", type=int_range(0, 1024), default=DEFAULT_TILE_PAD,
                   help=f"context pixels around each tile, 0..1024 (default {DEFAULT_TILE_PAD}, as in upscale)")
    p.add_argument("--max-pixels", type=int_range(0), default=None, metavar="N",
                   help="skip images whose header claims more than N pixels, a guard against decompression bombs "
                        f"(default: ${MAX_PIXELS_ENV} or Pillow's limit, {DEFAULT_MAX_PIXELS:,}; 0: no limit)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the table")
    return p


# ---------------------------------------------------------------------------------------------
# images


def to_rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """float ``(H, W, C)`` in [0, 1], C = 1..4 -> uint8 ``(H, W, 3)``: grey repeated, alpha dropped."""
    rgb = pixels[..., :3] if pixels.shape[2] >= 3 else np.repeat(pixels[..., :1], 3, axis=2)
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def _to_tensor(img_u8):
    return torch.from_numpy(img_u8.astype(np.float32)).permute(2, 0, 1)[None] / 255


def _to_uint8(t):
    return t[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _list_images(folder, what):
    if not os.path.isdir(folder):
        raise UsageError(f"{what}: {folder!r} is not a folder")
    files = sorted(f for f in os.listdir(folder) if is_image_file(f) and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise UsageError(f"{what}: no image files in {folder!r}")
    return [os.path.join(folder, f) for f in files]


def _lr_index(folder, scale):
    """stem -> path of the LR images, under their own stem and with x<scale> suffixes removed."""
    index = {}
    for path in _list_images(folder, "--data-lr"):
        stem = os.path.splitext(os.path.basename(path))[0]
        index.setdefault(stem, path)
        for suffix in (f"x{scale}", f"_x{scale}", f"_X{scale}", f"X{scale}", "_LR", "_lr"):
            if stem.endswith(suffix) and len(stem) > len(suffix):
                index.setdefault(stem[: -len(suffix)], path)
    return index


def measure(sr, hr, convention, scale):
    """``{"psnr", "ssim", "rmse", "niqe"}`` of uint8 RGB arrays under a convention of :data:`CONVENTIONS`.

    NIQE is of ``sr`` alone (NaN when it is smaller than two 96x96 blocks after the crop).
    """
    conv = CONVENTIONS[convention]
    crop = scale if conv["crop"] == "scale" else conv["crop"]
    kw = {"crop_border": crop, "y_channel": conv["y_channel"]}
    return {"psnr": psnr(sr, hr, **kw), "ssim": ssim(sr, hr, window=conv["window"], **kw), "rmse": rmse(sr, hr, **kw),
            "niqe": _niqe_or_nan(sr, crop)}


def _niqe_or_nan(img, crop):
    h, w = img.shape[0] - 2 * crop, img.shape[1] - 2 * crop
    if min(h, w) < NIQE_BLOCK or (h // NIQE_BLOCK) * (w // NIQE_BLOCK) < 2:
        return math.nan  # too small for NIQE's Gaussian fit: the table shows "-"
    return niqe(img, crop_border=crop)


def evaluate_images(generator, images, *, scale, lr_images=None, convention="standard", tile=0,
                    tile_pad=DEFAULT_TILE_PAD, save_dir=None, log=None, ma_score=None):
    """Measure ``generator`` on HR images.

    Args:
        generator: ``nn.Module`` mapping ``(1, 3, h, w)`` in [0, 1] to ``(1, 3, scale·h, scale·w)``.
        images: iterable of ``(name, hr)``; hr a uint8 ``(H, W, 3)`` array, or a callable returning
            one (read lazily, so a bad file fails alone).
        scale: upscaling factor of the generator.
        lr_images: optional ``{name: lr or callable}`` of paired LR images; else LR = bicubic(HR).
        convention: a key of :data:`CONVENTIONS`.
        tile, tile_pad: passed to :func:`mesrgan.inference.upscale_tensor`.
        save_dir: write ``<name>.png`` SR images there when given.
        log: optional ``callable(str)`` for progress lines.
        ma_score: optional ``callable(uint8 image) -> float``, Ma et al.'s score (:func:`mesrgan.metrics.pi.ma_scorer`);
            when given, ``"ma"`` and ``"pi"`` are added to the SR and bicubic metrics.

    Returns:
        ``(rows, failures)``: rows are dicts ``{"name", "size": [W, H], "sr": {...}, "bicubic": {...},
        "seconds"}``; failures are ``(name, message)`` pairs.
    """
    rows, failures = [], []
    images = list(images)
    for i, (name, hr) in enumerate(images, 1):
        t0 = time.perf_counter()
        try:
            hr = hr() if callable(hr) else hr
            h, w = (hr.shape[0] // scale) * scale, (hr.shape[1] // scale) * scale
            if h == 0 or w == 0:
                raise ValueError(f"image of {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}")
            hr = hr[:h, :w]
            if lr_images is not None:
                if name not in lr_images:
                    raise ValueError("no paired LR image of that name in --data-lr")
                lr_u8 = lr_images[name]
                lr_u8 = lr_u8() if callable(lr_u8) else lr_u8
                lh, lw = lr_u8.shape[:2]
                if lh * scale > hr.shape[0] or lw * scale > hr.shape[1] or \
                        hr.shape[0] - lh * scale >= scale or hr.shape[1] - lw * scale >= scale:
                    raise ValueError(f"paired LR is {lw}x{lh}: x{scale} does not give the HR size "
                                     f"{hr.shape[1]}x{hr.shape[0]}")
                hr = hr[:lh * scale, :lw * scale]
            else:
                # the LR a dataset would store: bicubic downscaling rounded to 8 bits
                lr_u8 = _to_uint8(imresize(_to_tensor(hr), 1 / scale))
            lr = _to_tensor(lr_u8)
            sr_u8 = _to_uint8(upscale_tensor(generator, lr, tile=tile, tile_pad=tile_pad))
            if sr_u8.shape != hr.shape:
                raise RuntimeError(f"the generator made {sr_u8.shape[1]}x{sr_u8.shape[0]} from "
                                   f"{lr_u8.shape[1]}x{lr_u8.shape[0]}; expected {hr.shape[1]}x{hr.shape[0]}")
            bic_u8 = _to_uint8(imresize(lr, scale))
            row = {"name": name, "size": [int(hr.shape[1]), int(hr.shape[0])],
                   "sr": measure(sr_u8, hr, convention, scale), "bicubic": measure(bic_u8, hr, convention, scale)}
            if ma_score is not None:
                for key, img in (("sr", sr_u8), ("bicubic", bic_u8)):
                    row[key]["ma"] = ma_score(img)
                    row[key]["pi"] = perceptual_index(row[key]["ma"], row[key]["niqe"])
            if save_dir is not None:
                write_image(os.path.join(save_dir, f"{name}.png"), sr_u8.astype(np.float32) / 255)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            if log:
                log(f"[{i}/{len(images)}] {name}: PSNR {row['sr']['psnr']:.2f} dB "
                    f"(bicubic {row['bicubic']['psnr']:.2f}), {row['seconds']:.1f} s")
        except (ImageReadError, ValueError, RuntimeError, OSError, MemoryError) as e:
            failures.append((name, str(e)))
            if log:
                log(f"[{i}/{len(images)}] {name}: error: {e}")
    return rows, failures


def mean_of(rows, key):
    """Mean of each metric over rows (PSNR of identical images is inf and makes the mean inf; one image
    without NIQE makes the mean NIQE NaN)."""
    return {m: float(np.mean([r[key][m] for r in rows])) for m in rows[0][key]}


def format_table(rows, title, convention_text, pi_line=None):
    name_w = max([len("image"), len("mean")] + [len(r["name"]) for r in rows])
    size_w = max([len("size")] + [len(f"{r['size'][0]}x{r['size'][1]}") for r in rows])

    def cells(m):
        p = "inf" if math.isinf(m["psnr"]) else f"{m['psnr']:.2f}"
        q = "-" if math.isnan(m["niqe"]) else f"{m['niqe']:.3f}"
        return f"{p:>7} {m['ssim']:>7.4f} {m['rmse']:>7.2f} {q:>7}"

    head = f"{'':<{name_w}}  {'':<{size_w}} | {'SR':^31} | {'bicubic':^31}"
    cols = f"{'image':<{name_w}}  {'size':<{size_w}} | {'PSNR':>7} {'SSIM':>7} {'RMSE':>7} {'NIQE':>7} | " \
           f"{'PSNR':>7} {'SSIM':>7} {'RMSE':>7} {'NIQE':>7}"
    rule = "-" * len(cols)
    lines = [title, f"metrics: {convention_text}", "", head, cols, rule]
    for r in rows:
        size = f"{r['size'][0]}x{r['size'][1]}"
        lines.append(f"{r['name']:<{name_w}}  {size:<{size_w}} | {cells(r['sr'])} | {cells(r['bicubic'])}")
    lines.append(rule)
    if rows:
        lines.append(f"{'mean':<{name_w}}  {'':<{size_w}} | {cells(mean_of(rows, 'sr'))} | "
                     f"{cells(mean_of(rows, 'bicubic'))}")
    lines.append("NIQE: no reference, lower is better (Mittal et al. 2013, the authors' pristine model)")
    if pi_line:
        lines.append(pi_line)
    return "\n".join(line.rstrip() for line in lines)


def _pi_line(rows, ma_missing):
    """One line: PI's means, or why PI is missing."""
    if ma_missing is not None or not rows:
        return ma_missing
    sr, bic = mean_of(rows, "sr"), mean_of(rows, "bicubic")
    return (f"PI = ((10 - Ma) + NIQE) / 2, Ma from pyiqa's NRQM: SR {sr['pi']:.3f} (Ma {sr['ma']:.3f}), "
            f"bicubic {bic['pi']:.3f} (Ma {bic['ma']:.3f})")


# ---------------------------------------------------------------------------------------------
# command line


def _hr_reader(path, max_pixels):
    return lambda: to_rgb_uint8(read_image(path, max_pixels=max_pixels).pixels)


def run(args):
    # output locations first, creating nothing: a bad one must not cost the whole evaluation
    if args.save_dir is not None:
        check_dir(args.save_dir, "--save-dir")
    if args.json is not None:
        check_file(args.json, "--json")
    device = resolve_device(args.device)
    given = args.weights
    args.weights = weights_file(given)  # a run folder stands for its best generator, a name for a shipped model
    generator, info, scale = load_checkpoint(args.weights, args.model, device, args.scale)
    check_finite_weights(generator, "--weights", args.weights)
    generator = generator.to(dtype=resolve_dtype(args.dtype, device))
    stems = {}  # image name -> file stem, where they differ (same-stem files get longer, distinct names)
    if args.data is not None:
        paths = _list_images(args.data, "--data")
        names = output_stems(paths)
        stems = {names[p]: os.path.splitext(os.path.basename(p))[0] for p in paths}
        images = [(names[p], _hr_reader(p, args.max_pixels)) for p in paths]
        source = args.data
    else:
        try:
            images = bundled_images("val")
        except RuntimeError as e:
            raise UsageError(f"no --data given and the bundled images are unavailable: {e}") from e
        source = "the bundled held-out images"
    lr_images = None
    if args.lr_data is not None:
        lr_images = {k: _hr_reader(p, args.max_pixels) for k, p in _lr_index(args.lr_data, scale).items()}
        lr_images.update({name: lr_images[stem] for name, stem in stems.items() if stem in lr_images})
    if args.save_dir is not None:
        prepare_dir(args.save_dir, "--save-dir")
    if args.json is not None:
        prepare_file(args.json, "--json")

    def log(msg):
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    label = weights_label(given, args.weights)
    log(f"model: {info['model']} x{scale} from {label} on {device} ({args.dtype}); {len(images)} images "
        f"from {source}")
    ma_score, ma_missing = ma_scorer(device)
    rows, failures = evaluate_images(generator, images, scale=scale, lr_images=lr_images, convention=args.metrics,
                                     tile=args.tile, tile_pad=args.tile_pad, save_dir=args.save_dir, log=log,
                                     ma_score=ma_score)
    conv = CONVENTIONS[args.metrics]
    text = conv["text"].format(crop=scale)
    title = f"{info['model']} x{scale} ({label}) on {len(rows)} image{'s' if len(rows) != 1 else ''} " \
            f"from {source}; LR = {'--data-lr' if lr_images is not None else 'bicubic(HR)'}"
    print(format_table(rows, title, text, _pi_line(rows, ma_missing)))
    if failures:
        print(f"\n{len(failures)} image(s) failed:", file=sys.stderr)
        for name, msg in failures:
            print(f"  {name}: {msg}", file=sys.stderr)
    if args.json:
        report = {
            "weights": args.weights, "model": info["model"], "config": info["config"], "scale": scale,
            "data": source, "lr": "paired" if lr_images is not None else "bicubic",
            "convention": {"name": args.metrics, "description": text,
                           "y_channel": conv["y_channel"], "crop_border": scale if conv["crop"] == "scale" else 0,
                           "ssim_window": conv["window"]},
            "images": rows,
            "mean": {"sr": mean_of(rows, "sr"), "bicubic": mean_of(rows, "bicubic")} if rows else None,
            "pi_missing": ma_missing,
            "failures": [{"name": n, "error": m} for n, m in failures],
        }
        try:
            # inf (identical images) is not JSON: write it as null
            write_text_atomic(args.json, json.dumps(_finite(report), indent=2))
        except OSError as e:
            print(f"error: --json {args.json}: cannot write the report ({e.strerror or e}); the table above "
                  "holds the numbers", file=sys.stderr)
            return 1
    return 1 if failures or not rows else 0


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None):
    return run_program(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
