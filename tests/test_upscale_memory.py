"""The tile rule of ``python -m mesrgan.upscale``: the default tile is the largest whose estimated
memory (:func:`mesrgan.inference.tile_memory`, from a traced probe) plus the image's buffers
(:func:`mesrgan.inference.image_memory`) fits the --max-memory budget.

What is not asserted here, because it does not hold yet: the whole program's peak resident memory
within that budget. Measured on a 2-core AMD EPYC VM, a 300 MB budget (small x4 ESRGAN, 800x1200
input) peaked at 603 MB above the baseline, mostly freed tile activations that glibc keeps in its
heap (340 MB with MALLOC_MMAP_THRESHOLD_=65536); see docs/evaluation.md.
"""
import numpy as np
import pytest
import torch

from mesrgan.inference import image_memory, tile_for_budget, tile_memory
from mesrgan.models import build_generator

# A small x4 ESRGAN: its tail runs at 4x with 16 channels.
SMALL = {"num_blocks": 1, "features": 16, "growth": 8}


def test_tile_for_budget_rule():
    torch.manual_seed(0)
    small = build_generator("esrgan", **SMALL).eval()
    # more budget, larger tiles; never below MIN_TILE; never above the image
    tiles = [tile_for_budget(small, b * 10**6) for b in (50, 300, 1000, 3000)]
    assert tiles == sorted(tiles) and tiles[0] == 32 and tiles[-1] > 500
    assert tile_for_budget(small, 10**10, image_shape=(100, 70, 3)) == 100
    # the chosen tile fits, one pixel more does not
    for b in (300, 1000):
        t = tile_for_budget(small, b * 10**6)
        assert tile_memory(small, t) <= b * 10**6 < tile_memory(small, t + 1)
    # an image whose result alone exceeds the budget: the smallest tile
    assert tile_for_budget(small, 10**8, image_shape=(3000, 4000, 3)) == 32
    # 16-bit results and inputs count twice per sample
    assert image_memory((10, 10, 3), 4, bit_depth=16, input_bytes=2) == max(
        10 * 10 * 3 * 2 + 1600 * 3 * 2, 1600 * 3 * 2)
    with pytest.raises(ValueError):
        tile_for_budget(small, 0)
    with pytest.raises(ValueError):
        tile_memory(small, 0)


def test_alpha_in_tiles_equals_the_whole_resize(monkeypatch):
    import mesrgan.inference as inference
    from mesrgan.data import imresize
    from mesrgan.inference import upscale_pixels

    torch.manual_seed(0)
    small = build_generator("esrgan", **SMALL).eval()
    px = (np.random.default_rng(0).random((45, 61, 4)) * 255).astype(np.uint8)
    monkeypatch.setattr(inference, "_ALPHA_TILE", 13)
    got = upscale_pixels(small, px, tile=20)
    want = imresize(torch.from_numpy(px[..., -1].astype(np.float32) / 255)[None], 4).clamp(0, 1)[0].numpy()
    np.testing.assert_allclose(got[..., -1], want, rtol=0, atol=1e-6)
