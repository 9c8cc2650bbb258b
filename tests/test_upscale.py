"""Tiled inference, image I/O (grey, alpha, 16-bit PNG) and ``python -m mesrgan.upscale``."""
import os
import re
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from mesrgan.data import imresize
from mesrgan.io.images import ImageReadError, read_image, read_png16, write_image, write_png16
from mesrgan.inference import tile_edges, upscale_pixels
from mesrgan.models import build_generator, generator_checkpoint, generator_config
from mesrgan.upscale import main, upscale_tensor

TINY = {"num_blocks": 1, "features": 8, "growth": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(name="esrgan", scale=4, seed=0):
    torch.manual_seed(seed)
    tiny = {k: v for k, v in TINY.items() if k != "growth" or name != "srgan"}
    cfg = generator_config(name, scale=scale, **tiny)
    g = build_generator(name, **cfg).eval()
    # trained-looking weights: the default residual init is x0.1, make every path matter
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return g, cfg


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    g, cfg = _tiny()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(generator_checkpoint("esrgan", g, cfg), path)
    return str(path), g


def _receptive_radius(model, size=41):
    """LR pixels that influence the centre output pixel, measured with autograd."""
    x = torch.rand(1, 3, size, size, requires_grad=True)
    y = model(x)
    c = y.shape[-1] // 2
    y[0, :, c, c].sum().backward()
    nz = (x.grad[0].abs().sum(0) > 0).nonzero()
    centre = c // (y.shape[-1] // size)
    return int((nz - centre).abs().max())


# ---------------------------------------------------------------------------------------------
# tiling


def test_tile_edges():
    assert tile_edges(10, 4) == [0, 3, 7, 10]
    assert tile_edges(8, 8) == [0, 8]
    assert tile_edges(5, 100) == [0, 5]
    for n, t in ((37, 12), (100, 7), (1, 1)):
        e = tile_edges(n, t)
        assert e[0] == 0 and e[-1] == n and max(b - a for a, b in zip(e, e[1:])) <= t


@pytest.mark.parametrize("name", ["esrgan", "mesrgan", "srgan", "mesrgan-paper"])
def test_tiled_equals_untiled(name):
    model, _ = _tiny(name)
    radius = _receptive_radius(model)
    assert radius < 30
    torch.manual_seed(1)
    lr = torch.rand(1, 3, 37, 29)
    with torch.inference_mode():
        full = model(lr)
    tiled = upscale_tensor(model, lr, tile=12, tile_pad=radius)
    assert tiled.shape == full.shape == (1, 3, 148, 116)
    torch.testing.assert_close(tiled, full, rtol=1e-4, atol=1e-5)


def test_tiles_with_small_pad_match_away_from_seams():
    # with less context than the receptive field, only pixels near inner tile seams may differ
    model, _ = _tiny("esrgan")
    torch.manual_seed(2)
    lr = torch.rand(2, 3, 24, 24)
    with torch.inference_mode():
        full = model(lr)
    tiled = upscale_tensor(model, lr, tile=12, tile_pad=4)
    diff = (tiled - full).abs().amax((0, 1))
    assert diff.max() > 0  # the pad really is too small for this model
    radius = _receptive_radius(model)
    # output pixels whose receptive field stays inside their tile's padded input are exact
    far = torch.ones(96, 96, dtype=torch.bool)
    seam = 12 * 4
    reach = (radius - 4 + 1) * 4
    far[seam - reach:seam + reach, :] = False
    far[:, seam - reach:seam + reach] = False
    assert diff[far].max() < 1e-5


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any aten op produces, apart from the result buffer (empty)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is not torch.ops.aten.empty:
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    self.largest = max(self.largest, t.numel())
        return out


def test_tiling_never_allocates_full_size_activations():
    model, cfg = _tiny("mesrgan")
    lr = torch.rand(1, 3, 64, 80)
    full_rgb = 3 * 256 * 320
    with _LargestOutput() as untiled:
        upscale_tensor(model, lr, tile=0)
    assert untiled.largest > full_rgb  # without tiles the HR feature maps are bigger than the image
    with _LargestOutput() as tiled:
        out = upscale_tensor(model, lr, tile=16, tile_pad=4)
    assert out.shape == (1, 3, 256, 320)
    # every intermediate is bounded by one padded tile: features x (4 * (16 + 2 * 4))**2 at most here
    assert tiled.largest <= max(cfg["features"], 3) * (4 * 24) ** 2 < full_rgb


def test_upscale_tensor_moves_tiles_to_model_dtype_and_back():
    model, _ = _tiny("esrgan")
    model = model.double()
    lr = torch.rand(1, 3, 10, 11)
    out = upscale_tensor(model, lr, tile=6, tile_pad=20)
    assert out.dtype == torch.float32 and out.device == lr.device
    with torch.inference_mode():
        ref = model(lr.double()).float()
    torch.testing.assert_close(out, ref)


def test_upscale_tensor_bad_arguments():
    model, _ = _tiny("esrgan")
    with pytest.raises(ValueError, match="lr must be a float tensor"):
        upscale_tensor(model, torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="tile must be an int >= 0"):
        upscale_tensor(model, torch.rand(1, 3, 8, 8), tile=-1)
    with pytest.raises(ValueError, match="tile_pad must be an int >= 0"):
        upscale_tensor(model, torch.rand(1, 3, 8, 8), tile_pad=1.5)


def test_upscale_pixels_grey_and_alpha():
    model, _ = _tiny("esrgan")
    rng = np.random.default_rng(0)
    rgba = rng.random((9, 7, 4), dtype=np.float32)
    out = upscale_pixels(model, rgba, tile=0)
    assert out.shape == (36, 28, 4) and out.dtype == np.float32
    alpha = imresize(torch.from_numpy(rgba[..., 3])[None], 4).clamp(0, 1)[0].numpy()
    np.testing.assert_allclose(out[..., 3], alpha, atol=1e-6)
    rgb = upscale_pixels(model, np.ascontiguousarray(rgba[..., :3]))
    np.testing.assert_allclose(out[..., :3], rgb, atol=1e-6)
    grey = rng.random((9, 7, 1), dtype=np.float32)
    g = upscale_pixels(model, grey)
    col = upscale_tensor(model, torch.from_numpy(grey).permute(2, 0, 1)[None].expand(1, 3, 9, 7).contiguous())
    assert g.shape == (36, 28, 1)
    luma = (0.299 * col[0, 0] + 0.587 * col[0, 1] + 0.114 * col[0, 2]).clamp(0, 1)
    np.testing.assert_allclose(g[..., 0], luma.numpy(), atol=1e-6)
    assert 0 <= out.min() and out.max() <= 1


# ---------------------------------------------------------------------------------------------
# image I/O


def _png_with_all_filters(pix16):
    """An independent 16-bit PNG encoder that cycles the row filters None, Sub, Up, Average, Paeth."""
    h, w, c = pix16.shape
    bpp = 2 * c
    rows = pix16.astype(">u2").view(np.uint8).reshape(h, w * bpp).astype(int)
    out = bytearray()
    for y in range(h):
        f = y % 5
        prev = rows[y - 1] if y else np.zeros(w * bpp, int)
        out.append(f)
        for i in range(w * bpp):
            a = rows[y, i - bpp] if i >= bpp else 0
            b = prev[i]
            cc = prev[i - bpp] if i >= bpp else 0
            if f == 0:
                pred = 0
            elif f == 1:
                pred = a
            elif f == 2:
                pred = b
            elif f == 3:
                pred = (a + b) // 2
            else:
                p = a + b - cc
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else cc)
            out.append((rows[y, i] - pred) % 256)

    def chunk(t, body):
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))

    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(out))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_decoder_handles_every_filter(tmp_path, channels):
    rng = np.random.default_rng(channels)
    # smooth and noisy parts so every predictor sees carries and wrap-around
    base = np.linspace(0, 65535, 13 * 11 * channels).reshape(13, 11, channels)
    pix = np.clip(base + rng.integers(-3000, 3000, base.shape), 0, 65535).astype(np.uint16)
    path = tmp_path / "f.png"
    path.write_bytes(_png_with_all_filters(pix))
    np.testing.assert_array_equal(read_png16(path), pix)
    loaded = read_image(path)
    assert loaded.bit_depth == 16 and loaded.format == "PNG"
    np.testing.assert_allclose(loaded.pixels, pix / 65535.0, atol=1e-7)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_roundtrip_and_pillow_agrees(tmp_path, channels):
    rng = np.random.default_rng(10 + channels)
    pix = rng.integers(0, 65536, (17, 19, channels)).astype(np.uint16)
    write_png16(tmp_path / "r.png", pix)
    np.testing.assert_array_equal(read_png16(tmp_path / "r.png"), pix)
    with Image.open(tmp_path / "r.png") as im:
        # Pillow reads our file; for colour it keeps only the high byte
        arr = np.asarray(im)
        if channels == 1:
            np.testing.assert_array_equal(arr, pix[..., 0])
        elif channels == 3:
            np.testing.assert_array_equal(arr, (pix >> 8).astype(np.uint8))
    Image.fromarray(pix[..., 0]).save(tmp_path / "p.png")  # Pillow's own 16-bit grey encoder
    np.testing.assert_array_equal(read_png16(tmp_path / "p.png")[..., 0], pix[..., 0])


