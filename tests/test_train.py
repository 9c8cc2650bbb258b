"""Tests for python -m mesrgan.train: config, both stages, checkpoints, resume, errors, DDP."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mesrgan import train as T

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The networks here are tiny: one thread is faster than two, and much faster on a busy machine.
ENV1 = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(h, w, seed):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    a = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
    return np.clip(a + rng.integers(-8, 9, size=(h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny training and validation folders, and a random VGG19 file holding conv1_1..conv1_2
    (enough for --perceptual-layer relu1_2)."""
    from mesrgan.models import VGGFeatureExtractor

    root = tmp_path_factory.mktemp("assets")
    for i, (h, w) in enumerate([(48, 56), (40, 64), (64, 48)]):
        d = root / "train" / ("sub" if i == 2 else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(h, w, i)).save(d / f"img{i}.png")
    (root / "val").mkdir()
    Image.fromarray(_photo(44, 40, 9)).save(root / "val" / "v.png")
    torch.manual_seed(0)
    vgg = root / "vgg_tiny.pth"
    torch.save(VGGFeatureExtractor(layer="relu1_2", pretrained=False).state_dict(), vgg)
    return {"train": str(root / "train"), "val": str(root / "val"), "vgg": str(vgg)}


def tiny(assets, out, *extra, model="esrgan"):
    """A run small enough for a test: 8-feature, 1-block networks, 32-pixel crops, batch 2."""
    g = {"srgan": ["num_blocks=1", "features=8"], "esrgan": ["num_blocks=1", "features=8", "growth=4"],
         "mesrgan": ["num_blocks=1", "features=8", "growth=4"]}[model]
    args = ["--model", model, "--out", str(out), "--crop-size", "32", "--batch-size", "2",
            "--psnr-iters", "3", "--gan-iters", "3", "--psnr-milestones", "2", "--gan-milestones", "2",
            "--log-every", "1", "--val-every", "3", "--save-every", "2", "--val-max-size", "32",
            "--workers", "0", "--data", assets["train"], "--val-data", assets["val"],
            "--d-opt", "features=8", "--perceptual-layer", "relu1_2", "--vgg-weights", assets["vgg"],
            "--no-tensorboard"]
    for o in g:
        args += ["--g-opt", o]
    return args + list(extra)


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(records):
    return [{k: v for k, v in r.items() if k not in ("time", "it_per_s")} for r in records]


