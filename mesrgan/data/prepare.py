"""Cut large photographs into overlapping sub-images, once, before training.

    python -m mesrgan.data.prepare SRC DST [--size 480] [--step 240] [--min-size 128] [--workers N]

DIV2K images are 2K PNGs: decoding one costs ~100 ms, far more than a training step wants to
spend per 128x128 crop. Cutting them into 480x480 tiles with a 240 stride (the convention of
ESRGAN's and BasicSR's preparation scripts) makes each decode ~15x cheaper while every crop
position of the original is still reachable. Tiles keep the folder structure of SRC and are
named ``<stem>_s001.png``, ``<stem>_s002.png``, ... (lossless PNG). The strip left over at the
right/bottom edge gets one more full-size tile flush with the edge; images smaller than
``--min-size`` (the training crop) are skipped, as training would skip them.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

from PIL import Image

from ..io.atomic import atomic_path
from .datasets import find_images, load_image

__all__ = ["tile_positions", "cut_image", "prepare", "main"]


def tile_positions(length: int, size: int, step: int) -> list[int]:
    """Start offsets of tiles of ``size`` along one axis of ``length`` pixels."""
    if length <= size:
        return [0]
    pos = list(range(0, length - size + 1, step))
    if pos[-1] + size < length:
        # The strip left at the edge gets one more full-size tile, flush with the edge.
        pos.append(length - size)
    return pos


def cut_image(src_path: str, dst_dir: str, stem: str, size: int, step: int, min_size: int,
              compress_level: int = 1) -> int:
    """Write the tiles of one image; returns how many were written (0 if skipped)."""
    try:
        a = load_image(src_path)
    except Exception as e:  # noqa: BLE001 - any decoder failure means: skip this file
        warnings.warn(f"skipping unreadable image {src_path}: {e}")
        return 0
    h, w = a.shape[:2]
    if h < min_size or w < min_size:
        return 0
    os.makedirs(dst_dir, exist_ok=True)
    n = 0
    for y in tile_positions(h, size, step):
        for x in tile_positions(w, size, step):
            n += 1
            tile = a[y:y + size, x:x + size]
            with atomic_path(os.path.join(dst_dir, f"{stem}_s{n:03d}.png")) as tmp:
                Image.fromarray(tile).save(tmp, "PNG", compress_level=compress_level)
    return n


def _job(args):
    return cut_image(*args)


def prepare(src: str, dst: str, size: int = 480, step: int = 240, min_size: int = 128,
            workers: int = 0) -> tuple[int, int]:
    """Cut every image under ``src`` into tiles under ``dst``. Returns (images, tiles)."""
    if size < 1 or step < 1:
        raise ValueError(f"--size and --step must be positive, got size={size}, step={step}")
    paths = find_images(src)
    if not paths:
        raise FileNotFoundError(f"no images found under {src!r}")
    if os.path.abspath(dst).startswith(os.path.abspath(src) + os.sep):
        raise ValueError(f"DST {dst!r} must not be inside SRC {src!r}")
    jobs = []
    for p in paths:
        rel = os.path.relpath(p, src)
        jobs.append((p, os.path.join(dst, os.path.dirname(rel)), os.path.splitext(os.path.basename(rel))[0],
                     size, step, min_size))
    workers = workers or min(8, os.cpu_count() or 1)
    tiles = 0
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            for i, n in enumerate(ex.map(_job, jobs, chunksize=4), 1):
                tiles += n
                if i % 50 == 0 or i == len(jobs):
                    print(f"\r{i}/{len(jobs)} images, {tiles} tiles", end="", file=sys.stderr, flush=True)
    else:
        for i, j in enumerate(jobs, 1):
            tiles += _job(j)
            if i % 50 == 0 or i == len(jobs):
                print(f"\r{i}/{len(jobs)} images, {tiles} tiles", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return len(jobs), tiles


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m mesrgan.data.prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="folder of large images (searched recursively)")
    p.add_argument("dst", help="output folder for the tiles (created)")
    p.add_argument("--size", type=int, default=480, help="tile side in pixels (default 480)")
    p.add_argument("--step", type=int, default=240, help="stride between tiles (default 240)")
    p.add_argument("--min-size", type=int, default=128,
                   help="images smaller than this are skipped (default 128, the (M)ESRGAN crop)")
    p.add_argument("--workers", type=int, default=0, help="processes (default: up to 8 CPUs)")
    a = p.parse_args(argv)
    n, t = prepare(a.src, a.dst, a.size, a.step, a.min_size, a.workers)
    print(f"cut {n} images into {t} tiles of at most {a.size}x{a.size} in {a.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
