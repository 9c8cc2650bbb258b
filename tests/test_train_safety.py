"""Nothing lost, and one line instead of a traceback, in ``python -m mesrgan.train``.

Each case asserts the message (one line naming the flag or file), the exit status, and what is
left on disk: a user's files and an earlier run are never deleted unless ``--overwrite`` asked
for it, and then only once the new run has been checked.
"""
import errno
import os
import re
import subprocess
import sys
import time

import pytest
import torch

from mesrgan import train as T
from mesrgan.training import run_folder
from test_train import _losses, _metrics, assets, tiny  # noqa: F401  (assets is a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def _tree(root):
    """Every file under ``root`` with its bytes (the lock file aside: a run always takes it)."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name != ".lock":
                out[os.path.relpath(path, root)] = open(path, "rb").read()
    return out


def _refused(args, message, capsys, status=2):
    assert T.main(args) == status
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and re.search(message, err), err
    assert "Traceback" not in out + err
    return err


@pytest.fixture
def finished_run(assets, tmp_path):
    """A folder holding a finished stage-1 run whose big last.pt the user deleted, plus a file of
    the user's own in samples/."""
    out = tmp_path / "run"
    assert T.main(tiny(assets, out, "--stage", "psnr")) == 0
    os.unlink(out / "last.pt")
    (out / "samples" / "my-notes.txt").write_text("the user's own file")
    (out / "keep.txt").write_text("another")
    return out


def test_a_folder_without_last_pt_is_not_wiped(assets, finished_run, capsys):
    before = _tree(finished_run)
    assert {"best.pt", "stage1.pt", "metrics.jsonl", "config.toml"} <= set(before)
    err = _refused(tiny(assets, finished_run), "already holds a run", capsys)
    assert "best.pt" in err and "--overwrite" in err
    assert _tree(finished_run) == before


@pytest.mark.parametrize("bad, message", [
    (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
    (["--g-opt", "bogus=1"], r"--g-opt / \[generator\] .*bogus"),
    (["--d-opt", "bogus=1"], r"--d-opt / \[discriminator\] .*bogus"),
    (["--g-opt", "num_blocks=abc"], r"--g-opt / \[generator\]"),
    (["--g-opt", "features=-3"], r"--g-opt / \[generator\]"),
    (["--pretrained", "/nonexistent.pt", "--stage", "gan"], "/nonexistent.pt"),
    (["--batch-size", "1000000"], r"--batch-size 1000000 with --crop-size 32: .* GiB of activations"),
    (["--batch-size", "100000000"], r"--batch-size must be at most 1048576, got 100000000"),
])
def test_overwrite_deletes_nothing_when_the_new_run_cannot_start(assets, finished_run, capsys, bad, message):
    before = _tree(finished_run)
    t0 = time.perf_counter()
    _refused(tiny(assets, finished_run, "--overwrite", *bad), message, capsys)
    assert time.perf_counter() - t0 < 60  # fails fast, even for a batch no machine can hold
    assert _tree(finished_run) == before


def test_overwrite_deletes_only_the_runs_own_files(assets, finished_run):
    assert T.main(tiny(assets, finished_run, "--overwrite", "--stage", "psnr", "--psnr-iters", "1")) == 0
    left = _tree(finished_run)
    assert left["samples/my-notes.txt"] == b"the user's own file" and left["keep.txt"] == b"another"
    assert [r["iteration"] for r in _metrics(finished_run) if "l_pix" in r] == [1]  # the old log is gone


def test_abbreviated_flags_are_refused(assets, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(tiny(assets, tmp_path / "o", "--lr", "5"))  # once silently --lr-gamma 5
    assert e.value.code == 2 and "unrecognized arguments: --lr 5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("toml, message", [
    ("seed = true", r"seed in --config .* must be a whole number >= 0, got True"),  # (tiny() sets batch_size)
    ("seed = 1e3", r"seed in --config .* must be a whole number >= 0, got 1000.0"),
    ("lr_gamma = 2", r"lr_gamma in --config .* must be a number in \(0, 1\]"),
    ("data_lr = 5", r"data_lr in --config .* must be folder names, got 5"),
    ("[generator]\nbogus_option = 3", r"--g-opt / \[generator\] .*bogus_option"),
])
def test_config_values_of_the_wrong_type(assets, tmp_path, capsys, toml, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml + "\n")
    _refused(tiny(assets, tmp_path / "o", "--config", str(cfg)), message, capsys)
    assert not (tmp_path / "o").exists()


def test_config_that_cannot_be_read(assets, tmp_path, capsys):
    _refused(tiny(assets, tmp_path / "o", "--config", str(tmp_path)), "is a folder", capsys)
    binary = tmp_path / "c.toml"
    binary.write_bytes(b"batch_size = 4\n\xff\xfe\x00garbage")
    _refused(tiny(assets, tmp_path / "o", "--config", str(binary)), "is not a UTF-8 text file", capsys)
    assert not (tmp_path / "o").exists()


