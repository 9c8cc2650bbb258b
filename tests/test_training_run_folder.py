"""Tests for mesrgan.training.run_folder: atomic saves under kill -9, temp-file clean-up, the lock,
the rules for starting a run in a folder, RNG state."""
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from mesrgan.training import RunFolder, RunLock, remove_temp_files, save_checkpoint
from mesrgan.training.run_folder import rng_state, set_rng_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV1 = {**os.environ, "OMP_NUM_THREADS": "1"}


_SAVER = r"""
import sys, torch
from mesrgan.training import save_checkpoint
path = sys.argv[1]
i = 0
while True:
    i += 1
    save_checkpoint({"i": i, "w": torch.full((2_000_000,), float(i))}, path)
    print(i, flush=True)
"""


def test_atomic_checkpoint_survives_a_kill_during_save(tmp_path):
    path = tmp_path / "last.pt"
    for attempt in range(2):
        p = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env=ENV1)
        try:
            first = p.stdout.readline()  # one complete save has happened
            assert first.strip(), "saver did not start"
            time.sleep(0.05 + 0.1 * attempt)
        finally:
            p.kill()
            p.wait()
        ck = torch.load(path, weights_only=True)
        assert torch.equal(ck["w"], torch.full((2_000_000,), float(ck["i"])))


def test_kill_during_a_save_leaves_a_temp_file_that_is_cleaned_up(tmp_path):
    """Killed while the temporary file is being written: last.pt is the previous complete save,
    and remove_temp_files deletes exactly the torn temporary file."""
    path = tmp_path / "last.pt"
    (tmp_path / "keep.txt").write_text("not ours")
    (tmp_path / ".hidden.tmpfile").write_text("not a temp name of ours either")
    p = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT, env=ENV1)
    tmp = tmp_path / f".last.pt.tmp{p.pid}"
    try:
        assert p.stdout.readline().strip(), "saver did not start"
        deadline = time.monotonic() + 60
        while not tmp.exists():  # the next save is under way
            assert time.monotonic() < deadline, "no save in progress seen"
            time.sleep(0.001)
    finally:
        p.kill()
        p.wait()
    ck = torch.load(path, weights_only=True)
    assert torch.equal(ck["w"], torch.full((2_000_000,), float(ck["i"])))
    if tmp.exists():  # (the rename may have beaten the kill by a hair)
        assert remove_temp_files(str(tmp_path)) == [str(tmp)]
    assert sorted(os.listdir(tmp_path)) == [".hidden.tmpfile", "keep.txt", "last.pt"]
    assert remove_temp_files(str(tmp_path)) == []


def test_save_checkpoint_leaves_no_temp_file_when_the_write_fails(tmp_path):
    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")
    save_checkpoint({"a": torch.arange(3)}, str(tmp_path / "x.pt"))
    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_checkpoint({"a": Unpicklable()}, str(tmp_path / "x.pt"))
    assert os.listdir(tmp_path) == ["x.pt"]
    assert torch.equal(torch.load(tmp_path / "x.pt", weights_only=True)["a"], torch.arange(3))


_HOLDER = r"""
import sys, time
from mesrgan.training import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(600)
"""


def _hold_lock(folder):
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT, env=ENV1)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_lock_refuses_a_second_holder_and_is_taken_over_after_a_kill(tmp_path):
    folder = tmp_path / "run"
    p = _hold_lock(folder)
    try:
        with pytest.raises(SystemExit, match=rf"in use by a live run \(pid {p.pid} on .*another --out"):
            RunLock(str(folder)).acquire()
    finally:
        p.kill()
        p.wait()
    lock = RunLock(str(folder))
    stale = lock.acquire()  # the OS released the dead holder's flock; its note is still in the file
    assert stale is not None and f"pid {p.pid} " in stale
    with pytest.raises(SystemExit, match=f"pid {os.getpid()} "):
        RunLock(str(folder)).acquire()  # a second lock of the same process is refused too
    lock.release()
    assert (folder / ".lock").read_text() == ""  # released cleanly: nobody to report as dead
    again = RunLock(str(folder))
    assert again.acquire() is None
    again.release()


