"""mesrgan.metrics against hand-computed values and independent (loop-based) formulas."""
import math

import numpy as np
import pytest
import torch

from mesrgan import metrics
from mesrgan.metrics import psnr, rgb_to_y, rmse, ssim

C1 = (0.01 * 255) ** 2
C2 = (0.03 * 255) ** 2

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _device(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return device


def _rand_image(rng, h, w, lo=0, hi=256):
    return rng.integers(lo, hi, size=(h, w, 3), dtype=np.uint8)


def _to_tensor(*imgs):
    return torch.stack([torch.from_numpy(im).permute(2, 0, 1).double() / 255 for im in imgs])


# ---------------------------------------------------------------------------------------------
# independent references: plain Python loops, no shared code with the module


def _y_loop(img):
    out = np.empty(img.shape[:2])
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            r, g, b = (float(v) for v in img[i, j])
            out[i, j] = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    return out


def _gauss2d_loop():
    w = np.empty((11, 11))
    for i in range(11):
        for j in range(11):
            w[i, j] = math.exp(-((i - 5) ** 2 + (j - 5) ** 2) / (2 * 1.5 ** 2))
    return w / w.sum()


def _ssim_loop_channel(x, y):
    """Mean SSIM over every 11x11 window position fully inside the image (valid region)."""
    w = _gauss2d_loop()
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + C1) * (2 * cxy + C2) / ((mx * mx + my * my + C1) * (vx + vy + C2)))
    return float(np.mean(vals))


# ---------------------------------------------------------------------------------------------
# hand-computed values


def test_y_of_primaries_matches_matlab_rgb2ycbcr():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]],
                    [[0, 255, 0], [0, 0, 255], [128, 64, 32]]], dtype=np.uint8)
    expected = np.array([[16.0, 235.0, 81.481],
                         [144.553, 40.966, 16 + (65.481 * 128 + 128.553 * 64 + 24.966 * 32) / 255]])
    np.testing.assert_allclose(rgb_to_y(img), expected, rtol=0, atol=1e-12)
    t = rgb_to_y(_to_tensor(img))
    assert t.shape == (1, 1, 2, 3)
    np.testing.assert_allclose(t[0, 0].numpy() * 255, expected, rtol=0, atol=1e-10)


def test_psnr_rmse_uniform_offset_by_hand():
    rng = np.random.default_rng(0)
    hr = _rand_image(rng, 6, 7, 20, 200)
    sr = hr + np.uint8(5)
    # every channel of every pixel is off by 5: MSE = 25, RMSE = 5, PSNR = 20 log10(255 / 5)
    assert rmse(sr, hr) == pytest.approx(5.0, abs=1e-12)
    assert psnr(sr, hr) == pytest.approx(34.15140352195873, abs=1e-12)
    # Y moves by 5 * (65.481 + 128.553 + 24.966) / 255 = 5 * 219 / 255
    assert rmse(sr, hr, y_channel=True) == pytest.approx(5 * 219 / 255, abs=1e-12)
    assert psnr(sr, hr, y_channel=True) == pytest.approx(20 * math.log10(255 / (5 * 219 / 255)), abs=1e-10)


def test_psnr_sparse_error_by_hand():
    rng = np.random.default_rng(1)
    hr = _rand_image(rng, 8, 10, 50, 200)
    sr = hr.copy()
    sr[2, 3, 2] += 12       # blue only: Y error 12 * 24.966 / 255
    sr[5, 7, 0] -= 4        # red only: Y error -4 * 65.481 / 255
    mse_rgb = (12 ** 2 + 4 ** 2) / (8 * 10 * 3)
    assert psnr(sr, hr) == pytest.approx(10 * math.log10(255 ** 2 / mse_rgb), abs=1e-10)
    mse_y = ((12 * 24.966 / 255) ** 2 + (4 * 65.481 / 255) ** 2) / (8 * 10)
    assert rmse(sr, hr, y_channel=True) == pytest.approx(math.sqrt(mse_y), abs=1e-12)
    # crop_border=1 keeps both pixels; crop_border=3 keeps rows 3..4, columns 3..6: neither pixel
    assert psnr(sr, hr, crop_border=1) == pytest.approx(10 * math.log10(255 ** 2 / ((144 + 16) / (6 * 8 * 3))))
    assert psnr(sr, hr, crop_border=3) == math.inf


