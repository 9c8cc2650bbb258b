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


# ---------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------
import os
import warnings

import numpy as np
from PIL import Image

from mesrgan.data import (BUNDLED_TRAIN, BUNDLED_VAL, CropDataset, SampleIdSampler, augment,
                          bundled_images, find_images, load_image, prepare_validation, quantize)


def _photo(h, w, seed=0):
    """A smooth random colour image (not constant, not noise): what crops of photos look like."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    a = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, size=(h, w, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def _save(path, a, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(a)
    if mode:
        im = im.convert(mode)
    im.save(path)


def test_crop_dataset_shapes_and_lr_is_bicubic_of_hr():
    ds = CropDataset.from_arrays([("a", _photo(100, 90)), ("b", _photo(70, 120, 1))], 48, 4,
                                 quantize_lr=False)
    for k in range(6):
        s = ds[k]
        assert s["hr"].shape == (3, 48, 48) and s["lr"].shape == (3, 12, 12)
        assert s["hr"].dtype == torch.float32 and 0 <= s["hr"].min() and s["hr"].max() <= 1
        torch.testing.assert_close(s["lr"], imresize(s["hr"], 1 / 4))
    q = CropDataset.from_arrays([("a", _photo(100, 90))], 48, 4)  # 8-bit LR by default
    s = q[3]
    torch.testing.assert_close(s["lr"], quantize(imresize(s["hr"], 1 / 4)))
    assert torch.equal(s["lr"] * 255, (s["lr"] * 255).round())


def test_crop_dataset_is_a_function_of_seed_and_sample_id():
    arrays = [("a", _photo(100, 90)), ("b", _photo(90, 100, 1)), ("c", _photo(80, 80, 2))]
    a = CropDataset.from_arrays(arrays, 32, 4, seed=3)
    b = CropDataset.from_arrays(arrays, 32, 4, seed=3)
    for k in (0, 5, 17, 4):  # any order
        assert torch.equal(a[k]["hr"], b[k]["hr"])
    assert not torch.equal(a[0]["hr"], a[1]["hr"])
    c = CropDataset.from_arrays(arrays, 32, 4, seed=4)
    assert any(not torch.equal(a[k]["hr"], c[k]["hr"]) for k in range(3))
    # Every image is drawn once per epoch of len(dataset) sample ids.
    assert sorted(a._image_index(k) for k in range(3)) == [0, 1, 2]


def test_augment_applies_the_same_transform_to_lr_and_hr():
    hr = torch.rand(3, 16, 12)
    lr = imresize(hr, 1 / 4)
    for flags in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]:
        lr2, hr2 = augment([lr, hr], *map(bool, flags))
        # downscaling commutes with flips / transpose, so the pair stays a pair
        torch.testing.assert_close(lr2, imresize(hr2, 1 / 4), atol=1e-6, rtol=0)
        expect = hr
        if flags[0]:
            expect = expect.flip(-1)
        if flags[1]:
            expect = expect.flip(-2)
        if flags[2]:
            expect = expect.transpose(-1, -2)
        assert torch.equal(hr2, expect)


def test_paired_folders_crop_alike_and_augment_alike(tmp_path):
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    for i in range(2):
        a = _photo(64, 80, i)
        _save(str(hr_dir / f"img{i}.png"), a)
        t = torch.from_numpy(a).permute(2, 0, 1).float() / 255
        lr = quantize(imresize(t, 1 / 4)).mul(255).round().byte().permute(1, 2, 0).numpy()
        _save(str(lr_dir / f"img{i}x4.png"), lr)
    ds = CropDataset.from_pairs([str(hr_dir)], [str(lr_dir)], 32, 4)
    assert len(ds) == 2
    for k in range(12):
        s = ds[k]
        assert s["lr"].shape == (3, 8, 8) and s["hr"].shape == (3, 32, 32)
        # The LR crop is the bicubic image of its HR crop except near the crop border (the taps
        # there saw pixels outside the crop): compare the interior.
        ref = imresize(s["hr"], 1 / 4)
        torch.testing.assert_close(s["lr"][:, 2:-2, 2:-2], ref[:, 2:-2, 2:-2], atol=1 / 255 + 1e-6, rtol=0)
    os.remove(lr_dir / "img1x4.png")
    with pytest.raises(FileNotFoundError, match="no LR partner"):
        CropDataset.from_pairs([str(hr_dir)], [str(lr_dir)], 32, 4)


def test_folders_recursive_formats_conversions_and_skips(tmp_path):
    root = tmp_path / "data"
    _save(str(root / "a.png"), _photo(80, 96, 0))
    _save(str(root / "sub" / "deeper" / "b.JPG"), _photo(80, 80, 1))
    _save(str(root / "sub" / "c.bmp"), _photo(72, 90, 2))
    _save(str(root / "d.tiff"), _photo(70, 70, 3))
    _save(str(root / "e.webp"), _photo(66, 66, 4))
    _save(str(root / "gray.png"), _photo(80, 80, 5), mode="L")
    _save(str(root / "alpha.png"), _photo(80, 80, 6), mode="RGBA")
    _save(str(root / "small1.png"), _photo(40, 200, 7))
    _save(str(root / "small2.jpg"), _photo(63, 63, 8))
    (root / "notes.txt").write_text("not an image")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    good = root / "truncated.jpg"
    _save(str(good), _photo(90, 90, 9))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 3])

    paths = find_images(str(root))
    assert len(paths) == 11 and not any(p.endswith(".txt") for p in paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CropDataset.from_folders([str(root)], 64, 4)
    msgs = [str(w.message) for w in caught]
    # corrupt.png fails its header check while scanning; the truncated JPEG's header is fine,
    # so it is found out when it is decoded, warned about by name, and replaced.
    assert len(ds) == 8
    small = [m for m in msgs if "smaller than" in m]
    assert small == ["skipped 2 HR image(s) smaller than 64x64 pixels (the crop size)"]
    assert any("corrupt.png" in m for m in msgs)
    assert len(msgs) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(16):  # two epochs: every image is drawn
            assert ds[k]["hr"].shape == (3, 64, 64)
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "truncated.jpg" in msgs[0]
    for name in ("gray.png", "alpha.png"):
        a = load_image(str(root / name))
        assert a.shape == (80, 80, 3) and a.dtype == np.uint8
    g = load_image(str(root / "gray.png"))
    assert np.array_equal(g[..., 0], g[..., 1]) and np.array_equal(g[..., 0], g[..., 2])


def test_no_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        CropDataset.from_folders([str(tmp_path / "empty")], 64, 4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CropDataset.from_folders([str(tmp_path / "missing")], 64, 4)
    _save(str(tmp_path / "tiny" / "x.png"), _photo(20, 20))
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(ValueError, match="none of the 1"):
        CropDataset.from_folders([str(tmp_path / "tiny")], 64, 4)
    with pytest.raises(ValueError, match="multiple of scale"):
        CropDataset.from_arrays([("a", _photo(80, 80))], 30, 4)


def test_sample_id_sampler_splits_global_batches_over_processes():
    one = list(SampleIdSampler(6, start_batch=2, num_batches=3))
    assert one == list(range(12, 30))
    parts = [list(SampleIdSampler(6, start_batch=2, rank=r, world_size=2, num_batches=3)) for r in range(2)]
    merged = []
    for b in range(3):
        for r in range(2):
            merged += parts[r][b * 3:(b + 1) * 3]
    assert merged == one
    with pytest.raises(ValueError, match="not divisible"):
        SampleIdSampler(5, world_size=2)


def test_bundled_images_split():
    train, val = bundled_images("train"), bundled_images("val")
    assert [n for n, _ in val] == ["chelsea", "rocket"]
    assert len(train) == len(BUNDLED_TRAIN) >= 4 and len(val) == len(BUNDLED_VAL) == 2
    assert not {n for n, _ in train} & {n for n, _ in val}
    for _, a in train + val:
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3 and min(a.shape[:2]) >= 128
        assert a.std() > 10  # real photographs
    with pytest.raises(ValueError, match="split must be"):
        bundled_images("test")


def test_prepare_validation_shapes():
    pairs = prepare_validation([("x", _photo(101, 83))], 4)
    (_, lr, hr), = pairs
    assert hr.shape == (1, 3, 100, 80) and lr.shape == (1, 3, 25, 20)
    (_, lr, hr), = prepare_validation([("x", _photo(101, 83))], 4, max_size=48)
    assert hr.shape == (1, 3, 48, 48) and lr.shape == (1, 3, 12, 12)


def test_prepare_cuts_sub_images(tmp_path, capsys):
    from mesrgan.data.prepare import main, tile_positions

    assert tile_positions(2040, 480, 240) == [0, 240, 480, 720, 960, 1200, 1440, 1560]
    assert tile_positions(300, 480, 240) == [0]
    src = tmp_path / "src"
    big = _photo(200, 260, 0)
    _save(str(src / "one.png"), big)
    _save(str(src / "nested" / "two.jpg"), _photo(120, 120, 1))
    _save(str(src / "small.png"), _photo(40, 40, 2))
    assert main([str(src), str(tmp_path / "dst"), "--size", "120", "--step", "100", "--min-size", "64",
                 "--workers", "1"]) == 0
    tiles = find_images(str(tmp_path / "dst"))
    rel = sorted(os.path.relpath(p, tmp_path / "dst") for p in tiles)
    # one.png: rows 0, 80 x cols 0, 100, 140 -> 6 tiles; two.jpg: 1 tile; small.png: skipped
    assert len(rel) == 7 and os.path.join("nested", "two_s001.png") in rel
    first = load_image(str(tmp_path / "dst" / "one_s001.png"))
    assert first.shape == (120, 120, 3) and np.array_equal(first, big[:120, :120])
    last = load_image(str(tmp_path / "dst" / "one_s006.png"))
    assert np.array_equal(last, big[80:200, 140:260])
    assert "7 tiles" in capsys.readouterr().out