# ---------------------------------------------------------------------------------------------
def test_help_lists_the_flags():
    r = subprocess.run([sys.executable, "-m", "mesrgan.train", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env=ENV1)
    assert r.returncode == 0, r.stderr
    for flag in ("--model", "--config", "--stage", "--quick", "--resume", "--data", "--vgg-weights",
                 "--amp", "--channels-last", "--ema", "--workers", "--psnr-lr", "--gan-milestones",
                 "torchrun"):
        assert flag in r.stdout


def test_both_stages_write_loadable_checkpoints(assets, tmp_path):
    from mesrgan.models import load_generator

    out = tmp_path / "run"
    assert T.main(tiny(assets, out, "--ema", "0.9")) == 0
    for f in ("last.pt", "best.pt", "stage1.pt", "stage1_best.pt", "metrics.jsonl", "config.toml"):
        assert (out / f).is_file(), f
    samples = sorted(os.listdir(out / "samples"))
    assert samples == ["gan_0000003.png", "psnr_0000003.png"]
    im = Image.open(out / "samples" / samples[0])
    assert im.size == (3 * 32 + 8, 32)
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["format"] == "mesrgan-generator-v1" and ck["model"] == "esrgan"
    assert {"generator", "generator_ema", "config", "optimizer_g", "optimizer_d", "discriminator",
            "scheduler_g", "rng", "stage", "iteration", "train_config"} <= set(ck)
    assert (ck["stage"], ck["iteration"]) == ("gan", 3)
    for name in ("last.pt", "best.pt", "stage1.pt"):
        g, info = load_generator(str(out / name))
        assert info["model"] == "esrgan" and info["config"]["features"] == 8
        assert g(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    recs = _metrics(out)
    train = [r for r in recs if "val" not in r]
    assert [(r["stage"], r["iteration"]) for r in train] == [("psnr", 1), ("psnr", 2), ("psnr", 3),
                                                             ("gan", 1), ("gan", 2), ("gan", 3)]
    assert {"l_pix", "l_adv", "l_per", "l_d"} <= set(train[-1])
    assert train[1]["lr"] == 2e-4 and train[2]["lr"] == 1e-4  # halved after the milestone (2)
    val = [r for r in recs if r.get("val")]
    assert len(val) == 2 and all(np.isfinite(r["val_psnr"]) and r["val_bicubic_psnr"] > 10 for r in val)


def test_srgan_and_mesrgan_run(assets, tmp_path):
    assert T.main(tiny(assets, tmp_path / "s", "--psnr-iters", "1", "--gan-iters", "1", model="srgan")) == 0
    assert T.main(tiny(assets, tmp_path / "m", "--stage", "psnr", "--psnr-iters", "1", model="mesrgan")) == 0
    assert (tmp_path / "m" / "stage1.pt").is_file() and not (tmp_path / "m" / "stage1_best.pt").exists()
    # stage 2 alone starts from the stage-1 generator of the same run folder
    assert T.main(tiny(assets, tmp_path / "m", "--stage", "gan", "--gan-iters", "1", model="mesrgan")) == 0
    assert torch.load(tmp_path / "m" / "last.pt", weights_only=True)["stage"] == "gan"


@pytest.mark.cuda
@pytest.mark.parametrize("extra", [("--amp", "bf16", "--channels-last"), ("--amp", "fp16", "--ema", "0.999")])
def test_cuda_runs_both_stages(assets, tmp_path, extra):
    """`--device cuda` (no index) with autocast, channels_last and EMA: both stages run and save."""
    assert T.main(tiny(assets, tmp_path / "c", "--device", "cuda", *extra, "--psnr-iters", "2",
                       "--gan-iters", "2", model="mesrgan")) == 0
    ck = torch.load(tmp_path / "c" / "last.pt", weights_only=True, map_location="cpu")
    assert ck["stage"] == "gan"


def test_a_few_steps_reduce_the_loss(assets, tmp_path):
    out = tmp_path / "fit"
    T.main(tiny(assets, out, "--stage", "psnr", "--psnr-iters", "24", "--psnr-lr", "2e-3",
                "--psnr-milestones", "1000", "--val-every", "1000", "--save-every", "1000"))
    losses = [r["l_pix"] for r in _metrics(out) if "l_pix" in r]
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < 0.7 * np.mean(losses[:3])


def test_resume_reproduces_the_uninterrupted_run(assets, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert T.main(tiny(assets, a)) == 0
    # Interrupted twice: inside stage 1, then exactly at the stage boundary... and resumed.
    assert T.main(tiny(assets, b, "--stop-after", "2")) == 0
    assert torch.load(b / "last.pt", weights_only=True)["iteration"] == 2
    assert T.main(tiny(assets, b, "--resume", "--stop-after", "1")) == 0
    ck = torch.load(b / "last.pt", weights_only=True)
    assert (ck["stage"], ck["iteration"]) == ("gan", 0)
    assert T.main(tiny(assets, b, "--resume", "--stop-after", "1")) == 0
    assert T.main(tiny(assets, b, "--resume")) == 0
    la, lb = _losses(_metrics(a)), _losses(_metrics(b))
    assert la == lb  # step for step, exactly
    ca, cb = (torch.load(p / "last.pt", weights_only=True) for p in (a, b))
    for key in ("generator", "discriminator"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)


def test_stage2_without_vgg_weights_fails_at_start(assets, tmp_path):
    out = tmp_path / "novgg"
    args = tiny(assets, out, "--vgg-weights", str(tmp_path / "missing.pth"))
    with pytest.raises(SystemExit, match="stage 2 needs the VGG19 ImageNet weights"):
        T.main(args)
    assert not (out / "metrics.jsonl").exists()  # nothing was trained first
    # stage 1 alone does not need them
    assert T.main(tiny(assets, out, "--stage", "psnr", "--psnr-iters", "1",
                       "--vgg-weights", str(tmp_path / "missing.pth"))) == 0


def test_quick_runs_stage2_without_vgg_and_says_so(assets, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    args = [a for a in tiny(assets, tmp_path / "q", "--quick", "--psnr-iters", "1", "--gan-iters", "1",
                            "--crop-size", "32", "--batch-size", "2", "--val-max-size", "32")]
    i = args.index("--vgg-weights")
    del args[i:i + 2]
    assert T.main(args) == 0
    out = capsys.readouterr().out
    assert "perceptual (VGG) term of stage 2 is OFF" in out
    rec = [r for r in _metrics(tmp_path / "q") if r["stage"] == "gan" and "l_pix" in r]
    assert rec and "l_per" not in rec[0]


def test_clear_errors(assets, tmp_path):
    (tmp_path / "empty").mkdir()
    no_data = [a if a != assets["train"] else str(tmp_path / "empty") for a in tiny(assets, tmp_path / "o")]
    with pytest.raises(SystemExit, match="no images"):
        T.main(no_data)
    with pytest.raises(SystemExit, match="starts from a stage-1 generator"):
        T.main(tiny(assets, tmp_path / "fresh", "--stage", "gan"))
    with pytest.raises(SystemExit, match="no checkpoint"):
        T.main(tiny(assets, tmp_path / "fresh2", "--resume"))
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        T.main(tiny(assets, tmp_path / "amp", "--device", "cpu", "--amp", "bf16"))


def test_bundled_default_data(tmp_path):
    out = tmp_path / "bundled"
    assert T.main(["--model", "esrgan", "--out", str(out), "--stage", "psnr", "--psnr-iters", "1",
                   "--batch-size", "1", "--crop-size", "32", "--val-max-size", "32", "--workers", "0",
                   "--g-opt", "num_blocks=1", "--g-opt", "features=8", "--g-opt", "growth=4",
                   "--no-tensorboard"]) == 0
    val = [r for r in _metrics(out) if r.get("val")]
    assert len(val) == 1 and val[0]["val_bicubic_psnr"] > 15


def test_sigterm_saves_and_resume_continues(assets, tmp_path):
    out = tmp_path / "sig"
    args = tiny(assets, out, "--stage", "psnr", "--psnr-iters", "100000", "--save-every", "100000",
                "--val-every", "100000")
    p = subprocess.Popen([sys.executable, "-m", "mesrgan.train", *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=ENV1)
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("[psnr] 2/"):
                p.send_signal(signal.SIGTERM)
                break
        rest, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 128 + signal.SIGTERM, "".join(lines) + rest
    assert "continue with --resume" in rest
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["stage"] == "psnr" and ck["iteration"] >= 2


def test_ddp_two_cpu_processes_match_one(assets, tmp_path):
    """torchrun with 2 gloo processes: each takes half of every batch; stage 1 of ESRGAN (no batch
    norm) then follows the single-process run up to float summation order."""
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--psnr-iters", "2", "--gan-iters", "1", "--batch-size", "4"]
    assert T.main(tiny(assets, one, *common)) == 0
    # Its own process group, so that a hang cannot leave worker processes behind.
    p = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "mesrgan.train", *tiny(assets, two, *common)], cwd=ROOT, env=ENV1,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("the 2-process run did not finish in 180 s")
    r = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("[psnr] 1/2") == 1 and "done" in r.stdout  # only rank 0 logs
    m1, m2 = _metrics(one), _metrics(two)
    assert [(x["stage"], x["iteration"]) for x in m1] == [(x["stage"], x["iteration"]) for x in m2]
    for x, y in zip(m1, m2):
        if x["stage"] == "psnr" and "l_pix" in x:
            assert y["l_pix"] == pytest.approx(x["l_pix"], rel=1e-4, abs=1e-6)
    assert (two / "last.pt").is_file()