def test_identical_images():
    rng = np.random.default_rng(2)
    img = _rand_image(rng, 16, 16)
    assert psnr(img, img) == math.inf
    assert rmse(img, img) == 0.0
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)
    assert ssim(img, img, window="global") == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("window", ["gaussian", "global"])
def test_ssim_constant_images_by_hand(window):
    # no variance anywhere: SSIM = (2ab + C1) / (a^2 + b^2 + C1), the same for both windows
    a = np.full((12, 13, 3), 100, np.uint8)
    b = np.full((12, 13, 3), 110, np.uint8)
    expected = (2 * 100 * 110 + C1) / (100 ** 2 + 110 ** 2 + C1)
    assert ssim(a, b, window=window) == pytest.approx(expected, abs=1e-12)
    assert ssim(a, b, window=window, y_channel=True) == pytest.approx(
        (2 * (16 + 219 * 100 / 255) * (16 + 219 * 110 / 255) + C1)
        / ((16 + 219 * 100 / 255) ** 2 + (16 + 219 * 110 / 255) ** 2 + C1), abs=1e-12)


def test_ssim_global_by_hand():
    # channel 0: x alternates 40 / 200 (mean 120, var 6400), y = x + 10: mean 130, var 6400, cov 6400
    # channel 1: identical (SSIM 1); channel 2: y = 255 - x, cov = -var
    x = np.zeros((4, 4, 3), np.uint8)
    x[..., 0] = np.where(np.indices((4, 4)).sum(0) % 2 == 0, 40, 200)
    x[..., 1] = np.arange(16).reshape(4, 4) * 10
    x[..., 2] = np.where(np.arange(16).reshape(4, 4) < 8, 0, 255)
    y = x.copy()
    y[..., 0] += 10
    y[..., 2] = 255 - x[..., 2]
    s0 = (2 * 120 * 130 + C1) * (2 * 6400 + C2) / ((120 ** 2 + 130 ** 2 + C1) * (6400 + 6400 + C2))
    s1 = 1.0
    mu, var = 127.5, 127.5 ** 2
    s2 = (2 * mu * mu + C1) * (-2 * var + C2) / ((2 * mu * mu + C1) * (2 * var + C2))
    assert ssim(y, x, window="global") == pytest.approx((s0 + s1 + s2) / 3, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# independent formulas


@pytest.mark.parametrize("y_channel", [False, True])
@pytest.mark.parametrize("crop", [0, 2])
def test_ssim_matches_loop_reference(y_channel, crop):
    rng = np.random.default_rng(3)
    hr = _rand_image(rng, 17, 18)
    noise = rng.integers(-30, 31, size=hr.shape)
    sr = np.clip(hr.astype(int) + noise, 0, 255).astype(np.uint8)
    hc = hr[crop:hr.shape[0] - crop, crop:hr.shape[1] - crop]
    sc = sr[crop:sr.shape[0] - crop, crop:sr.shape[1] - crop]
    if y_channel:
        expected = _ssim_loop_channel(_y_loop(sc), _y_loop(hc))
    else:
        expected = np.mean([_ssim_loop_channel(sc[..., k].astype(float), hc[..., k].astype(float))
                            for k in range(3)])
    got = ssim(sr, hr, crop_border=crop, y_channel=y_channel)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < got < 1.0


def test_psnr_rmse_match_direct_formula_on_y():
    rng = np.random.default_rng(4)
    hr = _rand_image(rng, 20, 15)
    sr = _rand_image(rng, 20, 15)
    d = _y_loop(sr)[3:-3, 3:-3] - _y_loop(hr)[3:-3, 3:-3]
    mse = float(np.mean(d ** 2))
    assert rmse(sr, hr, crop_border=3, y_channel=True) == pytest.approx(math.sqrt(mse), abs=1e-12)
    assert psnr(sr, hr, crop_border=3, y_channel=True) == pytest.approx(10 * math.log10(255 ** 2 / mse), abs=1e-10)
    assert psnr(sr, hr) == pytest.approx(20 * math.log10(255 / rmse(sr, hr)), abs=1e-10)


def test_numpy_path_is_float64_and_returns_float():
    rng = np.random.default_rng(5)
    a, b = _rand_image(rng, 12, 12), _rand_image(rng, 12, 12)
    for f in (psnr, ssim, rmse):
        assert type(f(a, b)) is float
    assert rgb_to_y(a).dtype == np.float64


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("y_channel", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_tensor_path_matches_numpy_per_image(device, dtype, y_channel, layout):
    device = _device(device)
    rng = np.random.default_rng(6)
    hrs = [_rand_image(rng, 24, 21) for _ in range(3)]
    srs = [np.clip(h.astype(int) + rng.integers(-20, 21, h.shape), 0, 255).astype(np.uint8) for h in hrs]
    sr_t = _to_tensor(*srs).to(device, dtype, memory_format=layout)
    hr_t = _to_tensor(*hrs).to(device, dtype, memory_format=layout)
    # float32 cannot hold k / 255 exactly: the difference is ~1e-7 of 255 grey levels
    tol = {"psnr": 1e-4, "rmse": 1e-4, "ssim": 1e-6} if dtype == torch.float32 else \
          {"psnr": 1e-10, "rmse": 1e-10, "ssim": 1e-12}
    for name, f, kw in (("psnr", psnr, {}), ("rmse", rmse, {}), ("ssim", ssim, {}),
                        ("ssim", ssim, {"window": "global"})):
        got = f(sr_t, hr_t, crop_border=2, y_channel=y_channel, **kw)
        assert got.shape == (3,) and got.dtype == torch.float64 and got.device.type == device
        expected = [f(s, h, crop_border=2, y_channel=y_channel, **kw) for s, h in zip(srs, hrs)]
        np.testing.assert_allclose(got.cpu().numpy(), expected, rtol=0, atol=tol[name])


def test_global_ssim_is_higher_than_gaussian_on_noisy_image():
    # the reason the paper's SSIM column cannot be compared with standard SSIM
    rng = np.random.default_rng(7)
    base = np.linspace(0, 255, 48)[None, :, None] * np.ones((48, 1, 3))
    hr = base.astype(np.uint8)
    sr = np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8)
    assert ssim(sr, hr, window="global") > 0.9 > ssim(sr, hr)


# ---------------------------------------------------------------------------------------------
# errors


def test_shape_mismatch():
    a = np.zeros((16, 16, 3), np.uint8) + 3
    b = np.zeros((16, 17, 3), np.uint8) + 3
    for f in (psnr, ssim, rmse):
        with pytest.raises(ValueError, match="same shape"):
            f(a, b)
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.rand(1, 3, 8, 8), torch.rand(2, 3, 8, 8))


