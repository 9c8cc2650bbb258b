"""The run folder: where a run's checkpoints live, how they are written, and who may write them.

* :func:`save_checkpoint` writes atomically (temporary file, fsync, rename), so a kill at any
  moment leaves the previous file loadable; :func:`remove_temp_files` clears what a killed save
  left behind.
* :class:`RunLock` is an exclusive lock on the folder for the life of a run: a second run into a
  live folder fails at once; the lock of a killed run is released by the OS and taken over.
* :meth:`RunFolder.check_new_run` refuses to start a new run in a folder that holds one unless
  asked to (``--overwrite``); :meth:`RunFolder.clear_for_new_run` then deletes that run's files,
  and only those, once the new run has been built.
* :func:`rng_state` / :func:`set_rng_state` carry every random generator through a checkpoint.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import socket
import sys
import time

import numpy as np
import torch

from ..io.atomic import atomic_path, remove_temp_files
from ..models import CheckpointError, read_checkpoint
from .config import ConfigError

# what --resume needs from last.pt (the optional parts are looked up with .get)
RESUME_KEYS = ("stage", "iteration", "best_psnr", "generator", "optimizer_g", "rng")


def read_checkpoint_or_exit(flag, path, require=()):
    """``read_checkpoint``, or one line on stderr and exit status 2 for a file that is not one."""
    try:
        return read_checkpoint(path, require=require)
    except CheckpointError as e:
        print(f"error: {flag}: {e}", file=sys.stderr)
        raise SystemExit(2) from None

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = ["RunFolder", "RunLock", "CheckpointWriteError", "save_checkpoint", "remove_temp_files", "rng_state",
           "set_rng_state"]

def save_checkpoint(obj, path: str) -> None:
    """``torch.save`` through :func:`~mesrgan.io.atomic.atomic_path`: a crash at any moment leaves
    either the old or the new file, never a torn one. A failed write (a full disk, say) raises
    :class:`CheckpointWriteError` and leaves the old file as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except OSError as e:  # a full disk (ENOSPC), a folder that went away, ...
        reason = e.strerror or str(e)
        kept = "the previous checkpoint there is kept" if os.path.isfile(path) else "no file of that name was left"
        raise CheckpointWriteError(f"cannot write the checkpoint {path} ({reason}); {kept}") from None


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message says what is left on disk."""


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


def _stage_of(path):
    """The ``stage`` entry of one of our checkpoints, or None."""
    try:  # mmap: only the small "stage" entry is read from a file of up to hundreds of MB
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("stage")
    except Exception:  # noqa: BLE001 - an unreadable file is not a stage-1 run to continue
        return None


def _read_text(fd) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


class RunFolder:
    """Paths of a run folder and the rules for starting a run in it.

    A folder holds a run when it holds any file a run writes (:meth:`run_files`), not only
    ``last.pt``. A new run into it is refused unless ``--overwrite``; with it, only the files a run
    writes are deleted, and only once the new run has been built (:meth:`clear_for_new_run`), so a
    run that fails to start deletes nothing. A user's own files in the folder are never touched.
    """

    # What each stage writes; a new run clears what it will write again.
    RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.toml")
    STAGE1_FILES = ("stage1.pt", "stage1_best.pt")
    # sub-folders a run writes into, and the names of the files it writes there
    RUN_DIRS = {"samples": re.compile(r"^(psnr|gan)_\d{7}\.png$"), "tb": re.compile(r"^events\.out\.tfevents\.")}

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

    def run_files(self, names=None) -> list:
        """The files of this folder that a run wrote (of ``names``, default all a run writes), as
        paths relative to the folder, in a stable order."""
        names = self.RUN_FILES + self.STAGE1_FILES if names is None else names
        found = [n for n in names if os.path.isfile(self.file(n))]
        for sub, pattern in self.RUN_DIRS.items():
            folder = self.file(sub)
            if os.path.isdir(folder):
                found += sorted(os.path.join(sub, n) for n in os.listdir(folder)
                                if pattern.match(n) and os.path.isfile(os.path.join(folder, n)))
        return found

    def continues_stage1(self, cfg: dict) -> bool:
        """``--stage gan`` into the folder of a stage-1 run: stage 2 starts from its ``stage1.pt``."""
        if cfg["stage"] != "gan":
            return False
        if self.has_checkpoint():
            return self._last_stage() == "psnr"
        return os.path.isfile(self.file("stage1.pt"))

    def check_new_run(self, cfg: dict) -> None:
        """Called under the lock before a run without ``--resume`` is built: refuse to replace an
        existing run unless ``--overwrite``. Deletes nothing."""
        if cfg["overwrite"] or self.continues_stage1(cfg):
            return
        found = self.run_files()
        if not found:
            return
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        ways = ["continue it with --resume"] if self.has_checkpoint() else []
        ways += ["write this run elsewhere with --out DIR",
                 "delete that run's files and start again with --overwrite (other files in the folder are kept)"]
        ways = ", ".join(ways[:-1]) + ", or " + ways[-1]
        raise ConfigError(f"error: {self.path} already holds a run ({shown}); a new run would replace it. "
                         f"{ways[0].upper()}{ways[1:]}")

    def clear_for_new_run(self, cfg: dict, log=None) -> list:
        """Delete the files this run will write again, and nothing else; returns what was deleted.
        Called once the new run is built (its configuration, data and networks checked)."""
        if self.continues_stage1(cfg) and not cfg["overwrite"]:
            self._keep_stage1_best()
            return []  # stage 1's files stay: stage 2 starts from them
        keep = self.STAGE1_FILES if cfg["stage"] == "gan" else ()
        names = tuple(n for n in self.RUN_FILES + self.STAGE1_FILES if n not in keep)
        removed = self.run_files(names)
        for rel in removed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.file(rel))
        for sub in self.RUN_DIRS:
            with contextlib.suppress(OSError):  # only if the run's files were all it held
                os.rmdir(self.file(sub))
        if removed and log is not None:
            log(f"--overwrite: deleted the earlier run's {len(removed)} file(s) in {self.path}")
        return removed

    def remove_if_unused(self) -> None:
        """Remove the folder if it holds nothing but its (released) lock file."""
        with contextlib.suppress(OSError):
            if os.listdir(self.path) == [".lock"]:
                os.unlink(self.lock.path)
                os.rmdir(self.path)

    def _keep_stage1_best(self):
        """Stage 1 run alone leaves its best generator as best.pt; stage 2 writes its own there."""
        best, kept = self.file("best.pt"), self.file("stage1_best.pt")
        if os.path.isfile(best) and not os.path.exists(kept) and _stage_of(best) == "psnr":
            os.replace(best, kept)

    def _last_stage(self):
        return _stage_of(self.last) if self.has_checkpoint() else None

    def read_last(self, cfg: dict, stages: list) -> dict:
        """``last.pt`` for ``--resume``, checked against this run's model, sizes and stages."""
        if not self.has_checkpoint():
            raise ConfigError(f"error: --resume: no checkpoint {self.last}")
        ck = read_checkpoint_or_exit("--resume", self.last, RESUME_KEYS)
        old = ck.get("train_config", {})
        for k in ("model", "scale", "crop_size", "generator"):
            if k in old and old[k] != cfg[k]:
                raise ConfigError(f"error: --resume: {self.last} was trained with {k}={old[k]!r}, "
                                 f"this run asks for {cfg[k]!r}")
        if ck["stage"] not in stages:
            raise ConfigError(f"error: --resume: {self.last} is in stage {ck['stage']!r}, which --stage "
                             f"{cfg['stage']} does not run")
        return ck

    def read_stage1(self, pretrained: str) -> tuple:
        """The stage-1 generator's state dict where stage 2 starts: ``--pretrained`` or
        ``stage1.pt``. Returns ``(path, state_dict)``."""
        path = pretrained or self.file("stage1.pt")
        if not os.path.isfile(path):
            raise ConfigError(f"error: --stage gan starts from a stage-1 generator, and {path} does not exist: "
                             "pass --pretrained PATH or run --stage psnr first with the same --out")
        ck = read_checkpoint_or_exit("--pretrained" if pretrained else "--stage gan", path)
        # Our checkpoints hold the raw weights under "generator" (an EMA, if any, is not where
        # stage 1 ended); anything else is taken as a bare state dict.
        return path, (ck["generator"] if "generator" in ck else ck)
