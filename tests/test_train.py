"""Tests for python -m mesrgan.train: both stages, checkpoints, resume, errors, DDP, and the program's
behaviour around them: no VGG weights, progress, stops, run folders and their lock, clean resume."""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mesrgan import train as T
from mesrgan.training import EXIT_NEEDS_VGG

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
    (root / "big").mkdir()  # for crops of 128: iterations slow enough to signal in the middle of one
    Image.fromarray(_photo(136, 144, 5)).save(root / "big" / "b.png")
    torch.manual_seed(0)
    vgg = root / "vgg_tiny.pth"
    torch.save(VGGFeatureExtractor(layer="relu1_2", pretrained=False).state_dict(), vgg)
    return {"train": str(root / "train"), "val": str(root / "val"), "big": str(root / "big"), "vgg": str(vgg)}


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


def _without(args, flag, has_value=True):
    """``args`` without ``flag`` (and its value)."""
    i = args.index(flag)
    return args[:i] + args[i + 1 + int(has_value):]


# ``python -m mesrgan.train`` whose first stop signal, once handled as usual, holds the main thread
# until a second one comes. Python runs a handler only when the C++ call in progress returns (the
# whole backward is one), so the rest of the iteration after the first signal can be a few ms:
# too short a window to land the second signal "within the same iteration" reliably under load.
_HOLD_AFTER_FIRST_STOP = """
import sys, time
from mesrgan.training import stops
handle = stops.StopRequests._handle
def hold(self, signum, frame):
    handle(self, signum, frame)  # the second signal raises StopNow here, which leaves the sleep below
    time.sleep(60)
stops.StopRequests._handle = hold
from mesrgan import train
sys.exit(train.main(sys.argv[1:]))
"""


def _spawn(args, env=None, hold_after_first_stop=False):
    """``python -m mesrgan.train ARGS`` in its own process group, stdout and stderr merged; killed
    after 180 s whatever happens, so that a hang fails the test instead of blocking it."""
    program = ["-c", _HOLD_AFTER_FIRST_STOP] if hold_after_first_stop else ["-m", "mesrgan.train"]
    p = subprocess.Popen([sys.executable, *program, *args], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=env or ENV1, start_new_session=True)
    watchdog = threading.Timer(180, lambda: _kill_group(p))
    watchdog.daemon = True
    watchdog.start()
    p.watchdog = watchdog
    return p


def _kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _read_until(p, text, lines):
    """Read ``p``'s output into ``lines`` up to the first line containing ``text``."""
    for line in p.stdout:
        lines.append(line)
        if text in line:
            return line
    raise AssertionError(f"{text!r} never came; output:\n" + "".join(lines))


def _finish(p, lines):
    rest, _ = p.communicate(timeout=180)
    p.watchdog.cancel()
    lines.append(rest)
    return "".join(lines)