def _cfg(**kw):
    return {"stage": "all", "overwrite": False, "resume": False, **kw}


def test_a_new_run_is_refused_over_a_checkpoint(tmp_path):
    folder = RunFolder(str(tmp_path))
    save_checkpoint({"stage": "psnr", "iteration": 5}, folder.last)
    (tmp_path / "metrics.jsonl").write_text('{"stage": "psnr", "iteration": 1}\n')
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        folder.check_new_run(_cfg())
    for way in ("--resume", "--out", "--overwrite", "last.pt", "metrics.jsonl"):
        assert way in str(e.value)
    assert (tmp_path / "last.pt").read_bytes() == before and (tmp_path / "metrics.jsonl").exists()


def _stage1_leftovers(tmp_path):
    """A run folder whose big last.pt the user deleted, keeping the rest (and a note of their own in samples/)."""
    folder = RunFolder(str(tmp_path))
    for name in ("best.pt", "stage1.pt", "stage1_best.pt"):
        save_checkpoint({"stage": "psnr", "iteration": 1}, folder.file(name))
    (tmp_path / "metrics.jsonl").write_text('{"stage": "psnr", "iteration": 1}\n')
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "psnr_0000010.png").write_bytes(b"png")
    (tmp_path / "samples" / "my-notes.txt").write_text("mine")
    return folder


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_a_folder_without_last_pt_still_holds_a_run(tmp_path):
    folder = _stage1_leftovers(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(SystemExit) as e:
        folder.check_new_run(_cfg())
    msg = str(e.value)
    assert "already holds a run (best.pt, metrics.jsonl, stage1.pt, stage1_best.pt, samples/psnr_0000010.png)" in msg
    assert "--resume" not in msg and "--overwrite" in msg and "--out" in msg  # nothing to resume from
    assert _tree(tmp_path) == before
    folder.check_new_run(_cfg(overwrite=True))  # allowed, and still deletes nothing by itself
    assert _tree(tmp_path) == before


def test_overwrite_removes_the_old_runs_files_only(tmp_path):
    folder = RunFolder(str(tmp_path))
    for name in ("last.pt", "best.pt", "stage1.pt", "stage1_best.pt"):
        save_checkpoint({"stage": "gan", "iteration": 1}, folder.file(name))
    for name in ("metrics.jsonl", "config.toml", "notes.txt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "psnr_0000001.png").write_bytes(b"png")
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "events.out.tfevents.1.host.2.0").write_bytes(b"ev")
    (tmp_path / "tb" / "my-plot.png").write_bytes(b"mine")
    removed = folder.clear_for_new_run(_cfg(stage="gan", overwrite=True))  # stage 2 alone keeps stage 1's files
    assert sorted(removed) == ["best.pt", "config.toml", "last.pt", "metrics.jsonl", "samples/psnr_0000001.png",
                               "tb/events.out.tfevents.1.host.2.0"]
    assert _tree(tmp_path) == ["notes.txt", "stage1.pt", "stage1_best.pt", "tb/my-plot.png"]
    folder.clear_for_new_run(_cfg(overwrite=True))
    assert _tree(tmp_path) == ["notes.txt", "tb/my-plot.png"]  # samples/ was emptied and removed, tb/ is not empty


def test_stage2_alone_may_follow_stage1_in_the_same_folder(tmp_path):
    folder = RunFolder(str(tmp_path))
    save_checkpoint({"stage": "psnr", "iteration": 3}, folder.last)
    save_checkpoint({"generator": {}}, folder.file("stage1.pt"))
    save_checkpoint({"stage": "psnr", "iteration": 2}, folder.file("best.pt"))
    folder.check_new_run(_cfg(stage="gan"))  # no error
    assert folder.clear_for_new_run(_cfg(stage="gan")) == []  # nothing removed; stage 1's best is kept aside
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "stage1.pt", "stage1_best.pt"]
    save_checkpoint({"stage": "gan", "iteration": 1}, folder.last)  # but not over a stage-2 run
    with pytest.raises(SystemExit, match="already holds a run"):
        folder.check_new_run(_cfg(stage="gan"))


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
