"""Tests for mesrgan.training.config: the paper's defaults, TOML round trip, precedence, checks."""
import os

import pytest

from mesrgan.training import config as C
from mesrgan.training import lr_at


def test_defaults_are_the_papers():
    e = C.resolve_config(["--model", "esrgan"])
    assert (e["crop_size"], e["batch_size"], e["scale"]) == (128, 16, 4)
    assert (e["psnr_iters"], e["psnr_lr"], e["psnr_milestones"], e["psnr_loss"]) == (200000, 2e-4, [100000], "l1")
    assert (e["gan_iters"], e["gan_lr"], e["gan_milestones"]) == (200000, 1e-4, [50000, 100000, 150000])
    assert (e["pixel_loss"], e["pixel_weight"], e["perceptual_weight"], e["perceptual_layer"],
            e["adv_weight"], e["gan_type"]) == ("l1", 1e-2, 1.0, "conv5_4", 5e-3, "ragan")
    s = C.resolve_config(["--model", "srgan"])
    assert (s["crop_size"], s["psnr_loss"], s["pixel_loss"], s["pixel_weight"], s["adv_weight"],
            s["perceptual_weight"], s["perceptual_layer"], s["gan_type"]) == (96, "mse", "mse", 1.0, 1e-3, 6e-3,
                                                                              "relu5_4", "gan")
    m = C.resolve_config([])
    assert m["model"] == "mesrgan" and m["out"] == os.path.join("runs", "mesrgan") and m["stage"] == "all"
    q = C.resolve_config(["--quick", "--psnr-iters", "7"])
    assert q["psnr_iters"] == 7 and q["gan_iters"] == C.QUICK["gan_iters"] and q["crop_size"] == 64
    assert lr_at(2e-4, [100000], 0.5, 99999) == 2e-4 and lr_at(2e-4, [100000], 0.5, 100000) == 1e-4
    assert lr_at(1e-4, [50000, 100000, 150000], 0.5, 150000) == 1.25e-5


def test_config_file_round_trip_and_precedence(tmp_path):
    cfg = C.resolve_config(["--model", "srgan", "--crop-size", "48", "--data", "a", "--data", "b",
                            "--g-opt", "num_blocks=3", "--ema", "0.99", "--channels-last",
                            "--psnr-milestones", "10,20", "--out", str(tmp_path / "o")])
    path = tmp_path / "c.toml"
    path.write_text(C.dump_toml({k: v for k, v in cfg.items() if k not in C.RUN_ONLY}))
    again = C.resolve_config(["--config", str(path)])
    assert again == cfg
    # flags beat the file; the file beats the defaults
    over = C.resolve_config(["--config", str(path), "--crop-size", "64", "--g-opt", "features=16"])
    assert over["crop_size"] == 64 and over["generator"] == {"num_blocks": 3, "features": 16}
    assert over["psnr_milestones"] == [10, 20] and over["ema"] == 0.99
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "esrgan"\ncrop_sise = 64\n')
    with pytest.raises(SystemExit, match="unknown key"):
        C.resolve_config(["--config", str(bad)])
    with pytest.raises(SystemExit, match="multiple of scale"):
        C.resolve_config(["--crop-size", "30"])
    with pytest.raises(SystemExit, match="set with --scale"):
        C.resolve_config(["--g-opt", "scale=2"])
    with pytest.raises(SystemExit, match="no such file"):
        C.resolve_config(["--config", str(tmp_path / "nope.toml")])


def test_quick_has_its_own_default_folder():
    assert C.resolve_config(["--quick"])["out"] == os.path.join("runs", "mesrgan-quick")
    assert C.resolve_config(["--quick", "--model", "srgan"])["out"] == os.path.join("runs", "srgan-quick")
    assert C.resolve_config(["--model", "srgan"])["out"] == os.path.join("runs", "srgan")
    assert C.resolve_config(["--quick", "--out", "x"])["out"] == "x"


@pytest.mark.parametrize("cpus, expected", [(1, 1), (2, 2), (3, 3), (4, 4), (64, 4)])
def test_default_workers_follow_the_cpus_of_the_process(monkeypatch, cpus, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert C.default_workers() == expected


def test_default_workers_fit_this_machine():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfg = C.resolve_config([])
    assert cfg["workers"] == min(4, cpus)
    assert C.resolve_config(["--workers", "0"])["workers"] == 0


def test_run_only_flags_are_not_part_of_the_run(tmp_path):
    cfg = C.resolve_config(["--overwrite", "--stop-after", "3", "--out", str(tmp_path)])
    assert cfg["overwrite"] is True and cfg["resume"] is False and cfg["stop_after"] == 3
    text = C.dump_toml({k: v for k, v in cfg.items() if k not in C.RUN_ONLY})
    assert "overwrite" not in text and "stop_after" not in text and "resume" not in text
    with pytest.raises(SystemExit, match="--resume continues a run and --overwrite deletes it"):
        C.resolve_config(["--resume", "--overwrite"])


def test_resume_command_adds_resume_and_the_vgg_flag():
    argv = ["--model", "esrgan", "--out", "my run", "--vgg-weights", "old.pth", "--overwrite",
            "--vgg-weights=x.pth", "--resume", "--g-opt", "num_blocks=1"]
    assert C.resume_command(argv) == ("python -m mesrgan.train --model esrgan --out 'my run' --g-opt num_blocks=1 "
                                      "--resume --vgg-weights PATH")
    assert C.resume_command(["--stage", "gan"], resume=False) == \
        "python -m mesrgan.train --stage gan --vgg-weights PATH"


def test_compile_is_off_by_default_a_flag_and_a_checked_key(tmp_path):
    assert C.resolve_config([])["compile"] is False
    cfg = C.resolve_config(["--compile", "--out", str(tmp_path / "o")])
    assert cfg["compile"] is True
    path = tmp_path / "c.toml"
    path.write_text(C.dump_toml({k: v for k, v in cfg.items() if k not in C.RUN_ONLY}))
    assert "compile = true" in path.read_text() and C.resolve_config(["--config", str(path)]) == cfg
    path.write_text("compile = 1\n")  # TOML's 1 is not true
    with pytest.raises(SystemExit, match=r"compile in --config .* must be true or false"):
        C.resolve_config(["--config", str(path)])
