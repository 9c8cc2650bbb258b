"""NIQE against MATLAB's value on baboon, against an independent implementation (BasicSR 1.4.2's
NIQE, adapted as tests/make_niqe_reference.py says) on bundled photographs, and its error cases."""
import hashlib
import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from mesrgan.data import bundled_images
from mesrgan.data.bundled import bundled_data_dir
from mesrgan.data.datasets import load_image
from mesrgan.data.resize import imresize
from mesrgan.metrics import niqe
from mesrgan.metrics.niqe import NIQE_BLOCK, _mscn, load_pristine_model, niqe_features

# Made by tests/make_niqe_reference.py: BasicSR 1.4.2's NIQE run in float64 (as MATLAB's double), with
# one line inserted that gives a pixel with a constant 7x7 neighbourhood the MSCN coefficient 0, as
# MATLAB's result shows (see that file's docstring). This run: numpy 2.4.6, torch 2.14.1 of the
# project venv, scipy 1.17.1 and opencv-python-headless 5.1.0.95 put on PYTHONPATH from a
# `pip install --target` folder (the script loads no mesrgan module, only the file
# mesrgan/data/resize.py for the bicubic inputs), BasicSR's sdist from `pip download`:
#   PYTHONPATH=<target> python tests/make_niqe_reference.py --basicsr <sdist>/basicsr-1.4.2 \
#       --images "$(python -c 'from mesrgan.data.bundled import bundled_data_dir; print(bundled_data_dir())')"
# Measured agreement ~1e-12 on every case. BasicSR's calculate_niqe as shipped (float32; the
# comments) differs from both by up to 0.003 on these images.
REFERENCE = {
    'astronaut_288x384': 4.130756471383883,  # calculate_niqe as shipped (float32): 4.130732
    'coffee_full': 4.115246737818802,  # calculate_niqe as shipped (float32): 4.115242
    'chelsea_full': 2.625526679667967,  # calculate_niqe as shipped (float32): 2.625524
    'chelsea_full_gray': 2.5720840430148244,  # calculate_niqe as shipped (float32): 2.572083
    'chelsea_full_border4': 2.6893130155950464,  # calculate_niqe as shipped (float32): 2.689313
    'motorcycle_200x300': 5.315789409951974,  # calculate_niqe as shipped (float32): 5.315967
    'astronaut_hr_384': 3.213513824960076,  # calculate_niqe as shipped (float32): 3.211340
    'astronaut_bicubic_x4_384': 7.456284597913168,  # calculate_niqe as shipped (float32): 7.459403
    'astronaut_hr_288x384': 3.0526166680864697,  # calculate_niqe as shipped (float32): 3.051831
    'astronaut_bicubic_x4_288x384': 7.510799169781422,  # calculate_niqe as shipped (float32): 7.509801
    'chelsea_hr_288x384': 2.5629357749708825,  # calculate_niqe as shipped (float32): 2.562938
    'chelsea_bicubic_x4_288x384': 7.8844342380844745,  # calculate_niqe as shipped (float32): 7.883959
    'coffee_hr_288x384': 5.715254159218189,  # calculate_niqe as shipped (float32): 5.715234
    'coffee_bicubic_x4_288x384': 7.688223741410904,  # calculate_niqe as shipped (float32): 7.687869
}

TOL = 1e-3

# MATLAB R2021a's NIQE (the authors' niqe_release, border 0, Y channel of rgb2ycbcr) on the Set14
# image baboon, as quoted by BasicSR 1.4.2 (calculate_niqe's docstring); see tests/data/niqe/README.md.
MATLAB_BABOON = 5.72957338
BABOON = os.path.join(os.path.dirname(__file__), "data", "niqe", "baboon.png")