def test_out_that_cannot_be_written(assets, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    _refused(tiny(assets, tmp_path / "afile" / "run"), r"--out .*afile is a file", capsys)
    _refused(tiny(assets, "/proc/run"), r"--out /proc/run: cannot create the folder in /proc", capsys)
    assert (tmp_path / "afile").read_text() == "x"


def test_resume_of_a_checkpoint_that_does_not_fit(assets, tmp_path, capsys):
    out = tmp_path / "run"
    assert T.main(tiny(assets, out, "--stage", "psnr", "--stop-after", "2")) == 0
    good = torch.load(out / "last.pt", weights_only=True)
    name = next(k for k in good["generator"] if k.endswith("weight"))
    wrong_shape = {**good, "generator": {**good["generator"], name: torch.zeros(3, 3)}}
    missing_key = {**good, "optimizer_g": {"state": good["optimizer_g"]["state"]}}  # no param_groups
    for ck, what in ((wrong_shape, "size mismatch"), (missing_key, "param_groups")):
        torch.save(ck, out / "last.pt")
        before = _tree(out)
        _refused(tiny(assets, out, "--stage", "psnr", "--resume"),
                 rf"--resume: .*last\.pt does not fit this run \(.*{what}", capsys)
        assert _tree(out) == before


def test_a_full_disk_during_a_checkpoint_save(assets, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    common = ("--stage", "psnr", "--psnr-iters", "10", "--val-every", "100")  # the first save after the resume: last.pt
    assert T.main(tiny(assets, out, *common, "--stop-after", "2")) == 0
    before = (out / "last.pt").read_bytes()
    real_save = torch.save

    def disk_full(obj, f, *a, **kw):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(run_folder.torch, "save", disk_full)
    err = _refused(tiny(assets, out, *common, "--resume"), r"last\.pt \(No space left on device\)", capsys, status=1)
    assert "the previous checkpoint there is kept" in err
    monkeypatch.setattr(run_folder.torch, "save", real_save)
    assert (out / "last.pt").read_bytes() == before
    assert not [n for n in os.listdir(out) if ".tmp" in n]  # no torn temporary file either


def test_the_first_log_line_after_a_resume_is_exact(assets, tmp_path):
    """--log-every 3 with a stop after 2 iterations: the first mean after the resume covers
    iterations 1..3, as in the uninterrupted run, not only iteration 3."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("--stage", "psnr", "--psnr-iters", "6", "--log-every", "3", "--val-every", "100")
    assert T.main(tiny(assets, a, *common)) == 0
    assert T.main(tiny(assets, b, *common, "--stop-after", "2")) == 0
    assert T.main(tiny(assets, b, *common, "--resume")) == 0
    la, lb = _losses(_metrics(a)), _losses(_metrics(b))
    assert [r["iteration"] for r in la if "l_pix" in r] == [3, 6] and la == lb


# ``python -m mesrgan.train`` with a Ctrl-C delivered exactly while the package imports its compiled
# extension (a sleep-then-signal from outside raced with the import's speed): runpy runs the module as
# ``-m`` does, and sys.argv[0] is "-m" while the package is imported, as under ``python -m``.
_CTRL_C_IN_IMPORT = """
import importlib.abc, os, runpy, signal, sys
class CtrlC(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mesrgan._ext":
            os.kill(os.getpid(), signal.SIGINT)  # the handler raises KeyboardInterrupt right here
        return None
sys.meta_path.insert(0, CtrlC())
sys.argv = ["-m"] + sys.argv[1:]
runpy.run_module("mesrgan.train", run_name="__main__", alter_sys=False)
"""


def test_ctrl_c_while_importing_gives_one_line(tmp_path):
    """SIGINT before the program's own handlers exist (the package is still being imported)."""
    p = subprocess.run([sys.executable, "-c", _CTRL_C_IN_IMPORT, "--quick", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 130, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr and "interrupted while starting: nothing was done" in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


def test_the_readmes_next_commands_work_after_stage_1_stops_for_vgg(assets, tmp_path, monkeypatch, capsys):
    """The main job without VGG19 weights ends after stage 1 (exit 3) with stage1_best.pt and no best.pt;
    `evaluate` / `upscale` / `export --weights RUN_FOLDER` take that folder's best generator."""
    from mesrgan import evaluate as E
    from test_train import _without

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache
    out = tmp_path / "run"
    args = _without(tiny(assets, out), "--vgg-weights")
    assert T.main(args) == 3
    assert (out / "stage1_best.pt").is_file() and not (out / "best.pt").exists()
    capsys.readouterr()
    assert E.main(["--weights", str(out), "--data", assets["val"], "-q"]) == 0
    assert "PSNR" in capsys.readouterr().out