# ---------------------------------------------------------------------------------------------
def test_help_lists_the_flags():
    r = subprocess.run([sys.executable, "-m", "mesrgan.train", "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, env=ENV1)
    assert r.returncode == 0, r.stderr
    for flag in ("--model", "--config", "--stage", "--quick", "--resume", "--data", "--vgg-weights",
                 "--amp", "--channels-last", "--compile", "--ema", "--workers", "--psnr-lr", "--gan-milestones",
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


def _refused(args, message, capsys):
    """The program refuses ``args`` with one line naming the problem and exit status 2."""
    assert T.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err


def test_clear_errors(assets, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    no_data = [a if a != assets["train"] else str(tmp_path / "empty") for a in tiny(assets, tmp_path / "o")]
    _refused(no_data, "no images", capsys)
    _refused(tiny(assets, tmp_path / "fresh", "--stage", "gan"), "starts from a stage-1 generator", capsys)
    _refused(tiny(assets, tmp_path / "fresh2", "--resume"), "no checkpoint", capsys)
    _refused(tiny(assets, tmp_path / "amp", "--device", "cpu", "--amp", "fp16"), "--amp fp16 needs a CUDA device", capsys)
    not_vgg = tmp_path / "not_vgg.pth"
    torch.save({"something": torch.ones(2)}, not_vgg)
    _refused(tiny(assets, tmp_path / "badvgg", "--vgg-weights", str(not_vgg)),  # at start: nothing trained
             re.escape(f"{not_vgg} is not torchvision's VGG19 ImageNet checkpoint"), capsys)
    assert not (tmp_path / "badvgg" / "metrics.jsonl").exists()


def test_amp_bf16_on_cpu_trains_both_stages(assets, tmp_path):
    """--amp bf16 on the CPU: autocast runs the networks in bfloat16, the weights stay float32, and the
    losses stay close to a float32 run's (bfloat16 keeps about 3 significant digits)."""
    runs = {}
    for amp in ("none", "bf16"):
        out = tmp_path / amp
        assert T.main(tiny(assets, out, "--device", "cpu", "--amp", amp)) == 0
        runs[amp] = [r for r in _metrics(out) if "l_pix" in r]
        ck = torch.load(out / "last.pt", weights_only=True)
        assert all(t.dtype == torch.float32 for t in ck["generator"].values() if t.is_floating_point())
    assert [r["iteration"] for r in runs["none"]] == [r["iteration"] for r in runs["bf16"]]
    first = runs["none"][0]["l_pix"], runs["bf16"][0]["l_pix"]
    assert first[0] != first[1] and abs(first[0] - first[1]) < 0.02 * abs(first[0]), first


def test_a_missing_vgg_weights_file_is_named(assets, tmp_path, capsys):
    missing = tmp_path / "typo.pth"
    out = tmp_path / "o"
    assert T.main(tiny(assets, out, "--vgg-weights", str(missing), "--psnr-iters", "1")) == EXIT_NEEDS_VGG
    text = capsys.readouterr().out
    assert text.count(f"the file given with --vgg-weights, {missing}, does not exist") == 2  # at start, at the end
    assert torch.load(out / "last.pt", weights_only=True)["stage"] == "gan"
    # stage 1 alone does not need them
    assert T.main(tiny(assets, tmp_path / "p", "--stage", "psnr", "--psnr-iters", "1",
                       "--vgg-weights", str(missing))) == 0


def test_bundled_default_data(tmp_path):
    out = tmp_path / "bundled"
    assert T.main(["--model", "esrgan", "--out", str(out), "--stage", "psnr", "--psnr-iters", "1",
                   "--batch-size", "1", "--crop-size", "32", "--val-max-size", "32", "--workers", "0",
                   "--g-opt", "num_blocks=1", "--g-opt", "features=8", "--g-opt", "growth=4",
                   "--no-tensorboard"]) == 0
    val = [r for r in _metrics(out) if r.get("val")]
    assert len(val) == 1 and val[0]["val_bicubic_psnr"] > 15


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


# ---- no VGG19 weights: stage 1 runs, then the run saves and says how to go on --------------------
def test_main_job_offline_without_vgg_weights(assets, tmp_path, monkeypatch):
    """A machine with no VGG19 file: a warning at start naming the flags, stage 1 trains, the run
    saves at the start of stage 2 and exits with EXIT_NEEDS_VGG and the command to continue; that
    command (with the file) gives exactly the run that had the weights from the start."""
    home = tmp_path / "torch_home"  # an empty hub cache
    monkeypatch.setenv("TORCH_HOME", str(home))
    env = {**ENV1, "TORCH_HOME": str(home)}
    out, ref = tmp_path / "offline", tmp_path / "ref"
    args = _without(tiny(assets, out), "--vgg-weights")
    p = _spawn(args, env=env)
    text = _finish(p, [])
    assert p.returncode == EXIT_NEEDS_VGG == 3, text
    cache = os.path.join(str(home), "hub", "checkpoints", "vgg19-dcbb9e9d.pth")
    warning = text.index("warning: stage 2 needs VGG19 weights")
    assert warning < text.index("stage psnr: iterations 1..3") < text.index("[psnr] 3/3")
    assert "--vgg-weights PATH" in text[warning:] and cache in text
    for api_word in ("weights=", "pretrained=", "Downloading", "Traceback"):
        assert api_word not in text
    hint = text.splitlines()[text.splitlines().index("Continue with:") + 1].strip()
    assert hint.startswith("python -m mesrgan.train ") and hint.endswith(" --resume --vgg-weights PATH")
    ck = torch.load(out / "last.pt", weights_only=True)
    assert (ck["stage"], ck["iteration"]) == ("gan", 0) and (out / "stage1.pt").is_file()
    assert [r["iteration"] for r in _metrics(out) if "l_pix" in r] == [1, 2, 3]

    # Resumed still without them: it stops at once, touching nothing.
    before = (out / "last.pt").read_bytes()
    assert T.main(args + ["--resume"]) == EXIT_NEEDS_VGG
    assert (out / "last.pt").read_bytes() == before
    # With the file in torch's hub cache (a copy of the run folder), no flag is needed.
    shutil.copytree(out, tmp_path / "cached")
    os.makedirs(os.path.dirname(cache))
    shutil.copy(assets["vgg"], cache)
    cached_args = _without(args, "--out") + ["--out", str(tmp_path / "cached"), "--resume"]
    assert T.main(cached_args) == 0
    os.unlink(cache)
    # The printed command, with the file.
    words = shlex.split(hint)[3:]
    words[-1] = assets["vgg"]
    assert T.main(words) == 0
    assert T.main(tiny(assets, ref)) == 0  # the weights from the start
    assert _losses(_metrics(out)) == _losses(_metrics(ref)) == _losses(_metrics(tmp_path / "cached"))
    assert {"l_per"} <= set([r for r in _metrics(out) if r["stage"] == "gan"][0])


# ---- progress ------------------------------------------------------------------------------------
def test_progress_from_the_first_step_and_the_run_folder_at_start(assets, tmp_path, capsys):
    out = tmp_path / "p"
    assert T.main(tiny(assets, out, "--stage", "psnr", "--psnr-iters", "3", "--log-every", "100")) == 0
    text = capsys.readouterr().out
    folder = text.index(f"run folder {out}: last.pt")
    for what in ("best.pt", "stage1.pt", "metrics.jsonl", "samples/", "config.toml"):
        assert what in text[folder:text.index("\n", folder)]
    lines = text.splitlines()
    first = [ln for ln in lines if ln.startswith("[psnr] 1/3 l_pix ")]
    assert len(first) == 1 and " it/s | ETA " in first[0]  # the first step, though --log-every is 100
    assert not any(ln.startswith("[psnr] 2/3") for ln in lines)  # then plain lines at log points
    assert any(ln.startswith("[psnr] 3/3") for ln in lines)  # (and the end of the stage)
    assert [r["iteration"] for r in _metrics(out) if "l_pix" in r] == [3]


# ---- stops ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_one_stop_signal_says_so_saves_and_resumes(assets, tmp_path, sig):
    out = tmp_path / "sig"
    args = tiny(assets, out, "--stage", "psnr", "--psnr-iters", "100000", "--save-every", "100000",
                "--val-every", "100000")
    p = _spawn(args)
    lines = []
    _read_until(p, "[psnr] 2/", lines)
    os.killpg(p.pid, sig)  # as a terminal's Ctrl-C does: the whole process group
    text = _finish(p, lines)
    name = signal.Signals(sig).name
    assert p.returncode == 128 + sig, text
    said = text.index(f"{name}: stopping after the current iteration")
    assert said < text.index(f"stopped (signal {name}) at stage psnr iteration")
    assert "continue with --resume" in text and "Traceback" not in text
    ck = torch.load(out / "last.pt", weights_only=True)
    assert ck["stage"] == "psnr" and ck["iteration"] >= 2
    resumed = _without(args, "--psnr-iters") + ["--psnr-iters", str(ck["iteration"] + 2), "--resume"]
    assert T.main(resumed) == 0
    assert [r["iteration"] for r in _metrics(out) if "l_pix" in r] == list(range(1, ck["iteration"] + 3))


def _slow(assets, out, *extra):
    """Iterations of about half a second (crops of 128, a wider generator): time to signal in one."""
    return ["--model", "esrgan", "--out", str(out), "--stage", "psnr", "--crop-size", "128", "--batch-size", "4",
            "--psnr-iters", "100000", "--save-every", "100000", "--val-every", "100000", "--log-every", "1",
            "--data", assets["big"], "--val-data", assets["val"], "--no-tensorboard",
            "--g-opt", "num_blocks=6", "--g-opt", "features=48", "--g-opt", "growth=24", *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_second_stop_signal_stops_at_once_and_keeps_the_checkpoint(assets, tmp_path, sig):
    out = tmp_path / "twice"
    assert T.main(_slow(assets, out, "--stop-after", "1", "--workers", "0")) == 0
    before = (out / "last.pt").read_bytes()
    p = _spawn(_slow(assets, out, "--resume", "--workers", "1"), hold_after_first_stop=True)
    lines = []
    # after an iteration has run: the DataLoader has forked its worker (a handler run in the fork's
    # hooks has its exception dropped; the loop's own check covers that, tested below)
    _read_until(p, "[psnr] 2/", lines)
    os.killpg(p.pid, sig)
    _read_until(p, "stopping after the current iteration", lines)
    os.killpg(p.pid, sig)  # within the same iteration
    text = _finish(p, lines)
    name = signal.Signals(sig).name
    assert p.returncode == 128 + sig, text
    assert f"stopped at once (second {name})" in text and "(stage psnr, iteration 1), is kept" in text
    assert "Traceback" not in text and "Error" not in text
    assert (out / "last.pt").read_bytes() == before  # the last checkpoint, untouched
    assert sorted(os.listdir(out)) == [".lock", "config.toml", "last.pt", "metrics.jsonl"]
    assert (out / ".lock").read_text() == ""  # released
    deadline = time.monotonic() + 30
    while True:  # the DataLoader worker went with it
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a process of the stopped run is still alive"
        time.sleep(0.1)


# ---- run folders ---------------------------------------------------------------------------------
def test_quick_after_an_interrupted_main_run_leaves_it_alone(assets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default folders, runs/<model> and runs/<model>-quick
    main_job = _without(tiny(assets, "unused"), "--out")
    assert T.main(main_job + ["--stop-after", "2"]) == 0
    main_dir = tmp_path / "runs" / "esrgan"
    saved = {f: (main_dir / f).read_bytes() for f in ("last.pt", "metrics.jsonl", "config.toml")}
    quick = main_job + ["--quick", "--psnr-iters", "1", "--gan-iters", "1", "--crop-size", "32",
                        "--batch-size", "2", "--val-max-size", "32"]
    assert T.main(quick) == 0
    assert torch.load(tmp_path / "runs" / "esrgan-quick" / "last.pt", weights_only=True)["stage"] == "gan"
    assert {f: (main_dir / f).read_bytes() for f in saved} == saved
    assert T.main(quick) == 2  # and a second demo does not replace the first silently either
    assert "already holds a run" in capsys.readouterr().err
    assert T.main(main_job + ["--resume"]) == 0
    ck = torch.load(main_dir / "last.pt", weights_only=True)
    assert (ck["stage"], ck["iteration"], ck["train_config"]["crop_size"]) == ("gan", 3, 32)


def test_a_new_run_over_a_checkpoint_is_refused_until_overwrite(assets, tmp_path, capsys):
    out = tmp_path / "o"
    assert T.main(tiny(assets, out, "--stop-after", "2")) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert T.main(tiny(assets, out)) == 2
    err = capsys.readouterr().err
    for way in ("--resume", "--out", "--overwrite"):
        assert way in err
    assert (out / "last.pt").read_bytes() == before
    assert T.main(tiny(assets, out, "--overwrite", "--stage", "psnr", "--psnr-iters", "1")) == 0
    assert [(r["stage"], r["iteration"]) for r in _metrics(out)] == [("psnr", 1), ("psnr", 1)]  # loss, val
    assert os.listdir(out / "samples") == ["psnr_0000001.png"]


def test_two_concurrent_runs_into_one_folder(assets, tmp_path, capsys):
    out = tmp_path / "shared"
    args = tiny(assets, out, "--stage", "psnr", "--psnr-iters", "100000", "--save-every", "100000",
                "--val-every", "100000")
    p = _spawn(args)
    lines = []
    try:
        _read_until(p, "[psnr] 2/", lines)
        for second in (tiny(assets, out, "--stage", "psnr"), tiny(assets, out, "--stage", "psnr", "--resume")):
            with pytest.raises(SystemExit, match=rf"in use by a live run \(pid {p.pid} on "):
                T.main(second)
        logged = len(_metrics(out))
        _read_until(p, "[psnr] 20/", lines)
        assert len(_metrics(out)) > logged >= 2  # the live run's log is intact and growing
    finally:
        os.killpg(p.pid, signal.SIGKILL)  # killed: its lock is stale
        p.communicate()
        p.watchdog.cancel()
    capsys.readouterr()
    # the killed run left no checkpoint, but its metrics.jsonl and config.toml: still a run to keep
    assert T.main(tiny(assets, out, "--stage", "psnr", "--psnr-iters", "2")) == 2
    said = capsys.readouterr()
    assert "already holds a run (metrics.jsonl, config.toml)" in said.err
    assert f"took over the lock of {out} from a run that ended without releasing it (pid {p.pid} " in said.out
    assert T.main(tiny(assets, out, "--stage", "psnr", "--psnr-iters", "2", "--overwrite")) == 0
    assert [r["iteration"] for r in _metrics(out) if "l_pix" in r] == [1, 2]  # the new run's log alone


# ---- resume after kill -9 ------------------------------------------------------------------------
def test_resume_after_kill_logs_every_iteration_once(assets, tmp_path, capsys):
    """kill -9 between checkpoints: the steps after the last checkpoint are cut from metrics.jsonl
    and run again, a killed save's temporary file is removed, and the log equals an unbroken run's."""
    out, ref = tmp_path / "killed", tmp_path / "unbroken"
    common = ("--stage", "psnr", "--save-every", "5", "--val-every", "100000")
    p = _spawn(tiny(assets, out, *common, "--psnr-iters", "100000"))
    lines = []
    try:
        _read_until(p, "[psnr] 7/", lines)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        p.watchdog.cancel()
    k = torch.load(out / "last.pt", weights_only=True)["iteration"]
    logged = max(r["iteration"] for r in _metrics(out))
    assert k % 5 == 0 and logged >= 7 and logged >= k
    torn = out / ".last.pt.tmp999999"  # what a save killed in its write leaves
    torn.write_bytes(b"\x00" * 1000)
    total = str(logged + 3)
    assert T.main(tiny(assets, out, *common, "--psnr-iters", total, "--resume")) == 0
    text = capsys.readouterr().out
    assert not torn.exists() and f"removed {torn}" in text
    if logged > k:
        assert f"({logged - k} lines after it cut from metrics.jsonl)" in text
    assert T.main(tiny(assets, ref, *common, "--psnr-iters", total)) == 0
    train = [r["iteration"] for r in _metrics(out) if "l_pix" in r]
    assert train == list(range(1, logged + 4))
    assert _losses(_metrics(out)) == _losses(_metrics(ref))


# ---- --compile ------------------------------------------------------------------------------------
def test_compiled_views_share_the_networks_and_unwrap_to_them():
    """--compile wraps the training views only (lazily: nothing compiles here); checkpoints, EMA and
    validation read G and D themselves, whose state_dict keys carry no ``_orig_mod.`` prefix."""
    from mesrgan.training.components import Networks, compile_mode
    from mesrgan.training.distributed import unwrap
    G, D = torch.nn.Conv2d(3, 3, 3), torch.nn.Conv2d(3, 1, 3)
    nets = Networks(G, D, None, {})
    nets.compile(torch.device("cpu"))
    assert nets.G_train is not G and nets.D_train is not D and nets.D_frozen is not D
    assert unwrap(nets.G_train) is G and unwrap(nets.D_train) is D and unwrap(nets.D_frozen) is D
    assert not nets.cuda_graphs and list(G.state_dict()) == ["weight", "bias"]
    assert compile_mode(torch.device("cpu")) is None
    assert compile_mode(torch.device("cuda", 0)) == "reduce-overhead"
    # an output read after later compiled calls: cloned only under CUDA graphs (which overwrite it)
    t = torch.rand(3, requires_grad=True) * 2
    kept = nets.keep(t)
    assert not kept.requires_grad and kept.data_ptr() == t.data_ptr()
    nets.cuda_graphs = True
    kept = nets.keep(t)
    assert not kept.requires_grad and kept.data_ptr() != t.data_ptr() and torch.equal(kept, t)


@pytest.mark.slow
def test_compile_trains_both_stages_like_eager_and_resumes(assets, tmp_path):
    """torch.compile (inductor on the CPU) through the fused bottleneck op and its C++ backward: the
    same losses as the eager run at the same seed, checkpoints that load, and --resume."""
    from mesrgan.models import load_generator
    a, b = tmp_path / "eager", tmp_path / "compiled"
    short = ("--psnr-iters", "2", "--gan-iters", "1", "--psnr-milestones", "1", "--gan-milestones", "1")
    assert T.main(tiny(assets, a, *short, model="mesrgan")) == 0
    assert T.main(tiny(assets, b, *short, "--compile", "--stop-after", "2", model="mesrgan")) == 0
    assert T.main(tiny(assets, b, *short, "--compile", "--resume", model="mesrgan")) == 0
    la, lb = _losses(_metrics(a)), _losses(_metrics(b))
    assert [(r["stage"], r["iteration"]) for r in la] == [(r["stage"], r["iteration"]) for r in lb]
    for ra, rb in zip(la, lb):
        for k, v in ra.items():
            if isinstance(v, float):
                assert rb[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (ra, rb, k)
    assert "compile = true" in (b / "config.toml").read_text()
    ck = torch.load(b / "last.pt", weights_only=True)
    assert ck["stage"] == "gan" and not any("_orig_mod" in k for k in ck["generator"])
    for name in ("last.pt", "stage1.pt"):
        g, info = load_generator(str(b / name))
        assert g(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_cuda_graph_bookkeeping_changes_no_loss(assets, tmp_path, monkeypatch):
    """What --compile adds on CUDA around the compiled calls (a step mark each iteration, clones of
    the outputs read after later calls, D's .grad buffers kept and zeroed), run here without
    compiling: the same losses, exactly."""
    from mesrgan.training.components import Networks
    marks = []
    monkeypatch.setattr(Networks, "compile", lambda self, device: self.use_cuda_graphs())
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    a, b = tmp_path / "plain", tmp_path / "bookkept"
    short = ("--psnr-iters", "2", "--gan-iters", "2", "--psnr-milestones", "1", "--gan-milestones", "1")
    assert T.main(tiny(assets, a, *short, model="mesrgan")) == 0
    assert T.main(tiny(assets, b, *short, "--compile", model="mesrgan")) == 0
    assert len(marks) == 4
    assert _losses(_metrics(a)) == _losses(_metrics(b))
