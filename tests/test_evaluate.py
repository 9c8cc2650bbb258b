"""``python -m mesrgan.evaluate``: LR generation, metric conventions, table, JSON, paired LR, errors."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mesrgan.data import imresize
from mesrgan.evaluate import CONVENTIONS, evaluate_images, main, measure
from mesrgan.metrics import psnr, rmse, ssim
from mesrgan.models import build_generator, generator_checkpoint, generator_config


pytestmark = pytest.mark.usefixtures("one_thread")


class Bicubic(nn.Module):
    """A parameter-free 'generator': MATLAB-style bicubic upscaling."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return imresize(x, self.scale)


def _tiny(name="esrgan", scale=4, seed=0):
    torch.manual_seed(seed)
    cfg = generator_config(name, scale=scale, num_blocks=1, features=8, growth=4)
    g = build_generator(name, **cfg).eval()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return g, cfg


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([np.sin(7 * xx + 2 * yy), np.cos(5 * yy - 3 * xx), np.sin(11 * xx * yy)], -1) * 0.4 + 0.5
    return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).round().astype(np.uint8)


def _u8(t):
    return t[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def _t(a):
    """A (possibly read-only) uint8 HWC array as a 1x3xHxW float tensor; copied, as torch wants writable memory."""
    return torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    g, cfg = _tiny()
    # a training checkpoint: our keys plus training state, with an EMA generator
    ema, _ = _tiny(seed=1)
    ckpt = generator_checkpoint("esrgan", g, cfg)
    ckpt.update({"generator_ema": ema.state_dict(), "optimizer_g": {}, "iteration": 10})
    torch.save(ckpt, root / "last.pt")
    hr = root / "hr"
    hr.mkdir()
    # 50x38 is not a multiple of 4: evaluation crops it to 48x36
    Image.fromarray(_photo(38, 50, 0)).save(hr / "img1.png")
    Image.fromarray(_photo(32, 28, 1)).save(hr / "img2.png")
    return root, ema


def test_measure_follows_conventions():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    sr = np.clip(hr.astype(int) + rng.integers(-9, 10, hr.shape), 0, 255).astype(np.uint8)
    std = measure(sr, hr, "standard", 4)
    assert math.isnan(std.pop("niqe"))  # 24x24 is smaller than NIQE's two 96x96 blocks
    assert std == {"psnr": psnr(sr, hr, crop_border=4, y_channel=True),
                   "ssim": ssim(sr, hr, crop_border=4, y_channel=True),
                   "rmse": rmse(sr, hr, crop_border=4, y_channel=True)}
    pap = measure(sr, hr, "paper", 4)
    assert math.isnan(pap.pop("niqe"))
    assert pap == {"psnr": psnr(sr, hr), "ssim": ssim(sr, hr, window="global"), "rmse": rmse(sr, hr)}
    assert set(CONVENTIONS) == {"standard", "paper"}


def test_evaluate_images_pipeline_by_hand(setup):
    _, model = setup
    hr = _photo(38, 50, 0)
    rows, failures = evaluate_images(model, [("a", hr)], scale=4)
    assert failures == [] and len(rows) == 1
    row = rows[0]
    assert row["size"] == [48, 36]
    hr_c = hr[:36, :48]
    lr = _u8(imresize(_t(hr_c), 1 / 4))
    assert lr.shape == (9, 12, 3)
    with torch.inference_mode():
        sr = _u8(model(_t(lr)))
    bic = _u8(imresize(_t(lr), 4))
    assert row["sr"] == measure(sr, hr_c, "standard", 4)
    assert row["bicubic"] == measure(bic, hr_c, "standard", 4)


def test_bicubic_generator_equals_baseline():
    images = [("x", _photo(40, 44, 2)), ("y", lambda: _photo(20, 24, 3))]
    rows, failures = evaluate_images(Bicubic(2), images, scale=2, convention="paper")
    assert not failures
    for r in rows:
        assert r["sr"] == r["bicubic"]
        assert 20 < r["sr"]["psnr"] < 60 and 0 < r["sr"]["ssim"] < 1


def test_cli_table_json_and_saved_images(setup, tmp_path, capsys):
    root, model = setup
    rc = main(["--weights", str(root / "last.pt"), "--data", str(root / "hr"), "--json", str(tmp_path / "r.json"),
               "--save-dir", str(tmp_path / "sr"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "[1/2] img1" in err and "[2/2] img2" in err  # progress
    lines = out.splitlines()
    assert "Y of BT.601" in out and "4 px border cropped" in out
    assert any(l.startswith("image") and l.count("PSNR") == 2 for l in lines)
    assert any(re.match(r"img1 +48x36 \| ", l) for l in lines)
    mean_line = next(l for l in lines if l.startswith("mean"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == "esrgan" and report["scale"] == 4
    assert report["convention"] == {"name": "standard", "description": report["convention"]["description"],
                                    "y_channel": True, "crop_border": 4, "ssim_window": "gaussian"}
    assert [r["name"] for r in report["images"]] == ["img1", "img2"]
    for key in ("sr", "bicubic"):
        for m in ("psnr", "ssim", "rmse"):
            assert report["mean"][key][m] == pytest.approx(np.mean([r[key][m] for r in report["images"]]))
    assert f"{report['mean']['sr']['psnr']:.2f}" in mean_line
    assert f"{report['mean']['bicubic']['ssim']:.4f}" in mean_line
    # the saved SR image is the one measured; the EMA weights were used
    sr = np.asarray(Image.open(tmp_path / "sr" / "img1.png"))
    hr = _photo(38, 50, 0)[:36, :48]
    assert measure(sr, hr, "standard", 4) == {**report["images"][0]["sr"], "niqe": math.nan}  # JSON null
    with torch.inference_mode():
        ref = _u8(model(_t(_u8(imresize(_t(hr), 1 / 4)))))
    np.testing.assert_array_equal(sr, ref)


def test_cli_paired_lr_and_paper_convention(setup, tmp_path, capsys):
    root, model = setup
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    rng = np.random.default_rng(5)
    lr1 = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)  # any LR: it is used as given
    Image.fromarray(lr1).save(lr_dir / "img1x4.png")
    Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).save(lr_dir / "img2.png")  # wrong size
    rc = main(["--weights", str(root / "last.pt"), "--data", str(root / "hr"), "--lr-data", str(lr_dir),
               "--metrics", "paper", "--json", str(tmp_path / "r.json"), "-q"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "1 image(s) failed" in err and "img2: paired LR is 5x5" in err
    assert "paper's Table II convention" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lr"] == "paired" and report["convention"]["ssim_window"] == "global"
    assert [f["name"] for f in report["failures"]] == ["img2"]
    hr = _photo(38, 50, 0)[:36, :48]
    with torch.inference_mode():
        sr = _u8(model(_t(lr1)))
    assert {**report["images"][0]["sr"], "niqe": 0} == pytest.approx({**measure(sr, hr, "paper", 4), "niqe": 0})


def test_cli_bundled_images_by_default(setup, capsys):
    pytest.importorskip("skimage")
    root, _ = setup
    rc = main(["--weights", str(root / "last.pt"), "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "bundled" in out and "chelsea" in out and "rocket" in out


def test_cli_bad_file_in_set_and_errors(setup, tmp_path, capsys):
    root, _ = setup
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(24, 24, 4)).save(data / "good.png")
    (data / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    assert main(["--weights", str(root / "last.pt"), "--data", str(data), "-q"]) == 1
    out, err = capsys.readouterr()
    assert "good" in out and "bad: " in err
    assert main(["--weights", str(tmp_path / "none.pt"), "--data", str(data)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["--weights", str(root / "last.pt"), "--data", str(tmp_path / "empty")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["--weights", str(root / "last.pt"), "--data", str(data), "--scale", "2"]) == 2
    assert "x4 esrgan" in capsys.readouterr().err


def test_cli_bare_state_dict_needs_no_model_when_recognised(setup, tmp_path, capsys):
    root, model = setup
    torch.save(model.state_dict(), tmp_path / "g.pth")
    rc = main(["--weights", str(tmp_path / "g.pth"), "--data", str(root / "hr"), "--json",
               str(tmp_path / "r.json"), "-q"])
    assert rc == 0, capsys.readouterr().err
    a = json.loads((tmp_path / "r.json").read_text())["mean"]["sr"]
    main(["--weights", str(root / "last.pt"), "--data", str(root / "hr"), "--json", str(tmp_path / "s.json"), "-q"])
    assert json.loads((tmp_path / "s.json").read_text())["mean"]["sr"] == a


def test_identical_images_give_inf_psnr_and_null_json(tmp_path, capsys):
    # an LR so flat that bicubic x2 reproduces the HR exactly: PSNR inf, written as null in JSON
    data = tmp_path / "d"
    data.mkdir()
    Image.fromarray(np.full((24, 24, 3), 77, np.uint8)).save(data / "flat.png")
    g = Bicubic(2)
    rows, _ = evaluate_images(g, [("flat", np.full((24, 24, 3), 77, np.uint8))], scale=2)
    assert math.isinf(rows[0]["sr"]["psnr"])


def test_python_dash_m_entry_point(setup, tmp_path):
    root, _ = setup
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "mesrgan.evaluate", "--weights", str(root / "last.pt"),
                        "--data", str(root / "hr"), "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "mean" in r.stdout and json.loads((tmp_path / "r.json").read_text())["mean"]["sr"]["psnr"] > 0


# ---- NIQE column and PI ------------------------------------------------------------------------

def test_niqe_of_sr_and_bicubic_with_the_conventions_crop():
    from mesrgan.metrics import niqe
    from mesrgan.data import bundled_images

    hr = dict(bundled_images("val"))["chelsea"][:200, :300]
    rows, failures = evaluate_images(Bicubic(2), [("c", hr)], scale=2)
    assert not failures
    row = rows[0]
    lr = _u8(imresize(_t(hr), 1 / 2))
    bic = _u8(imresize(_t(lr), 2))
    # crop 2 (the scale) leaves 196x296: two 96x96 blocks
    assert row["bicubic"]["niqe"] == niqe(bic, crop_border=2)
    assert row["sr"]["niqe"] == row["bicubic"]["niqe"]
    assert niqe(hr, crop_border=2) < row["bicubic"]["niqe"]  # blur is less natural than the photograph
    rows, _ = evaluate_images(Bicubic(2), [("c", hr)], scale=2, convention="paper")
    assert rows[0]["bicubic"]["niqe"] == niqe(bic)


def test_cli_shows_niqe_and_why_pi_is_missing(tmp_path, capsys, monkeypatch):
    import mesrgan.metrics.pi as pi_mod
    from mesrgan.data import bundled_images

    find_spec = pi_mod.importlib.util.find_spec
    monkeypatch.setattr(pi_mod.importlib.util, "find_spec",  # as if pyiqa were absent, wherever it is not
                        lambda name, *a: None if name == "pyiqa" else find_spec(name, *a))
    data = tmp_path / "d"
    data.mkdir()
    Image.fromarray(dict(bundled_images("val"))["chelsea"][:200, :300]).save(data / "c.png")
    Image.fromarray(_photo(40, 40, 3)).save(data / "small.png")
    g, cfg = _tiny()
    torch.save(generator_checkpoint("esrgan", g, cfg), tmp_path / "g.pt")
    rc = main(["--weights", str(tmp_path / "g.pt"), "--data", str(data), "--json", str(tmp_path / "r.json"), "-q"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = out.splitlines()
    assert any(l.startswith("image") and l.count("NIQE") == 2 for l in lines)
    report = json.loads((tmp_path / "r.json").read_text())
    c, small = report["images"]
    assert small["sr"]["niqe"] is None and re.match(r"small +40x40 +\|.* - \|.* -$", next(
        l for l in lines if l.startswith("small")))
    assert f"{c['bicubic']['niqe']:.3f}" in next(l for l in lines if l.startswith("c "))
    assert report["mean"]["sr"]["niqe"] is None  # one image without NIQE: no mean
    assert "PI not computed: it needs Ma et al.'s learned NRQM model" in out
    assert report["pi_missing"].startswith("PI not computed")


def test_pi_from_an_ma_scorer():
    from mesrgan.data import bundled_images
    from mesrgan.metrics.pi import perceptual_index

    hr = dict(bundled_images("val"))["chelsea"][:200, :300]
    # a stand-in for Ma (pyiqa's NRQM is not installed here): the plumbing is what is tested
    rows, _ = evaluate_images(Bicubic(2), [("c", hr)], scale=2, ma_score=lambda img: float(img.mean()) / 40)
    m = rows[0]["bicubic"]
    assert m["pi"] == pytest.approx(((10 - m["ma"]) + m["niqe"]) / 2)
    assert perceptual_index(4.0, 6.0) == 6.0


def test_evaluate_in_bfloat16_on_cpu(tmp_path, capsys):
    """--dtype bfloat16 on the CPU: the same table within bfloat16's rounding; float16 is CUDA-only."""
    from mesrgan import evaluate as E
    from mesrgan.models import build_generator, generator_checkpoint

    torch.manual_seed(0)
    options = {"features": 8, "growth": 4, "num_blocks": 1}
    g = build_generator("esrgan", **options).eval()
    weights = tmp_path / "g.pt"
    torch.save(generator_checkpoint("esrgan", g, {"scale": 4, **options}), weights)
    psnr = {}
    for dtype in ("float32", "bfloat16"):
        report = tmp_path / f"{dtype}.json"
        assert E.main(["--weights", str(weights), "--device", "cpu", "--dtype", dtype, "--json", str(report),
                       "-q"]) == 0
        psnr[dtype] = json.loads(report.read_text())["mean"]["sr"]["psnr"]
    assert abs(psnr["float32"] - psnr["bfloat16"]) < 0.05, psnr
    capsys.readouterr()
    assert E.main(["--weights", str(weights), "--device", "cpu", "--dtype", "float16"]) == 2
    assert "float16 inference is CUDA-only" in capsys.readouterr().err