def test_wrong_dtypes_and_layouts():
    rng = np.random.default_rng(8)
    a = _rand_image(rng, 16, 16)
    with pytest.raises(TypeError, match="uint8"):
        psnr(a.astype(np.float32) / 255, a.astype(np.float32) / 255)
    with pytest.raises(TypeError, match="uint8"):
        psnr(a.astype(np.uint16), a.astype(np.uint16))
    with pytest.raises(TypeError, match="floating point"):
        ssim(torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8),
             torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8))
    with pytest.raises(TypeError, match="both"):
        rmse(a, _to_tensor(a))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        psnr(a[..., 0], a[..., 0])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        psnr(torch.rand(3, 16, 16), torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="crop_border must be an int"):
        psnr(a, a, crop_border=1.5)
    with pytest.raises(TypeError, match="y_channel"):
        psnr(a, a, y_channel="y")
    with pytest.raises(ValueError, match="window must be one of"):
        ssim(a, a, window="box")


def test_crop_too_large():
    rng = np.random.default_rng(9)
    a = _rand_image(rng, 16, 20)
    for f in (psnr, ssim, rmse):
        with pytest.raises(ValueError, match="crop_border=8 removes the whole image"):
            f(a, a, crop_border=8)
    with pytest.raises(ValueError, match="crop_border must be >= 0"):
        psnr(a, a, crop_border=-1)
    # 16 - 2*3 = 10 rows: too few for the 11x11 window, but fine for the global one
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a, a, crop_border=3)
    assert ssim(a, a, crop_border=3, window="global") == pytest.approx(1.0)


def test_module_exports():
    assert set(metrics.__all__) >= {"psnr", "ssim", "rmse"}
    assert metrics.SSIM_WINDOWS == ("gaussian", "global")