_spec = importlib.util.spec_from_file_location(
    "make_niqe_reference", os.path.join(os.path.dirname(__file__), "make_niqe_reference.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def _rgb_u8(path):
    return load_image(path)  # Pillow, RGB uint8


def _case(name):
    return ref.make_input(name, bundled_data_dir(), _rgb_u8, imresize)


@pytest.fixture(scope="module")
def chelsea():
    return dict(bundled_images("val"))["chelsea"]


def test_reference_covers_every_case():
    assert set(REFERENCE) == set(ref.CASES)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_agrees_with_basicsr(name):
    _, _, _, convert, border = ref.CASES[name]
    value = niqe(_case(name), crop_border=border, convert=convert)
    assert isinstance(value, float)
    assert abs(value - REFERENCE[name]) < TOL, (name, value, REFERENCE[name])


def test_baboon_equals_matlab():
    # Measured: 5.7295738841, 5.0e-7 from MATLAB. Without the exact 0 on constant neighbourhoods
    # (13 pixels of one flat patch, level 98) it was 5.7299602, 3.9e-4 away.
    value = niqe(load_image(BABOON))
    assert abs(value - MATLAB_BABOON) < 1e-5, value


def test_constant_neighbourhoods_have_mscn_zero():
    # A textured image with a constant 24x24 patch: every pixel whose 7x7 neighbourhood lies in the
    # patch has the coefficient exactly 0, at both scales (at the half scale the patch becomes an
    # exactly constant region); no other pixel has.
    _, _, window = load_pristine_model()
    img = torch.from_numpy(_noise(96, 192, c=0).astype(np.float64))
    img[40:64, 80:104] = 98
    full = _mscn(img, window)
    inner = torch.zeros_like(img, dtype=torch.bool)
    inner[43:61, 83:101] = True
    assert (full[inner] == 0).all() and (full[~inner] != 0).all()
    half = imresize(img[None, None], 0.5)[0, 0]
    assert (half[22:30, 42:50] == 98).all()
    assert (_mscn(half, window)[25:27, 45:47] == 0).all()


def test_bicubic_down_up_scores_worse_than_its_hr():
    for name in ("astronaut_hr_384", "astronaut_hr_288x384", "chelsea_hr_288x384", "coffee_hr_288x384"):
        hr, bic = name, name.replace("_hr_", "_bicubic_x4_")
        assert niqe(_case(bic)) > niqe(_case(hr)) + 1.0


def test_float_tensor_batch_matches_uint8(chelsea):
    other = _case("astronaut_288x384")
    crop = chelsea[:288, :384]
    batch = torch.from_numpy(np.stack([crop, other]).astype(np.float32) / 255).permute(0, 3, 1, 2)
    values = niqe(batch)
    assert values.dtype == torch.float64 and values.shape == (2,) and values.device == batch.device
    assert values[0].item() == pytest.approx(niqe(crop), abs=1e-9)
    assert values[1].item() == pytest.approx(niqe(other), abs=1e-9)
    assert values[1].item() == pytest.approx(REFERENCE["astronaut_288x384"], abs=TOL)


def test_one_channel_input_is_the_rounded_luma(chelsea):
    # MATLAB rgb2ycbcr's Y, rounded: NIQE of the colour image is NIQE of that grey image
    y_u8 = ref.matlab_luma(chelsea, "y").astype(np.uint8)
    assert niqe(y_u8) == pytest.approx(niqe(chelsea), abs=1e-12)
    as_tensor = torch.from_numpy(y_u8.astype(np.float64) / 255)[None, None]
    assert niqe(as_tensor)[0].item() == pytest.approx(niqe(chelsea), abs=1e-9)
    # convert= does not apply to one channel
    assert niqe(y_u8, convert="gray") == niqe(y_u8)


def test_exact_luma_ties_round_up():
    # 65.481*231 + 128.553*209 + 24.966*182 = 46537.5 = 255 * 182.5: Y is exactly 198.5; MATLAB
    # rounds it to 199. A textured image with that colour in it must score as its rounded luma.
    img = _noise(96, 192)
    img[::3, ::2] = (231, 209, 182)
    luma = ref.matlab_luma(img, "y")
    assert (luma[::3, ::2] == 199).all()
    assert niqe(img) == pytest.approx(niqe(luma.astype(np.uint8)), abs=1e-12)


def test_remainder_beyond_whole_blocks_is_ignored(chelsea):
    # chelsea is 300x451: the measured part is the top-left 288x384
    assert niqe(chelsea) == pytest.approx(niqe(np.ascontiguousarray(chelsea[:288, :384])), abs=1e-12)


def test_features_of_a_textured_image(chelsea):
    y = torch.from_numpy(np.floor(chelsea[:192, :288, 1].astype(np.float64) + 0.5))
    feats = niqe_features(y)
    assert feats.shape == (6, 36) and feats.dtype == torch.float64
    shapes = feats[:, [0, 2, 6, 10, 14, 18, 20, 24, 28, 32]]
    # AGGD shapes lie on MATLAB's grid 0.2:0.001:10; the widths of real photographs are positive
    assert ((shapes >= 0.2) & (shapes <= 10)).all()
    assert torch.allclose(shapes * 1000, (shapes * 1000).round(), atol=1e-6)
    assert (feats[:, [1, 4, 5, 8, 9, 19, 22, 23]] > 0).all()


def test_constant_image_is_undefined():
    flat = np.full((192, 192, 3), 137, np.uint8)
    assert math.isnan(niqe(flat))


def test_shipped_parameters_are_the_authors():
    path = os.path.join(os.path.dirname(__import__("mesrgan").__file__), "metrics", "niqe_params", "niqe_pris_params.npz")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == "2a7c182a68c9e7f1b2e2e5ec723279d6f65d912b6fcaf37eb2bf03d7367c4296"


# ---- bad input ---------------------------------------------------------------------------------

def _noise(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w, c) if c else (h, w)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("h,w", [(95, 400), (400, 95), (96, 96), (96, 191), (191, 191)])
def test_smaller_than_two_blocks(h, w):
    with pytest.raises(ValueError, match=f"at least two {NIQE_BLOCK}x{NIQE_BLOCK} blocks.*got {h}x{w}"):
        niqe(_noise(h, w))


def test_two_blocks_are_enough():
    assert math.isfinite(niqe(_noise(96, 192)))
    assert math.isfinite(niqe(_noise(192, 96, c=0)))


def test_crop_border_can_leave_too_little():
    with pytest.raises(ValueError, match="got 190x190 .*after cropping 5 px from 200x200"):
        niqe(_noise(200, 200), crop_border=5)


@pytest.mark.parametrize("img,match", [
    (np.zeros((192, 192, 3), np.float32) + 0.5, "numpy images must be uint8.*float32"),
    (np.zeros((192, 192, 3), np.uint16) + 300, "numpy images must be uint8.*uint16"),
    (torch.full((1, 3, 192, 192), 100, dtype=torch.uint8), "tensors must be floating point.*torch.uint8"),
    ([[1, 2], [3, 4]], "uint8 numpy array or a float torch tensor, got list"),
])
def test_wrong_types(img, match):
    with pytest.raises(TypeError, match=match):
        niqe(img)


@pytest.mark.parametrize("img,match", [
    (_noise(192, 192, c=4), r"shape \(H, W, 3\) or \(H, W\), got \(192, 192, 4\)"),
    (torch.rand(3, 192, 192), r"\(N, 3, H, W\) or \(N, 1, H, W\), got \(3, 192, 192\)"),
    (torch.rand(1, 2, 192, 192), r"got \(1, 2, 192, 192\)"),
])
def test_wrong_shapes(img, match):
    with pytest.raises(ValueError, match=match):
        niqe(img)


def test_bad_arguments():
    img = _noise(192, 192)
    with pytest.raises(ValueError, match="convert must be one of \\('y', 'gray'\\), got 'rgb'"):
        niqe(img, convert="rgb")
    with pytest.raises(ValueError, match="crop_border must be >= 0, got -1"):
        niqe(img, crop_border=-1)
    with pytest.raises(TypeError, match="crop_border must be an int, got bool"):
        niqe(img, crop_border=True)