def test_read_image_modes(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (8, 9, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "p.png", transparency=0)
    assert read_image(tmp_path / "p.png").pixels.shape == (8, 9, 4)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    c = read_image(tmp_path / "c.jpg")
    assert c.pixels.shape == (8, 9, 3) and c.format == "JPEG" and c.bit_depth == 8
    Image.fromarray(rgb[..., 0]).convert("1").save(tmp_path / "b.png")
    assert read_image(tmp_path / "b.png").pixels.shape == (8, 9, 1)
    # EXIF orientation 6 (rotate 90° clockwise) is applied on reading
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "o.jpg", exif=exif)
    assert read_image(tmp_path / "o.jpg").pixels.shape == (9, 8, 3)


def test_read_image_errors(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="cannot read image"):
        read_image(tmp_path / "bad.png")
    with pytest.raises(ImageReadError, match="is a folder"):
        read_image(tmp_path)
    with pytest.raises(ValueError, match="JPEG cannot store an alpha"):
        write_image(tmp_path / "x.jpg", np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(ValueError, match="16-bit output needs a .png"):
        write_image(tmp_path / "x.jpg", np.full((4, 4, 3), 0.5, np.float32), bit_depth=16)


# ---------------------------------------------------------------------------------------------
# command line


def _photo(h, w, seed=0):
    """A smooth, photo-like RGB image with some texture (never constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(6 * xx + 2 * yy), np.cos(5 * yy - 3 * xx), np.sin(9 * xx * yy)], -1) * 0.4 + 0.5
    return np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1)


def test_cli_batch_keeps_formats_and_survives_bad_files(tmp_path, ckpt, capsys):
    weights, model = ckpt
    src = tmp_path / "in"
    src.mkdir()
    rgb8 = (_photo(20, 24) * 255).round().astype(np.uint8)
    Image.fromarray(rgb8).save(src / "photo.png")
    Image.fromarray(rgb8).save(src / "photo2.jpg", quality=95)
    rgba = np.dstack([rgb8, np.linspace(0, 255, 24 * 20).reshape(20, 24).astype(np.uint8)])
    Image.fromarray(rgba).save(src / "alpha.png")
    Image.fromarray(rgb8[..., 1]).save(src / "grey.png")
    write_png16(src / "deep.png", (_photo(10, 12, 1) * 65535).round().astype(np.uint16))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc = main([str(src), str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "out"), "--weights", weights,
               "--tile", "8", "--tile-pad", "20", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "upscaled 5 of 7 images; 2 failed" in err
    assert "broken.png" in err and "missing.jpg: no such file" in err
    out = tmp_path / "out"
    with Image.open(out / "photo_x4.png") as im:
        assert im.size == (96, 80) and im.mode == "RGB"
        sr = np.asarray(im)
    with Image.open(out / "photo2_x4.jpg") as im:
        assert im.format == "JPEG" and im.size == (96, 80)
    with Image.open(out / "alpha_x4.png") as im:
        assert im.mode == "RGBA" and im.size == (96, 80)
        np.testing.assert_array_equal(np.asarray(im)[..., :3], sr)
    with Image.open(out / "grey_x4.png") as im:
        assert im.mode == "L" and im.size == (96, 80)
    deep = read_png16(out / "deep_x4.png")
    assert deep.shape == (40, 48, 3) and deep.dtype == np.uint16
    assert len(np.unique(deep % 257)) > 1  # real 16-bit values, not 8-bit ones scaled up
    # the CLI's result equals the untiled model output, rounded to 8 bits
    with torch.inference_mode():
        ref = model(torch.from_numpy(rgb8).permute(2, 0, 1)[None].float() / 255)
    ref8 = ref[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(sr.astype(int) - ref8).max() <= 1


def test_cli_single_file_output_and_progress(tmp_path, ckpt, capsys):
    weights, _ = ckpt
    Image.fromarray((_photo(12, 16) * 255).astype(np.uint8)).save(tmp_path / "a.bmp")
    rc = main([str(tmp_path / "a.bmp"), "-o", str(tmp_path / "big.png"), "--weights", weights])
    assert rc == 0
    with Image.open(tmp_path / "big.png") as im:
        assert im.format == "PNG" and im.size == (64, 48)
    err = capsys.readouterr().err
    assert "[1/1]" in err and "upscaled 1 of 1 image" in err
    # default name in a folder: suffix _x4, BMP kept
    assert main([str(tmp_path / "a.bmp"), "-o", str(tmp_path / "o"), "--weights", weights, "-q"]) == 0
    assert (tmp_path / "o" / "a_x4.bmp").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--half"], r"--half: float16 inference is CUDA-only; on cpu use --dtype bfloat16"),
    (["--dtype", "float16"], "CUDA-only"),
    (["--scale", "2"], "--scale 2: the checkpoint .* holds a x4 esrgan generator"),
])
def test_cli_usage_errors(tmp_path, ckpt, capsys, flags, message):
    if torch.cuda.is_available() and "CUDA-only" in message:
        flags = flags + ["--device", "cpu"]
    weights, _ = ckpt
    Image.fromarray((_photo(8, 8) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    rc = main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", weights, *flags])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "o").exists()


def test_cli_checkpoint_errors(tmp_path, capsys):
    Image.fromarray((_photo(8, 8) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    args = [str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights"]
    assert main(args + [str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err
    assert "--weights: checkpoint" in err and "does not exist" in err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(args + [str(tmp_path / "junk.pt")]) == 2
    assert "--weights: cannot load" in capsys.readouterr().err
    torch.save({"conv.weight": torch.rand(4, 3, 3, 3)}, tmp_path / "other.pt")
    assert main(args + [str(tmp_path / "other.pt")]) == 2
    assert "cannot tell which generator" in capsys.readouterr().err
    g, _ = _tiny("esrgan")
    torch.save(g.state_dict(), tmp_path / "bare.pt")
    assert main(args + [str(tmp_path / "bare.pt"), "--model", "srgan"]) == 2
    assert "holds a 'esrgan' generator" in capsys.readouterr().err


def test_cli_published_esrgan_layout(tmp_path, capsys):
    # Real-ESRGAN / BasicSR files wrap the RRDBNet state dict in "params_ema"
    g, _ = _tiny("esrgan", seed=3)
    torch.save({"params_ema": g.state_dict()}, tmp_path / "RealESRGAN_tiny.pth")
    Image.fromarray((_photo(10, 9) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    rc = main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights",
               str(tmp_path / "RealESRGAN_tiny.pth"), "--suffix", ""])
    assert rc == 0, capsys.readouterr().err
    with Image.open(tmp_path / "o" / "a.png") as im:
        assert im.size == (36, 40)


def test_python_dash_m_entry_point(tmp_path, ckpt):
    weights, _ = ckpt
    Image.fromarray((_photo(9, 11) * 255).astype(np.uint8)).save(tmp_path / "a.webp", lossless=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "mesrgan.upscale", str(tmp_path / "a.webp"), "-o",
                        str(tmp_path / "o"), "--weights", weights, "--tile", "4", "--tile-pad", "2"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "o" / "a_x4.webp") as im:
        assert im.format == "WEBP" and im.size == (44, 36)


@pytest.mark.cuda
@pytest.mark.parametrize("name", ["esrgan", "mesrgan"])
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_half_precision_tiles_on_cuda(name, dtype, atol):
    model, _ = _tiny(name)
    model = model.cuda()
    lr = torch.rand(1, 3, 30, 26)  # stays on the CPU: only tiles travel to the GPU
    ref = upscale_tensor(model, lr, tile=0)
    out = upscale_tensor(model.to(dtype), lr, tile=12, tile_pad=_receptive_radius(_tiny(name)[0]))
    assert out.device.type == "cpu" and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=atol)


def test_cli_bfloat16_on_cpu(tmp_path, ckpt, capsys):
    """bfloat16 inference on the CPU: within bfloat16's rounding of float32 (8-bit output levels)."""
    weights, _ = ckpt
    Image.fromarray((_photo(20, 24) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    for dtype in ("float32", "bfloat16"):
        assert main([str(tmp_path / "a.png"), "-o", str(tmp_path / dtype), "--weights", weights, "--device", "cpu",
                     "--dtype", dtype, "--tile", "8"]) == 0
        assert f"on cpu ({dtype})" in capsys.readouterr().err
    f32, bf16 = (np.asarray(Image.open(tmp_path / d / "a_x4.png")).astype(int) for d in ("float32", "bfloat16"))
    diff = np.abs(f32 - bf16)
    assert diff.max() <= 3 and diff.mean() < 0.1, (diff.max(), diff.mean())  # measured here: 1 and 0.0004
    assert diff.max() > 0  # it really ran in bfloat16


@pytest.mark.cuda
def test_cli_half_on_cuda(tmp_path, ckpt):
    weights, _ = ckpt
    Image.fromarray((_photo(20, 24) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    assert main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", weights, "--half",
                 "--device", "cuda", "--tile", "8"]) == 0
    with Image.open(tmp_path / "o" / "a_x4.png") as im:
        assert im.size == (96, 80)


def test_cli_output_name_conflicts(tmp_path, ckpt, capsys):
    weights, _ = ckpt
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray((_photo(8, 9, ord(d)) * 255).astype(np.uint8)).save(tmp_path / d / "same.png")
    # a file name as -o needs exactly one input
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "x.png"), "--weights", weights]) == 2
    assert "a file name needs exactly one input file" in capsys.readouterr().err
    # two inputs with one name: each gets its own output, named after its folder; neither overwrites the other
    assert main([str(tmp_path / "a"), str(tmp_path / "b"), "-o", str(tmp_path / "o"), "--weights", weights]) == 0
    assert "upscaled 2 of 2 images" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "o")) == ["a_same_png_x4.png", "b_same_png_x4.png"]
    # never overwrite an input
    assert main([str(tmp_path / "a" / "same.png"), "-o", str(tmp_path / "a"), "--suffix", "", "--weights",
                 weights]) == 1
    assert "would overwrite its input" in capsys.readouterr().err
