"""Every output is whole or absent, and no output overwrites another: upscale, evaluate, and the
atomic writer they share.

A write that fails midway (a full disk, Ctrl-C, SIGTERM) is simulated inside the image encoder:
the encoder writes part of its file and then fails, as a real one would.
"""
import errno
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mesrgan import evaluate as E
from mesrgan import upscale as U
from mesrgan.io.atomic import atomic_path
from mesrgan.cli import output_stems
from mesrgan.models import build_generator, generator_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 4), max(2, w // 4), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC))


def _generator_file(path, poison=False):
    torch.manual_seed(0)
    options = {"features": 8, "growth": 4, "num_blocks": 1}
    g = build_generator("esrgan", **options).eval()
    if poison:
        with torch.no_grad():
            next(iter(g.parameters()))[0].fill_(float("nan"))
    torch.save(generator_checkpoint("esrgan", g, {"scale": 4, **options}), path)
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return _generator_file(tmp_path_factory.mktemp("ckpt") / "g.pt")


def _files(folder):
    return sorted(os.listdir(folder))


def _failing_save(exc):
    """Pillow's ``Image.save`` that writes half a file, then raises ``exc`` (or calls it)."""
    def save(self, fp, format=None, **kw):
        with open(fp, "wb") as f:
            f.write(b"\x89PNG half an image")
        if callable(exc) and not isinstance(exc, BaseException):
            exc()
        raise exc
    return save


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    dst = tmp_path / "out.bin"
    dst.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dst) as tmp:
            open(tmp, "wb").write(b"half")
            raise KeyboardInterrupt
    assert dst.read_bytes() == b"old" and _files(tmp_path) == ["out.bin"]
    with atomic_path(dst) as tmp:
        open(tmp, "wb").write(b"new")
    assert dst.read_bytes() == b"new" and _files(tmp_path) == ["out.bin"]
    assert oct(dst.stat().st_mode & 0o777) != oct(0o600)  # the usual mode, not a temp file's private one


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt(), 130), ("sigterm", 143),
                                          (OSError(errno.ENOSPC, "No space left on device"), 1)])
def test_upscale_never_leaves_a_torn_output(tmp_path, weights, capsys, monkeypatch, stop, status):
    Image.fromarray(_photo(12, 12)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert U.main([str(tmp_path / "a.png"), "-o", str(out), "--weights", weights, "-q"]) == 0
    earlier = (out / "a_x4.png").read_bytes()
    capsys.readouterr()
    if stop == "sigterm":
        stop = lambda: os.kill(os.getpid(), signal.SIGTERM)  # noqa: E731  (the handler raises inside the write)
    monkeypatch.setattr(Image.Image, "save", _failing_save(stop))
    assert U.main([str(tmp_path / "a.png"), "-o", str(out), "--weights", weights, "-q"]) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status != 1:
        assert len(err.strip().splitlines()) == 1 and "stopped by SIG" in err, err
    assert (out / "a_x4.png").read_bytes() == earlier  # the earlier result, whole
    assert _files(out) == ["a_x4.png"]  # and no temporary file


def test_upscale_gives_same_stem_inputs_distinct_outputs(tmp_path, weights, capsys):
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(_photo(12, 12, 1)).save(src / "a.png")
    Image.fromarray(_photo(12, 12, 2)).save(src / "a.jpg", quality=95)
    Image.fromarray(_photo(12, 12, 3)).save(src / "b.png")
    out = tmp_path / "out"
    assert U.main([str(src), "-o", str(out), "--weights", weights, "--format", "png"]) == 0
    assert _files(out) == ["a_jpg_x4.png", "a_png_x4.png", "b_x4.png"]
    assert (out / "a_jpg_x4.png").read_bytes() != (out / "a_png_x4.png").read_bytes()
    assert U.main([str(src / "b.png"), "-o", str(out), "--weights", weights]) == 0
    assert "replaced the earlier file" in capsys.readouterr().err  # said, not silent


def test_output_stems():
    assert output_stems(["d/a.jpg", "d/a.png", "d/b.png", "x/c.png", "y/c.png", "z/c.jpg"]) == {
        "d/a.jpg": "a_jpg", "d/a.png": "a_png", "d/b.png": "b",
        "x/c.png": "x_c_png", "y/c.png": "y_c_png", "z/c.jpg": "c_jpg"}


def test_nan_weights_are_refused(tmp_path, capsys):
    bad = _generator_file(tmp_path / "nan.pt", poison=True)
    Image.fromarray(_photo(12, 12)).save(tmp_path / "a.png")
    assert U.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", bad]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or infinite" in err and not (tmp_path / "o").exists()
    assert E.main(["--weights", bad, "--data", str(tmp_path)]) == 2
    assert "NaN or infinite" in capsys.readouterr().err


def test_tiny_tiles_are_warned_about(tmp_path, weights, capsys):
    Image.fromarray(_photo(8, 8)).save(tmp_path / "a.png")
    assert U.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", weights, "--tile", "4"]) == 0
    assert "warning: --tile 4" in capsys.readouterr().err


def test_evaluate_save_dir_keeps_same_stem_images_apart(tmp_path, weights):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(24, 24, 1)).save(data / "good.png")
    Image.fromarray(_photo(24, 24, 2)).save(data / "good.jpg", quality=95)
    Image.fromarray(_photo(24, 24, 3)).save(data / "other.png")
    sd, report = tmp_path / "sd", tmp_path / "r.json"
    assert E.main(["--weights", weights, "--data", str(data), "--save-dir", str(sd), "--json", str(report), "-q"]) == 0
    assert _files(sd) == ["good_jpg.png", "good_png.png", "other.png"]
    names = [row["name"] for row in json.loads(report.read_text())["images"]]
    assert sorted(names) == ["good_jpg", "good_png", "other"]


def test_evaluate_leaves_no_empty_file_on_a_full_disk(tmp_path, weights, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(24, 24, 1)).save(data / "a.png")
    monkeypatch.setattr(Image.Image, "save", _failing_save(OSError(errno.ENOSPC, "No space left on device")))
    sd = tmp_path / "sd"
    assert E.main(["--weights", weights, "--data", str(data), "--save-dir", str(sd), "-q"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert _files(sd) == []  # no 0-byte or half PNG


def test_upscale_ctrl_c_in_a_subprocess_gives_one_line(tmp_path, weights):
    """A real SIGINT while the model runs (a large image, small tiles): one line, status 130."""
    Image.fromarray(_photo(512, 512)).save(tmp_path / "big.png")
    p = subprocess.Popen([sys.executable, "-m", "mesrgan.upscale", str(tmp_path / "big.png"), "-o",
                          str(tmp_path / "o"), "--weights", weights, "--tile", "16"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:
            if line.startswith("model:"):
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130 and "Traceback" not in err and "stopped by SIGINT" in err, err
    assert not os.path.exists(tmp_path / "o" / "big_x4.png") or \
        Image.open(tmp_path / "o" / "big_x4.png").size == (2048, 2048)
    assert [n for n in os.listdir(tmp_path / "o") if n.startswith(".")] == []
