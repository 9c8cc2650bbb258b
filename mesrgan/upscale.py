"""Upscale images with a trained generator.

    python -m mesrgan.upscale INPUT... -o OUTPUT [--weights CKPT|NAME] [--model NAME] [--scale S]
                              [--tile N] [--tile-pad P] [--half | --dtype DTYPE] [--device DEV]
                              [--max-pixels N]

INPUT: image files and/or folders (their images, not recursive). OUTPUT: a folder (created), or a
file name when there is exactly one input file. Each output keeps its input's format where the
format can hold the result (PNG, JPEG, WebP, BMP, TIFF, PPM; others become PNG), its channels
(grey stays grey, alpha is upscaled with bicubic resampling) and its bit depth (16-bit PNG stays
16-bit). Large images go through the model in overlapping tiles (``--tile``), so memory does not
grow with the image, and each tile goes straight into the 8- or 16-bit result, so the memory used
is about the output image plus a few tiles. An input whose header claims more than ``--max-pixels``
pixels is skipped unread (a guard against decompression bombs). The output location is checked
before anything is loaded. A file that fails is reported and skipped, and every failure is listed
at the end; the exit status is 1 when any failed, 2 for a bad command line or checkpoint.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from .cli import (DTYPES, DTYPE_HELP, UsageError, check_dir, check_file, check_finite_weights, int_range,
                  load_checkpoint, output_stems, prepare_dir, prepare_file, resolve_device, resolve_dtype,
                  return_freed_memory, run_program, weights_file, weights_label)
from .models.pretrained import DEFAULT_PRETRAINED
from .io.images import (DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageReadError, is_image_file, read_image_samples,
                      write_image)
from .inference import upscale_tensor  # noqa: F401  (re-exported: mesrgan.upscale.upscale_tensor)
from .inference import DEFAULT_MAX_MEMORY, DEFAULT_TILE_PAD, tile_for_budget, upscale_pixels

__all__ = ["main", "upscale_tensor", "upscale_pixels"]

# formats written as they were read; anything else (GIF, TGA, ...) is written as PNG
_KEEP_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "PPM": ".ppm"}


def build_parser():
    p = argparse.ArgumentParser(allow_abbrev=False,
        prog="python -m mesrgan.upscale",
        description="Upscale images (files or folders) with a SRGAN / ESRGAN / MESRGAN generator.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (created if needed), or an output file name for a single input file. "
                        "Outputs are named <stem>_x<scale>.<ext>; inputs that share a stem get longer names "
                        "(a_jpg_x4.png, a_png_x4.png). An existing output of the same name is replaced, whole "
                        "(written to a temporary file, then renamed), and the progress line says so")
    p.add_argument("--weights", default=None, metavar="CKPT",
                   help=f"generator: the name of a model shipped with mesrgan (default: {DEFAULT_PRETRAINED}, "
                        "a x4 MESRGAN-lite, see docs/models/), a checkpoint (ours: last.pt, best.pt, a generator "
                        ".pt; a bare state dict; published ESRGAN RRDBNet weights), or a training run folder (its "
                        "best.pt, else stage1_best.pt, else last.pt)")
    p.add_argument("--model", default=None, help="preset name, needed only when the checkpoint does not say "
                   "(srgan, esrgan, mesrgan, esrgan-paper, mesrgan-paper)")
    p.add_argument("--scale", type=int, choices=(1, 2, 4), default=None,
                   help="expected upscaling factor; an error if the checkpoint's differs (default: the checkpoint's)")
    p.add_argument("--tile", type=int_range(1, zero_ok=True), default=None,
                   help="tile size in input pixels; 0 processes each image whole (default: the largest tile "
                        "that keeps the image within --max-memory)")
    p.add_argument("--max-memory", type=int_range(100), default=DEFAULT_MAX_MEMORY // 10**6, metavar="MB",
                   help="memory budget of one image in MB, beyond what torch and the model take before it: "
                        "the input's samples, the result (1 byte per sample, 2 for 16-bit; a 9600x6400 RGB "
                        "output is 184 MB), the writer's copy (4 bytes per output pixel) and one tile's "
                        "activations, estimated per model from a traced probe (ESRGAN's RRDBNet x4: about "
                        "1.3 x 16 KB per padded input pixel + 64 MB). The default tile is the largest that fits "
                        "(at least 32); an image whose result alone exceeds the budget runs in 32-pixel tiles "
                        "and goes over it by that much. Whole runs were measured within the budget from about "
                        "600 MB up, and up to 43%% over it below (docs/evaluation.md). Ignored when --tile is "
                        f"given (default {DEFAULT_MAX_MEMORY // 10**6})")
    p.add_argument("--tile-pad", type=int_range(0, 1024), default=DEFAULT_TILE_PAD,
                   help=f"context pixels around each tile, cropped after upscaling, 0..1024 (default {DEFAULT_TILE_PAD})")
    prec = p.add_mutually_exclusive_group()
    prec.add_argument("--half", action="store_true", help="float16 inference (CUDA only); same as --dtype float16")
    prec.add_argument("--dtype", choices=sorted(DTYPES), default=None, help=DTYPE_HELP)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (CUDA when available; default)")
    p.add_argument("--suffix", default=None,
                   help="added to each output file name before the extension (default _x<scale>; '' for none)")
    p.add_argument("--format", dest="out_format", default="auto",
                   choices=["auto", "png", "jpg", "webp", "bmp", "tif"],
                   help="output format (default auto: the input's own; GIF, TGA and other formats become PNG)")
    p.add_argument("--quality", type=int_range(1, 100), default=95, help="JPEG / WebP quality, 1..100 (default 95)")
    p.add_argument("--max-pixels", type=int_range(0), default=None, metavar="N",
                   help="skip inputs whose header claims more than N pixels, a guard against decompression bombs "
                        f"(default: ${MAX_PIXELS_ENV} or Pillow's limit, {DEFAULT_MAX_PIXELS:,}; 0: no limit)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors and the final summary")
    return p


def _resolve_dtype(args, device):
    if args.half:
        return resolve_dtype("float16", device, flag="--half")
    return resolve_dtype(args.dtype, device, flag=f"--dtype {args.dtype}")


def _collect_inputs(inputs):
    """``[(path, error or None)]``: files as given, the images of folders (sorted)."""
    found = []
    for item in inputs:
        if os.path.isdir(item):
            files = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if is_image_file(f) and os.path.isfile(os.path.join(item, f)))
            if not files:
                found.append((item, "folder holds no image files"))
            found.extend((f, None) for f in files)
        else:
            found.append((item, None))
    return found


def _output_path(src, stem, fmt, bit_depth, channels, args, scale, single_file_output):
    if single_file_output:
        return args.output
    suffix = f"_x{scale}" if args.suffix is None else args.suffix
    if args.out_format != "auto":
        ext = "." + args.out_format
    elif bit_depth == 16:
        ext = ".png"  # the 16-bit writer is PNG-only
    else:
        ext = _KEEP_FORMATS.get(fmt, ".png")
        src_ext = os.path.splitext(src)[1].lower()
        if ext in (".jpg", ".tif") and src_ext in (".jpeg", ".jpg", ".tif", ".tiff"):
            ext = src_ext  # keep the spelling of the input
    if ext in (".jpg", ".jpeg") and channels in (2, 4):
        ext = ".png"  # JPEG has no alpha
    return os.path.join(args.output, stem + suffix + ext)


def _log(args, msg):
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def _check_output(args, jobs):
    """Whether -o names one output file; a location that cannot be written is refused here, before
    any work (nothing is created yet: a bad checkpoint must leave no empty folder behind)."""
    single_file_output = (len(jobs) == 1 and not os.path.isdir(args.inputs[0]) and is_image_file(args.output)
                          and not os.path.isdir(args.output))
    if not single_file_output and is_image_file(args.output) and not os.path.isdir(args.output):
        raise UsageError(f"-o {args.output}: a file name needs exactly one input file; got {len(jobs)} inputs "
                         "(pass a folder to -o)")
    (check_file if single_file_output else check_dir)(args.output, "-o")
    return single_file_output


def _upscale_one(src, stem, generator, args, scale, single_file_output, produced, progress):
    """Read, upscale and write one image (replacing an earlier file of that name whole: see
    :func:`mesrgan.io.images.write_image`); returns ``(dst, (w, h), (W, H), replaced)``."""
    # the stored samples, not float pixels: a float copy of a big input is 4x its 8-bit size
    samples, in_depth, fmt = read_image_samples(src, max_pixels=args.max_pixels)
    h, w, channels = samples.shape
    dst = _output_path(src, stem, fmt, in_depth, channels, args, scale, single_file_output)
    if os.path.abspath(dst) == os.path.abspath(src):
        raise ValueError(f"output {dst} would overwrite its input; choose another -o or --suffix")
    if os.path.abspath(dst) in produced:
        raise ValueError(f"output {dst} was already written for {produced[os.path.abspath(dst)]} "
                         "(same file name in two input folders)")
    # 16 bits only where the writer can store them (PNG); other formats get 8
    bit_depth = in_depth if dst.lower().endswith(".png") else 8
    try:
        tile = args.tile
        if tile is None:  # the largest that keeps this image within --max-memory
            tile = tile_for_budget(generator, args.max_memory * 10**6, image_shape=samples.shape,
                                   scale=scale or 4, tile_pad=args.tile_pad, bit_depth=bit_depth,
                                   input_bytes=samples.itemsize)
        sr = upscale_pixels(generator, samples, tile=tile, tile_pad=args.tile_pad, progress=progress,
                            bit_depth=bit_depth)
    except torch.OutOfMemoryError as e:
        raise RuntimeError(f"out of memory on {_device_of(generator)}; try a smaller --tile or --max-memory "
                           f"(now tile {tile})") from e
    del samples
    replaced = os.path.exists(dst)
    write_image(dst, sr, bit_depth=bit_depth, quality=args.quality)
    produced[os.path.abspath(dst)] = src
    return dst, (w, h), (sr.shape[1], sr.shape[0]), replaced


def _device_of(generator):
    p = next(iter(generator.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def run(args):
    """Returns the exit status."""
    device = resolve_device(args.device)
    dtype = _resolve_dtype(args, device)
    return_freed_memory()  # each tile's activations go back to the OS, so the budget holds across tiles
    jobs = _collect_inputs(args.inputs)
    single_file_output = _check_output(args, jobs)
    defaulted = args.weights is None
    if defaulted and args.scale not in (None, 4):
        raise UsageError(f"--scale {args.scale}: the model used without --weights ({DEFAULT_PRETRAINED}) is x4; "
                         f"pass --weights with a x{args.scale} generator")
    given = DEFAULT_PRETRAINED if defaulted else args.weights
    args.weights = weights_file(given)  # a run folder stands for its best generator, a name for a shipped model
    generator, info, _ = load_checkpoint(args.weights, args.model, device, args.scale)
    check_finite_weights(generator, "--weights", args.weights)
    source = (f"{given} (shipped with mesrgan; the default without --weights)" if defaulted
              else weights_label(given, args.weights))
    generator = generator.to(dtype=dtype)
    (prepare_file if single_file_output else prepare_dir)(args.output, "-o")
    scale = info["config"].get("scale", args.scale)
    _log(args, f"model: {info['model']} x{scale} from {source} on {device} ({str(dtype).replace('torch.', '')})"
               f", tile {'off' if args.tile == 0 else args.tile or f'auto (--max-memory {args.max_memory} MB)'}"
               f", tile pad {args.tile_pad}")
    if args.tile is not None and 0 < args.tile < 32:
        calls = ((512 + args.tile - 1) // args.tile) ** 2
        _log(args, f"warning: --tile {args.tile} runs the network once per {args.tile}x{args.tile} tile, each with "
                   f"{args.tile_pad} pixels of context around it: slow ({calls:,} calls for a 512x512 image); "
                   "0 (whole images) or 128 and up is usual")
    interactive = sys.stderr.isatty() and not args.quiet
    failures, written, produced = [], [], {}
    stems = output_stems([src for src, error in jobs if not error])
    n = len(jobs)
    for i, (src, error) in enumerate(jobs, 1):
        t0 = time.perf_counter()

        def progress(done, total, i=i, src=src):
            if interactive and total > 1:
                print(f"\r[{i}/{n}] {src}: tile {done}/{total}", end="", file=sys.stderr, flush=True)

        try:
            if error:
                raise ImageReadError(f"{src}: {error}")
            dst, (w, h), (sw, sh), replaced = _upscale_one(src, stems.get(src), generator, args, scale,
                                                           single_file_output, produced, progress)
            if interactive:
                print("\r\033[K", end="", file=sys.stderr)  # clear the tile counter
            written.append(dst)
            _log(args, f"[{i}/{n}] {src} -> {dst} ({w}x{h} -> {sw}x{sh}, {time.perf_counter() - t0:.1f} s"
                       + (", replaced the earlier file)" if replaced else ")"))
        except (ImageReadError, ValueError, RuntimeError, OSError, MemoryError) as e:
            if interactive:
                print("\r\033[K", end="", file=sys.stderr)
            msg = str(e) if str(e).startswith(str(src)) else f"{src}: {e}"
            failures.append(msg)
            print(f"[{i}/{n}] error: {msg}", file=sys.stderr, flush=True)
    summary = f"upscaled {len(written)} of {n} image{'s' if n != 1 else ''}"
    if failures:
        summary += f"; {len(failures)} failed:\n" + "\n".join(f"  {m}" for m in failures)
    print(summary, file=sys.stderr)
    return 1 if failures else 0


def main(argv=None):
    return run_program(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
