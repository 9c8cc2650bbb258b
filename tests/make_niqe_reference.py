"""Makes the NIQE reference values of tests/test_niqe.py with an independent implementation.

The reference is BasicSR 1.4.2's NIQE (PyPI sdist), run in a separate virtual environment that
does not have mesrgan installed. Only BasicSR's metric files are loaded (its package ``__init__``
pulls in training code and torchvision that the metric does not need).

Precision and MATLAB's steps: BasicSR's ``calculate_niqe`` casts the image to float32, and its
``imresize`` works in float32, where the authors' MATLAB code works in double. Its luma is also
rounded half to even, in float32, where MATLAB rounds half away from zero: bicubic images have
pixels whose Y is exactly x.5 (R, G, B = 231, 209, 182 gives 198.5). So the reference runs
BasicSR's NIQE, ``niqe()``, in float64, with ``.float()`` and ``torch.FloatTensor`` in its
``matlab_functions.py`` read as their float64 counterparts, on the one channel that MATLAB's
``niqe`` is given: the luma of ``rgb2ycbcr`` (or ``rgb2gray``) of the uint8 image, computed here
from MATLAB's coefficients and rounded half away from zero (see :func:`matlab_luma`).

One line is inserted into BasicSR's ``niqe()`` for that run (:func:`constant_neighbourhoods`): a
pixel whose 7x7 neighbourhood is one value gets the MSCN coefficient exactly 0. In float64 the
local mean there is off by ~1e-14 (the window's weights do not sum to exactly 1), and the sign of
that residue counts the pixel on one side of the AGGD fits: on the Set14 image baboon this alone
moved NIQE from MATLAB R2021a's 5.72957338 to 5.7299602 (13 flat pixels). With the exact 0 the
float64 run gives 5.7295739 there. BasicSR's float32 run as shipped gets the exact 0 by accident
(its float32 local mean rounds to the pixel's value) and lands at 5.7295726.
BasicSR's ``calculate_niqe`` as shipped, given BGR, is printed beside each value as a comment.

Exact commands (run from the repository root):

    python3.11 -m venv /work/refvenv
    /work/refvenv/bin/pip install numpy==2.4.6 scipy==1.17.1 opencv-python-headless==5.1.0.95 torch==2.14.1
    /work/refvenv/bin/pip download basicsr==1.4.2 --no-deps -d /tmp/bsr && tar xzf /tmp/bsr/basicsr-1.4.2.tar.gz -C /tmp/bsr
    /work/refvenv/bin/python tests/make_niqe_reference.py --basicsr /tmp/bsr/basicsr-1.4.2 \\
        --images "$(python -c 'from mesrgan.data.bundled import bundled_data_dir; print(bundled_data_dir())')"

It prints the ``REFERENCE`` dict that tests/test_niqe.py holds. The test builds the same inputs
with :func:`make_input` below (PNG photographs bundled with scikit-image, crops of them, and
bicubic x4 down-up copies made with the repository's MATLAB-style ``imresize`` in float64), so the
two sides measure identical pixels. BasicSR gets BGR, as it expects.
"""
from __future__ import annotations

import argparse
import os
import sys
import types

import numpy as np

# name -> (file in skimage/data, (row0, row1, col0, col1) crop or None, down-up scale or 0,
#          convert, crop_border). Lossless PNGs only, so that every decoder gives the same pixels.
CASES = {
    "astronaut_288x384": ("astronaut.png", (0, 288, 96, 480), 0, "y", 0),
    "coffee_full": ("coffee.png", None, 0, "y", 0),
    "chelsea_full": ("chelsea.png", None, 0, "y", 0),
    "chelsea_full_gray": ("chelsea.png", None, 0, "gray", 0),
    "chelsea_full_border4": ("chelsea.png", None, 0, "y", 4),
    "motorcycle_200x300": ("motorcycle_left.png", (0, 200, 0, 300), 0, "y", 0),
    "astronaut_hr_384": ("astronaut.png", (0, 384, 64, 448), 0, "y", 0),
    "astronaut_bicubic_x4_384": ("astronaut.png", (0, 384, 64, 448), 4, "y", 0),
    "astronaut_hr_288x384": ("astronaut.png", (192, 480, 32, 416), 0, "y", 0),
    "astronaut_bicubic_x4_288x384": ("astronaut.png", (192, 480, 32, 416), 4, "y", 0),
    "chelsea_hr_288x384": ("chelsea.png", (0, 288, 40, 424), 0, "y", 0),
    "chelsea_bicubic_x4_288x384": ("chelsea.png", (0, 288, 40, 424), 4, "y", 0),
    "coffee_hr_288x384": ("coffee.png", (100, 388, 100, 484), 0, "y", 0),
    "coffee_bicubic_x4_288x384": ("coffee.png", (100, 388, 100, 484), 4, "y", 0),
}

# MATLAB's rgb2gray, written out here independently of mesrgan/metrics/_color.py
_MATLAB_GRAY = np.linalg.inv(np.array([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]]))[0]


