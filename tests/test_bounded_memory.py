"""Upscaling into 8- / 16-bit buffers tile by tile: the same samples as the float path, rounded
once, whatever the tiling; 16-bit PNGs written in bands decode to the same samples; tiles of
a pixel-unshuffling model (Real-ESRGAN x2 / x1) keep the whole image's phase.

(The peak memory itself is measured, not tested: docs/evaluation.md, "Memory of huge images".)
"""
import numpy as np
import pytest
import torch
from PIL import Image

import mesrgan.io.images as imageio
from mesrgan.io.images import read_png16, to_samples, write_image, write_png16
from mesrgan.inference import upscale_pixels, upscale_tensor
from mesrgan.models import build_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name="esrgan", **extra):
    torch.manual_seed(0)
    return build_generator(name, features=8, growth=4, num_blocks=1, **extra).eval()


def _pixels(h, w, c, seed=0):
    return np.random.default_rng(seed).random((h, w, c), dtype=np.float32)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("bit_depth", [8, 16])
def test_integer_output_equals_rounding_the_float_output(channels, bit_depth):
    model, px = _model(), _pixels(21, 26, channels)
    want = to_samples(upscale_pixels(model, px, tile=0), bit_depth)
    for tile in (0, 9):
        got = upscale_pixels(model, px, tile=tile, tile_pad=12, bit_depth=bit_depth)
        assert got.dtype == (np.uint16 if bit_depth == 16 else np.uint8) and got.shape == (84, 104, channels)
        # rounding per tile is rounding per pixel: exactly the samples of the untiled float result
        # (up to the float rounding that tiling itself allows, at most one level)
        assert np.abs(got.astype(np.int64) - want).max() <= (0 if tile == 0 else 1)


def test_to_samples_rounds_like_the_float_writer():
    x = np.random.default_rng(1).random((5, 7, 3)).astype(np.float32) * 1.2 - 0.1  # also out of [0, 1]
    np.testing.assert_array_equal(to_samples(x, 8), np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8))
    np.testing.assert_array_equal(to_samples(x, 16), np.rint(np.clip(x, 0, 1) * 65535).astype(np.uint16))
    v16 = np.arange(65536, dtype=np.uint16).reshape(256, 256, 1)
    np.testing.assert_array_equal(to_samples(v16, 8), np.rint(v16 / 257.0).astype(np.uint8))
    v8 = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    np.testing.assert_array_equal(to_samples(v8, 16), v8.astype(np.uint16) * 257)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png16_written_in_many_bands_decodes_exactly(tmp_path, monkeypatch, channels):
    monkeypatch.setattr(imageio, "_PNG_BAND_BYTES", 500)  # a few rows per band, many IDAT chunks
    pix = np.random.default_rng(2).integers(0, 65536, size=(37, 23, channels), dtype=np.uint16)
    write_png16(tmp_path / "a.png", pix)
    np.testing.assert_array_equal(read_png16(tmp_path / "a.png"), pix)
    if channels == 1:
        with Image.open(tmp_path / "a.png") as im:  # an independent decoder agrees
            np.testing.assert_array_equal(np.asarray(im).astype(np.uint16), pix[..., 0])


def test_write_image_takes_integer_samples_as_they_are(tmp_path):
    s8 = (np.random.default_rng(3).random((9, 11, 3)) * 255).astype(np.uint8)
    write_image(tmp_path / "a.png", s8)
    with Image.open(tmp_path / "a.png") as im:
        np.testing.assert_array_equal(np.asarray(im), s8)
    write_image(tmp_path / "b.png", s8, bit_depth=16)
    np.testing.assert_array_equal(read_png16(tmp_path / "b.png"), s8.astype(np.uint16) * 257)


@pytest.mark.parametrize("scale", [1, 2])
def test_unshuffling_model_tiles_equal_the_whole_image(scale):
    model = _model(scale=scale, unshuffle_input=True)
    lr = torch.rand(1, 3, 130, 110)
    whole = upscale_tensor(model, lr, tile=0)
    # tile edges and context that are not multiples of the unshuffle factor get moved onto them
    # (a context of 40 covers the model's receptive field, not the whole image)
    tiled = upscale_tensor(model, lr, tile=37, tile_pad=40)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=2e-5)
    model.input_multiple = 1  # without that, tiles are unshuffled out of phase
    assert (upscale_tensor(model, lr, tile=37, tile_pad=40) - whole).abs().max() > 1e-3


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_stored_samples_in_equal_float_pixels_in(channels, dtype):
    """upscale reads the stored samples (no float copy of the input); the result is the one the
    float pixels of read_image give, bit for bit."""
    top = np.iinfo(dtype).max
    samples = np.random.default_rng(4).integers(0, top + 1, size=(13, 17, channels)).astype(dtype)
    floats = samples.astype(np.float32) / np.float32(top)
    model = _model()
    for bit_depth in (None, 8):
        np.testing.assert_array_equal(upscale_pixels(model, samples, tile=7, tile_pad=3, bit_depth=bit_depth),
                                      upscale_pixels(model, floats, tile=7, tile_pad=3, bit_depth=bit_depth))
