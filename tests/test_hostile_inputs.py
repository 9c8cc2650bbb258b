"""Hostile inputs for upscale, evaluate and train: decompression bombs, symlink loops, files that
are not checkpoints, output paths that cannot be written, numbers out of range.

The bombs are made here: a PNG (or JPEG) header that claims a huge size in front of a few bytes
of pixel data. Nothing may decode them: the pixel budget is checked from the header.
"""
import json
import os
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from mesrgan import evaluate as E
from mesrgan import train as T
from mesrgan import upscale as U
from mesrgan.cli import write_text_atomic
from mesrgan.data import CropDataset, find_images, load_image, scan_images
from mesrgan.io.images import (DEFAULT_MAX_PIXELS, ImageReadError, ImageTooLargeError, check_image, image_size,
                             read_image, read_png16, write_image)
from mesrgan.models import CheckpointError, build_generator, generator_checkpoint, load_generator, read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(h, w, seed=0, channels=3):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 4), max(2, w // 4), channels), dtype=np.uint8)
    img = Image.fromarray(small[..., 0] if channels == 1 else small).resize((w, h), Image.BICUBIC)
    return np.asarray(img)


def _png_bomb(path, width, height, bit_depth=8, color_type=2):
    """A PNG whose header claims width x height, followed by a little random pixel data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    data = zlib.compress(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return str(path)


def _jpeg_bomb(path, width, height):
    """A real 16x16 JPEG with the size in its frame header (SOF0) changed."""
    Image.fromarray(_photo(16, 16)).save(path, quality=90)
    data = bytearray(open(path, "rb").read())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    open(path, "wb").write(bytes(data))
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    options = {"features": 8, "growth": 4, "num_blocks": 1}
    g = build_generator("esrgan", **options).eval()
    path = tmp_path_factory.mktemp("ckpt") / "g.pt"
    torch.save(generator_checkpoint("esrgan", g, {"scale": 4, **options}), path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# decompression bombs and the pixel budget


@pytest.mark.parametrize("kind", ["png8", "png16-grey", "png16-rgba", "jpeg"])
def test_bombs_are_refused_from_the_header(tmp_path, kind):
    path = {"png8": lambda: _png_bomb(tmp_path / "b.png", 60000, 60000),
            "png16-grey": lambda: _png_bomb(tmp_path / "b.png", 14000, 14000, 16, 0),
            "png16-rgba": lambda: _png_bomb(tmp_path / "b.png", 12000, 9000, 16, 6),
            "jpeg": lambda: _jpeg_bomb(tmp_path / "b.jpg", 60000, 50000)}[kind]()
    w, h = image_size(path)
    assert w * h > DEFAULT_MAX_PIXELS
    for read in (read_image, check_image, load_image):
        with pytest.raises(ImageTooLargeError, match=rf"{w}x{h} = {w * h:,} pixels is over the pixel budget of "
                                                     rf"{DEFAULT_MAX_PIXELS:,}.*--max-pixels"):
            read(path)


def test_16bit_bomb_under_a_raised_budget_is_not_inflated_past_its_header(tmp_path):
    """With no budget, a 16-bit PNG claiming more data than it has is a corrupt file, found
    without inflating more than the header's size."""
    path = _png_bomb(tmp_path / "b.png", 3000, 2000, 16, 0)
    with pytest.raises(ImageReadError, match="corrupt PNG"):
        read_png16(path, max_pixels=0)


def test_budget_applies_to_ordinary_images_and_can_be_raised(tmp_path, monkeypatch):
    px = _photo(30, 40)
    Image.fromarray(px).save(tmp_path / "a.png")
    write_image(tmp_path / "d.png", px.astype(np.float32) / 255, bit_depth=16)
    for name in ("a.png", "d.png"):
        with pytest.raises(ImageTooLargeError, match=r"40x30 = 1,200 pixels .* budget of 1,000"):
            read_image(tmp_path / name, max_pixels=1000)
        np.testing.assert_array_equal(np.rint(read_image(tmp_path / name, max_pixels=1200).pixels * 255), px)
    monkeypatch.setenv("MESRGAN_MAX_PIXELS", "1000")
    with pytest.raises(ImageTooLargeError, match="budget of 1,000"):
        load_image(str(tmp_path / "a.png"))
    monkeypatch.setenv("MESRGAN_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="MESRGAN_MAX_PIXELS must be a whole number"):
        read_image(tmp_path / "a.png")


def test_a_budget_above_pillows_limit_is_honoured_and_pillows_limit_restored(tmp_path, monkeypatch):
    Image.fromarray(_photo(30, 40)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse 1200 pixels
    assert read_image(tmp_path / "a.png", max_pixels=5000).pixels.shape == (30, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def _folder_with_bombs(root):
    root.mkdir()
    for i in range(4):
        Image.fromarray(_photo(36, 40, i)).save(root / f"img{i}.png")
    _png_bomb(root / "img1b_bomb.png", 60000, 60000)
    _png_bomb(root / "img2b_bomb16.png", 14000, 14000, 16, 0)
    return root


def test_upscale_goes_on_past_bombs_and_lists_them(tmp_path, weights, capsys):
    src = _folder_with_bombs(tmp_path / "in")
    rc = U.main([str(src), "-o", str(tmp_path / "out"), "--weights", weights, "--tile", "16"])
    err = capsys.readouterr().err
    assert rc == 1
    assert sorted(os.listdir(tmp_path / "out")) == [f"img{i}_x4.png" for i in range(4)]
    summary = err[err.index("upscaled 4 of 6 images; 2 failed:"):]
    assert "60000x60000 = 3,600,000,000 pixels" in summary and "14000x14000" in summary
    assert summary.count("--max-pixels") == 2
    assert "Traceback" not in err


def test_evaluate_reports_what_it_measured_past_bombs(tmp_path, weights, capsys):
    data = _folder_with_bombs(tmp_path / "data")
    report = tmp_path / "new" / "r.json"  # its folder does not exist yet: created
    rc = E.main(["--weights", weights, "--data", str(data), "--json", str(report), "-q"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert all(f"img{i} " in out for i in range(4)) and "mean" in out
    assert "2 image(s) failed" in err and "60000x60000" in err and "Traceback" not in err
    saved = json.loads(report.read_text())
    assert [r["name"] for r in saved["images"]] == [f"img{i}" for i in range(4)]
    assert sorted(f["name"] for f in saved["failures"]) == ["img1b_bomb", "img2b_bomb16"]


def test_training_data_skips_bombs_with_a_warning(tmp_path):
    data = _folder_with_bombs(tmp_path / "data")
    with pytest.warns(UserWarning) as caught:
        ds = CropDataset.from_folders([str(data)], 16, 4)
    said = sorted(str(w.message) for w in caught)
    assert len(said) == 2 and all("--max-pixels" in m and "MESRGAN_MAX_PIXELS" in m for m in said)
    assert re.match(r"skipping image: .*img1b_bomb\.png: 60000x60000 = 3,600,000,000 pixels", said[0])
    assert re.match(r"skipping image: .*img2b_bomb16\.png: 14000x14000 = 196,000,000 pixels", said[1])
    assert sorted(os.path.basename(s.name) for s in ds.sources) == [f"img{i}.png" for i in range(4)]
    assert ds[0]["hr"].shape == (3, 16, 16) and ds[5]["lr"].shape == (3, 4, 4)
    # the budget is what kept them out: raised, their (intact) headers pass the scan
    kept = scan_images(find_images(str(data)), 16, max_pixels=4_000_000_000)
    assert len(kept) == 6


def _train_args(out, data, val, *extra):
    return ["--model", "esrgan", "--out", str(out), "--stage", "psnr", "--crop-size", "32", "--batch-size", "2",
            "--psnr-iters", "1", "--log-every", "1", "--val-every", "1", "--save-every", "1",
            "--val-max-size", "32", "--workers", "0", "--data", str(data), "--val-data", str(val),
            "--no-tensorboard", "--g-opt", "num_blocks=1", "--g-opt", "features=8", "--g-opt", "growth=4", *extra]


def test_train_runs_past_bombs(tmp_path, capsys):
    data = _folder_with_bombs(tmp_path / "data")
    val = tmp_path / "val"
    val.mkdir()
    Image.fromarray(_photo(36, 36, 9)).save(val / "v.png")
    _png_bomb(val / "v_bomb.png", 60000, 60000)
    assert T.main(_train_args(tmp_path / "run", data, val)) == 0
    logged = capsys.readouterr()
    text = logged.out + logged.err
    assert "60000x60000" in text and "training on 4 images" in text


# ---------------------------------------------------------------------------------------------
# symlink loops


def test_folder_walk_enters_each_directory_once(tmp_path):
    root = tmp_path / "d"
    (root / "sub").mkdir(parents=True)
    for i, where in enumerate(["", "", "sub"]):
        Image.fromarray(_photo(20, 20, i)).save(root / where / f"i{i}.png")
    os.symlink(".", root / "self")                 # a loop
    os.symlink("..", root / "sub" / "up")          # another loop, through the parent
    os.symlink(str(root / "sub"), root / "again")  # the same folder under a second name
    os.symlink("i0.png", root / "i0_link.png")     # the same file under a second name
    found = find_images(str(root))
    assert sorted(os.path.basename(p) for p in found) == ["i0.png", "i1.png", "i2.png"]
    assert len(find_images([str(root), str(root / "sub")])) == 3
    ds = CropDataset.from_folders([str(root)], 16, 4)
    assert len(ds) == 3


# ---------------------------------------------------------------------------------------------
# files that are not checkpoints


def _not_checkpoints(folder):
    folder.mkdir()
    made = {}
    for name, obj, what in [("list", [1, 2], "a list of 2 items"), ("str", "weights", r"a str \('weights'\)"),
                            ("tensor", torch.randn(3, 4), r"a bare tensor of shape \(3, 4\)"),
                            ("none", None, "None"), ("empty", {}, "an empty dict"), ("int", 7, "a int")]:
        torch.save(obj, folder / f"{name}.pt")
        made[str(folder / f"{name}.pt")] = f"holds {what}, not a checkpoint"
    (folder / "text.pt").write_text("not a checkpoint\n")
    (folder / "zero.pt").write_bytes(b"")
    (folder / "noise.pt").write_bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
    for name in ("text", "zero", "noise"):
        made[str(folder / f"{name}.pt")] = "not a torch checkpoint of tensors"
    return made


def test_load_generator_refuses_non_checkpoints_in_one_line(tmp_path):
    for path, message in _not_checkpoints(tmp_path / "c").items():
        with pytest.raises(CheckpointError, match=message) as e:
            load_generator(path)
        assert path in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=r"without the key\(s\) \['optimizer_g'\]"):
        torch.save({"generator": {}}, tmp_path / "g.pt")
        read_checkpoint(tmp_path / "g.pt", require=("generator", "optimizer_g"))


def test_programs_refuse_non_checkpoints_with_exit_2(tmp_path, capsys):
    Image.fromarray(_photo(12, 12)).save(tmp_path / "a.png")
    for path, message in _not_checkpoints(tmp_path / "c").items():
        for run in (lambda: U.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "o"), "--weights", path]),
                    lambda: E.main(["--weights", path, "--data", str(tmp_path), "-q"])):
            assert run() == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and path in err and re.search(message, err), err


def test_train_resume_and_pretrained_refuse_non_checkpoints(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    Image.fromarray(_photo(36, 36)).save(data / "a.png")
    bad = _not_checkpoints(tmp_path / "c")
    list_pt = next(p for p in bad if p.endswith("list.pt"))
    run = tmp_path / "run"
    run.mkdir()
    os.replace(list_pt, run / "last.pt")
    with pytest.raises(SystemExit) as e:
        T.main(_train_args(run, data, data, "--resume"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert re.search(r"error: --resume: cannot load .*last\.pt': it holds a list of 2 items", err), err
    torch.save({"generator": {}, "stage": "psnr"}, run / "last.pt")
    with pytest.raises(SystemExit) as e:
        T.main(_train_args(run, data, data, "--resume"))
    assert e.value.code == 2 and "without the key(s)" in capsys.readouterr().err
    tensor_pt = next(p for p in bad if p.endswith("tensor.pt"))
    args = _train_args(tmp_path / "gan", data, data, "--pretrained", tensor_pt, "--perceptual-weight", "0")
    args[args.index("--stage") + 1] = "gan"
    with pytest.raises(SystemExit) as e:
        T.main(args + ["--gan-iters", "1"])
    assert e.value.code == 2
    assert re.search(r"error: --pretrained: cannot load .*tensor\.pt': it holds a bare tensor", capsys.readouterr().err)


# ---------------------------------------------------------------------------------------------
# output locations


def test_upscale_refuses_unwritable_outputs_before_any_work(tmp_path, weights, capsys):
    Image.fromarray(_photo(12, 12)).save(tmp_path / "a.png")
    (tmp_path / "afile").write_text("x")
    cases = [(str(tmp_path / "afile" / "out.png"), "afile: is a file, not a folder"),
             (str(tmp_path / "afile" / "dir"), "afile is a file"),
             (str(tmp_path / "afile"), "is a file, not a folder"),
             ("/proc/dir", "cannot create the folder in /proc"),
             ("/proc/out.png", "cannot create the folder in /proc|cannot write")]
    for out, message in cases:
        assert U.main([str(tmp_path / "a.png"), "-o", out, "--weights", weights]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: -o {out}: ") and re.search(message, err) and "model:" not in err, err
    # parents of a new output folder or file are created
    assert U.main([str(tmp_path / "a.png"), "-o", str(tmp_path / "x" / "y" / "s.png"), "--weights", weights]) == 0
    assert (tmp_path / "x" / "y" / "s.png").is_file()


def test_evaluate_refuses_unwritable_outputs_before_any_work(tmp_path, weights, capsys):
    Image.fromarray(_photo(12, 12)).save(tmp_path / "a.png")
    (tmp_path / "afile").write_text("x")
    for flags, message in [(["--save-dir", str(tmp_path / "afile" / "sd")], "--save-dir .*afile is a file"),
                           (["--json", str(tmp_path / "afile" / "r.json")], "--json .*afile: is a file"),
                           (["--json", str(tmp_path)], "--json .*is a folder; give a file name"),
                           (["--json", "/proc/nodir/r.json"],
                            "--json /proc/nodir/r.json: /proc/nodir: cannot create the folder in /proc")]:
        assert E.main(["--weights", weights, "--data", str(tmp_path), *flags]) == 2
        out, err = capsys.readouterr()
        assert re.search(message, err) and out == "" and "model:" not in err, err


def test_json_is_written_atomically(tmp_path):
    target = tmp_path / "r.json"
    target.write_text("old")
    write_text_atomic(str(target), '{"new": 1}')
    assert json.loads(target.read_text()) == {"new": 1}
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind
    with pytest.raises(TypeError):
        write_text_atomic(str(target), 12345)  # fails midway: the old content stays
    assert json.loads(target.read_text()) == {"new": 1} and os.listdir(tmp_path) == ["r.json"]


# ---------------------------------------------------------------------------------------------
# numeric flags


@pytest.mark.parametrize("program, flags, message", [
    (U, ["--quality", "500"], r"--quality: expected a whole number from 1 to 100, got 500"),
    (U, ["--quality", "0"], r"--quality: expected a whole number from 1 to 100, got 0"),
    (U, ["--tile", "-1"], r"--tile: expected 0 or a whole number >= 1, got -1"),
    (U, ["--tile-pad", "-3"], r"--tile-pad: expected a whole number from 0 to 1024, got -3"),
    (U, ["--max-pixels", "-5"], r"--max-pixels: expected a whole number >= 0, got -5"),
    (U, ["--scale", "3"], r"--scale: invalid choice: 3"),
    (E, ["--tile", "-2"], r"--tile: expected 0 or a whole number >= 1, got -2"),
    (E, ["--tile-pad", "5000"], r"--tile-pad: expected a whole number from 0 to 1024, got 5000"),
    (E, ["--max-pixels", "many"], r"--max-pixels: expected a whole number, got 'many'"),
    (E, ["--scale", "0"], r"--scale: invalid choice: 0"),
])
def test_numeric_flags_are_range_checked(tmp_path, capsys, program, flags, message):
    base = ([str(tmp_path / "a.png"), "-o", str(tmp_path / "o")] if program is U else []) + ["--weights", "w.pt"]
    with pytest.raises(SystemExit) as e:
        program.main(base + flags)
    assert e.value.code == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.parametrize("flags, message", [
    (["--psnr-lr", "-1"], "--psnr-lr must be a number > 0, got -1.0"),
    (["--lr-gamma", "0"], r"--lr-gamma must be a number in \(0, 1\]"),
    (["--lr-gamma", "5"], r"--lr-gamma must be a number in \(0, 1\]"),  # was accepted: a growing lr
    (["--beta1", "1.5"], r"--beta1 must be in \[0, 1\)"), (["--adv-weight", "-1"], "--adv-weight must be a number >= 0"),
    (["--seed", "-1"], "--seed must be a whole number >= 0"), (["--stop-after", "-2"], "--stop-after must be a whole number >= 0"),
    (["--batch-size", "0"], "--batch-size must be a positive whole number, got 0"),
    (["--crop-size", "100000"], "--crop-size must be at most 8192, got 100000"),
    (["--crop-size", "30"], "--crop-size must be a multiple of scale 4"),
])
def test_train_numeric_options_are_range_checked(flags, message, capsys):
    with pytest.raises(SystemExit, match=message):
        T.resolve_config(["--quick", *flags])
    assert T.main(["--quick", *flags]) == 2  # the program: one line, status 2 like argparse's own errors
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_write_image_quality_range(tmp_path):
    with pytest.raises(ValueError, match=r"quality must be an int from 1 to 100, got 500"):
        write_image(tmp_path / "a.jpg", _photo(8, 8).astype(np.float32) / 255, quality=500)


def test_model_report_sizes_are_range_checked(capsys):
    from mesrgan.models.__main__ import main as models_main
    with pytest.raises(SystemExit) as e:
        models_main(["--report", "--sizes", "0"])
    assert e.value.code == 2 and "--sizes: expected a whole number from 1 to 4096, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("module, argv", [
    ("mesrgan.training.config", ["--lr", "5"]),  # once --lr-gamma 5, silently
    ("mesrgan.upscale", ["a.png", "-o", "o", "--weights", "w.pt", "--qual", "5"]),
    ("mesrgan.evaluate", ["--weights", "w.pt", "--save", "d"]),
    ("mesrgan.export", ["--weights", "w.pt", "-o", "m.onnx", "--op", "18"]),
])
def test_no_program_accepts_abbreviated_flags(module, argv, capsys):
    import importlib
    with pytest.raises(SystemExit) as e:
        importlib.import_module(module).build_parser().parse_args(argv)
    assert e.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["mesrgan.demo", "benchmarks.report", "benchmarks.quality",
                                    "benchmarks.profile_models", "benchmarks.peak_memory", "benchmarks.bf16_block_rates",
                                    "mesrgan.models.__main__"])
def test_every_other_parser_refuses_abbreviations(module):
    import importlib
    import inspect
    source = inspect.getsource(importlib.import_module(module))
    assert source.count("ArgumentParser(") == source.count("ArgumentParser(allow_abbrev=False")