def matlab_luma(rgb, convert):
    """uint8 RGB -> the rounded one channel MATLAB's niqe sees: rgb2ycbcr's Y or rgb2gray, float64.

    Rounded half away from zero, as MATLAB rounds. Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255
    is rounded in exact integer arithmetic (1000 * 255 * Y is an integer), so that its exact ties,
    such as 198.5 for (231, 209, 182), go up however a float computation would land on them.
    """
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    if convert == "y":
        y_times_255000 = 16 * 255_000 + 65_481 * r + 128_553 * g + 24_966 * b
        return ((y_times_255000 + 127_500) // 255_000).astype(np.float64)
    gray = _MATLAB_GRAY[0] * r + _MATLAB_GRAY[1] * g + _MATLAB_GRAY[2] * b
    return np.floor(gray + 0.5)


def _down_up(rgb, scale, imresize):
    import torch

    def resize_u8(a, factor):
        t = torch.from_numpy(a.astype(np.float64)).permute(2, 0, 1)[None]
        return imresize(t, factor)[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)

    return resize_u8(resize_u8(rgb, 1 / scale), scale)


def make_input(name, images_dir, read_rgb, imresize):
    """The uint8 RGB image of case ``name``; ``read_rgb(path)`` decodes a PNG to (H, W, 3) RGB."""
    file, box, scale, _, _ = CASES[name]
    rgb = read_rgb(os.path.join(images_dir, file))
    if box is not None:
        r0, r1, c0, c1 = box
        rgb = rgb[r0:r1, c0:c1]
    if scale:
        rgb = _down_up(np.ascontiguousarray(rgb), scale, imresize)
    return np.ascontiguousarray(rgb)


def _load(name, path, replace=()):
    """Import the file ``path`` as module ``name``, with the textual replacements ``replace``."""
    with open(path) as f:
        source = f.read()
    for old, new in replace:
        if old not in source:
            raise RuntimeError(f"{path}: {old!r} not found; this script is written for basicsr 1.4.2")
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = path
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)
    return module


def load_basicsr(root, float64):
    """BasicSR's niqe module from an unpacked sdist, without its package __init__ files."""
    pkg = os.path.join(root, "basicsr")
    for name in ("basicsr", "basicsr.utils", "basicsr.metrics"):
        module = types.ModuleType(name)
        module.__path__ = []
        sys.modules[name] = module
    color = _load("basicsr.utils.color_util", os.path.join(pkg, "utils", "color_util.py"))
    sys.modules["basicsr.utils"].bgr2ycbcr = color.bgr2ycbcr
    to64 = ((".float()", ".double()"), ("torch.FloatTensor(", "torch.DoubleTensor(")) if float64 else ()
    _load("basicsr.utils.matlab_functions", os.path.join(pkg, "utils", "matlab_functions.py"), to64)
    _load("basicsr.utils.registry", os.path.join(pkg, "utils", "registry.py"))
    _load("basicsr.metrics.metric_util", os.path.join(pkg, "metrics", "metric_util.py"))
    if not float64:
        return _load("basicsr.metrics.niqe", os.path.join(pkg, "metrics", "niqe.py"))
    flat_zero = (("img_nomalized = (img - mu) / (sigma + 1)",
                  "img_nomalized = (img - mu) / (sigma + 1)\n"
                  "        img_nomalized[_constant_neighbourhoods(img)] = 0  # inserted: MATLAB's exact 0"),)
    module = _load("basicsr.metrics.niqe", os.path.join(pkg, "metrics", "niqe.py"), flat_zero)
    module._constant_neighbourhoods = constant_neighbourhoods
    return module


def constant_neighbourhoods(img, size=7):
    """Mask of the pixels whose ``size`` x ``size`` neighbourhood (edges replicated) is one value.

    MATLAB's MSCN coefficient there is exactly 0. Computed in float64, ``img - mu`` is a residue of
    ~1e-14 instead (the 49 window weights do not sum to exactly 1), and its sign counts the pixel
    on one side of the AGGD fits.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    return maximum_filter(img, size, mode="nearest") == minimum_filter(img, size, mode="nearest")


def niqe_float64(bsr, luma, crop_border):
    """BasicSR's niqe() in float64 on one channel ``(H, W)`` of integer levels, after ``crop_border``."""
    import torch

    params = np.load(os.path.join(os.path.dirname(bsr.__file__), "niqe_pris_params.npz"))
    if crop_border != 0:
        luma = luma[crop_border:-crop_border, crop_border:-crop_border]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the linspace of its resize weights
    try:
        return bsr.niqe(luma.astype(np.float64), params["mu_pris_param"], params["cov_pris_param"],
                        params["gaussian_window"])
    finally:
        torch.set_default_dtype(old)


def main():
    import cv2

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--basicsr", required=True, help="unpacked basicsr-1.4.2 sdist")
    p.add_argument("--images", required=True, help="scikit-image's data folder")
    args = p.parse_args()
    shipped = load_basicsr(args.basicsr, float64=False).calculate_niqe
    bsr64 = load_basicsr(args.basicsr, float64=True)
    here = os.path.dirname(os.path.abspath(__file__))
    imresize = _load("repo_resize", os.path.join(here, "..", "mesrgan", "data", "resize.py")).imresize

    def read_rgb(path):
        return cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]

    print("REFERENCE = {")
    for name, (_, _, _, convert, border) in CASES.items():
        rgb = make_input(name, args.images, read_rgb, imresize)
        value = niqe_float64(bsr64, matlab_luma(rgb, convert), border)
        if convert == "gray":  # BasicSR's own "gray" is OpenCV's 0.299 / 0.587 / 0.114: give it MATLAB's
            as_shipped = shipped(matlab_luma(rgb, "gray"), border, input_order="HW")
        else:
            as_shipped = shipped(np.ascontiguousarray(rgb[..., ::-1]), border, input_order="HWC", convert_to="y")
        print(f"    {name!r}: {value!r},  # calculate_niqe as shipped (float32): {as_shipped:.6f}")
    print("}")


if __name__ == "__main__":
    main()
