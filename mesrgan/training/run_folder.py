"""The run folder: where a run's checkpoints live, how they are written, and who may write them.

* :func:`save_checkpoint` writes atomically (temporary file, fsync, rename), so a kill at any
  moment leaves the previous file loadable; :func:`remove_temp_files` clears what a killed save
  left behind.
* :class:`RunLock` is an exclusive lock on the folder for the life of a run: a second run into a
  live folder fails at once; the lock of a killed run is released by the OS and taken over.
* :meth:`RunFolder.claim_for_new_run` refuses to start a new run over an existing checkpoint
  unless asked to (``--overwrite``), and clears the old run's files when it may.
* :func:`rng_state` / :func:`set_rng_state` carry every random generator through a checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import time

import numpy as np
import torch

# what --resume needs from last.pt (the optional parts are looked up with .get)
RESUME_KEYS = ("stage", "iteration", "best_psnr", "generator", "optimizer_g", "rng")


def read_checkpoint_or_exit(flag, path, require=()):
    """``read_checkpoint``, or one line on stderr and exit status 2 for a file that is not one."""
    import sys

    from ..models import CheckpointError, read_checkpoint
    try:
        return read_checkpoint(path, require=require)
    except CheckpointError as e:
        print(f"error: {flag}: {e}", file=sys.stderr)
        raise SystemExit(2) from None

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["RunFolder", "RunLock", "save_checkpoint", "remove_temp_files", "rng_state", "set_rng_state"]

# A save writes ".<name>.tmp<pid>" next to <name>; a kill -9 during the write leaves it there.
_TEMP_NAME = re.compile(r"^\..+\.tmp\d+$")


def save_checkpoint(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash at any moment leaves either the old or the new file, never a torn one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_folder(folder)


def _fsync_folder(folder):
    with contextlib.suppress(OSError):  # make a rename durable where the OS allows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_temp_files(folder: str) -> list:
    """Delete the temporary files of saves that were killed; returns their paths. Only safe while
    holding the folder's :class:`RunLock` (a live run's save would lose its file)."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if _TEMP_NAME.match(name) and os.path.isfile(path):
            os.unlink(path)
            removed.append(path)
    return removed


def rng_state() -> dict:
    """Every generator a training step draws from: torch (CPU and CUDA), NumPy, Python."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
    }


def set_rng_state(s: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA only on a machine with as many GPUs)."""
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    random.setstate((3, tuple(s["python"]), None))


class RunLock:
    """An exclusive ``flock`` on ``FOLDER/.lock``, held while a run uses the folder.

    The OS drops the lock when its process dies, however it dies, so a lock left by a killed run
    is simply taken. The file names its holder (pid, host, start time) for the message a second
    run gets, and is emptied on a clean release: a holder named in a file whose lock was free
    means that run died without releasing it.
    """

    def __init__(self, folder: str):
        self.path = os.path.join(folder, ".lock")
        self._fd = None

    def acquire(self) -> str | None:
        """Take the lock or raise ``SystemExit`` naming the live holder. Returns the description of
        a dead holder whose lock was taken over, else None."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_text(fd) or "another process"
                os.close(fd)
                raise SystemExit(
                    f"error: the run folder {os.path.dirname(self.path)} is in use by a live run ({holder}); "
                    "wait for it to end or stop it, or give this run another --out") from None
        stale = _read_text(fd) or None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return stale

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)  # before unlocking: the next owner must not see us as dead
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


def _read_text(fd) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


class RunFolder:
    """Paths of a run folder and the rules for starting a run in it."""

    # What each stage writes; a new run clears what it will write again.
    RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.toml")
    STAGE1_FILES = ("stage1.pt", "stage1_best.pt")
    RUN_DIRS = ("samples", "tb")

    def __init__(self, path: str):
        self.path = path
        self.lock = RunLock(path)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def last(self) -> str:
        return self.file("last.pt")

    @property
    def metrics(self) -> str:
        return self.file("metrics.jsonl")

    def has_checkpoint(self) -> bool:
        return os.path.isfile(self.last)

    def claim_for_new_run(self, cfg: dict) -> None:
        """Called under the lock before a run without ``--resume``: refuse to replace an existing
        run unless ``--overwrite``, then clear the files this run will write again."""
        continues_stage1 = cfg["stage"] == "gan" and self._last_stage() == "psnr"
        if self.has_checkpoint() and not (cfg["overwrite"] or continues_stage1):
            raise SystemExit(
                f"error: {self.path} already holds a run (checkpoint {self.last}); a new run would replace it. "
                f"Continue it with --resume, write this run elsewhere with --out DIR, or delete it and "
                f"start again with --overwrite")
        if continues_stage1 and not cfg["overwrite"]:
            return  # --stage gan after --stage psnr in the same folder: stage 1's files stay
        names = self.RUN_FILES + (self.STAGE1_FILES if cfg["stage"] != "gan" else ())
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file(name))
        for name in self.RUN_DIRS:
            shutil.rmtree(self.file(name), ignore_errors=True)

    def _last_stage(self):
        if not self.has_checkpoint():
            return None
        try:  # mmap: only the small "stage" entry is read from a file of up to hundreds of MB
            return torch.load(self.last, map_location="cpu", weights_only=True, mmap=True).get("stage")
        except Exception:  # noqa: BLE001 - an unreadable last.pt is not a stage-1 run to continue
            return None

    def read_last(self, cfg: dict, stages: list) -> dict:
        """``last.pt`` for ``--resume``, checked against this run's model, sizes and stages."""
        if not self.has_checkpoint():
            raise SystemExit(f"error: --resume: no checkpoint {self.last}")
        ck = read_checkpoint_or_exit("--resume", self.last, RESUME_KEYS)
        old = ck.get("train_config", {})
        for k in ("model", "scale", "crop_size", "generator"):
            if k in old and old[k] != cfg[k]:
                raise SystemExit(f"error: --resume: {self.last} was trained with {k}={old[k]!r}, "
                                 f"this run asks for {cfg[k]!r}")
        if ck["stage"] not in stages:
            raise SystemExit(f"error: --resume: {self.last} is in stage {ck['stage']!r}, which --stage "
                             f"{cfg['stage']} does not run")
        return ck

    def read_stage1(self, pretrained: str) -> tuple:
        """The stage-1 generator's state dict where stage 2 starts: ``--pretrained`` or
        ``stage1.pt``. Returns ``(path, state_dict)``."""
        path = pretrained or self.file("stage1.pt")
        if not os.path.isfile(path):
            raise SystemExit(f"error: --stage gan starts from a stage-1 generator, and {path} does not exist: "
                             "pass --pretrained PATH or run --stage psnr first with the same --out")
        ck = read_checkpoint_or_exit("--pretrained" if pretrained else "--stage gan", path)
        # Our checkpoints hold the raw weights under "generator" (an EMA, if any, is not where
        # stage 1 ended); anything else is taken as a bare state dict.
        return path, (ck["generator"] if "generator" in ck else ck)
