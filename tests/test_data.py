"""Tests for mesrgan.data: MATLAB-style imresize, datasets, bundled images, prepare."""
import math

import pytest
import torch
import torch.nn.functional as F

from mesrgan.data import imresize


def _symmetric_pad(x, p):
    """Half-sample symmetric padding (MATLAB's 'symmetric': ..., 2, 1, 1, 2, ...)."""
    top, bottom = x[..., :p, :].flip(-2), x[..., -p:, :].flip(-2)
    x = torch.cat([top, x, bottom], dim=-2)
    left, right = x[..., :, :p].flip(-1), x[..., :, -p:].flip(-1)
    return torch.cat([left, x, right], dim=-1)


@pytest.mark.parametrize("scale,shape", [(1 / 4, (2, 3, 96, 128)), (1 / 2, (1, 3, 50, 64)),
                                         (1 / 3, (1, 3, 96, 99)), (2, (1, 3, 20, 24)),
                                         (4, (1, 1, 16, 13))])
def test_imresize_matches_torch_antialias_in_interior(scale, shape):
    torch.manual_seed(0)
    x = torch.rand(shape, dtype=torch.float64)
    y = imresize(x, scale)
    ref = F.interpolate(x, scale_factor=scale, mode="bicubic", antialias=True, align_corners=False)
    assert y.shape == ref.shape
    assert y.shape[-2:] == (math.ceil(shape[-2] * scale - 1e-9), math.ceil(shape[-1] * scale - 1e-9))
    b = 2 if scale < 1 else int(1.5 * scale) + 1
    torch.testing.assert_close(y[..., b:-b, b:-b], ref[..., b:-b, b:-b], atol=1e-10, rtol=0)


@pytest.mark.parametrize("factor", [2, 4])
def test_imresize_border_is_symmetric_mirroring(factor):
    """Downscaling a symmetrically padded image with torch, then cropping, equals imresize:
    checks the mirrored border taps independently of the matrix construction."""
    torch.manual_seed(1)
    x = torch.rand(1, 3, 8 * factor, 5 * factor, dtype=torch.float64)
    pad = 2 * factor  # half the stretched kernel width (4 * factor / 2)
    big = _symmetric_pad(x, pad)
    ref = F.interpolate(big, scale_factor=1 / factor, mode="bicubic", antialias=True,
                        align_corners=False)
    k = pad // factor
    ref = ref[..., k:-k, k:-k]
    torch.testing.assert_close(imresize(x, 1 / factor), ref, atol=1e-12, rtol=0)


def test_imresize_shapes_dtypes_and_constants():
    x = torch.rand(3, 97, 61)
    y = imresize(x, 1 / 4)
    assert y.shape == (3, 25, 16) and y.dtype == torch.float32
    c = torch.full((1, 2, 40, 36), 0.37, dtype=torch.float64)
    torch.testing.assert_close(imresize(c, 1 / 4), torch.full((1, 2, 10, 9), 0.37, dtype=torch.float64))
    h = imresize(torch.rand(1, 3, 32, 32).half(), 0.5)
    assert h.dtype == torch.float16 and h.shape == (1, 3, 16, 16)
    assert imresize(x, size=(10, 20)).shape == (3, 10, 20)
    # A linear map: imresize(a*x + b*y) == a*imresize(x) + b*imresize(y).
    u, v = torch.rand(2, 3, 24, 24, dtype=torch.float64)
    torch.testing.assert_close(imresize(2 * u - 3 * v, 0.25), 2 * imresize(u, 0.25) - 3 * imresize(v, 0.25))


def test_imresize_bad_input():
    with pytest.raises(ValueError, match="scale must be a positive"):
        imresize(torch.rand(3, 8, 8), -1)
    with pytest.raises(TypeError, match="float tensor"):
        imresize(torch.zeros(3, 8, 8, dtype=torch.uint8), 0.5)
    with pytest.raises(ValueError, match=r"\(C, H, W\) or \(N, C, H, W\)"):
        imresize(torch.rand(8, 8), 0.5)
    with pytest.raises(ValueError, match="exactly one of scale or size"):
        imresize(torch.rand(3, 8, 8))
