"""``python -m mesrgan.train``: train SRGAN / ESRGAN / MESRGAN with the paper's two-stage recipe.

Parse the flags, take the run folder (its lock, and the check that a new run replaces nothing),
build the :class:`~mesrgan.training.Trainer`, run it, and turn how it ended into an exit status.
``python -m mesrgan.train --help`` and docs/training.md describe the flags and the run folder;
the parts live in :mod:`mesrgan.training`.
"""
from __future__ import annotations

import os
import signal
import sys

from .cli import UsageError, check_dir
from .training import (EXIT_NEEDS_VGG, MODELS, PAPER_DEFAULTS, QUICK, ConfigError, RunFolder, StopNow, Trainer,
                       build_parser, dump_toml, remove_temp_files, resolve_config, save_checkpoint)
from .training.distributed import Dist
from .training.reporting import Console
from .training.stops import signal_name

__all__ = ["EXIT_NEEDS_VGG", "MODELS", "PAPER_DEFAULTS", "QUICK", "build_parser", "resolve_config", "dump_toml",
           "save_checkpoint", "Trainer", "main"]


def _claim_folder(folder: RunFolder, cfg: dict, console: Console) -> None:
    """Lock the run folder, clear what killed saves left, and check that a new run replaces nothing."""
    stale = folder.lock.acquire()
    if stale:
        console.info(f"note: took over the lock of {folder.path} from a run that ended without releasing it "
                     f"({stale})")
    for path in remove_temp_files(folder.path):
        console.info(f"note: removed {path}, the temporary file of a save that was killed")
    if not cfg["resume"]:
        folder.check_new_run(cfg)  # refuses only; the earlier run's files go once this one is built


def _stopped_at_once(signum: int, folder: RunFolder, trainer) -> int:
    saved = trainer.saved if trainer is not None else None
    if saved is not None:
        kept = f"the last checkpoint, {folder.last} (stage {saved[0]}, iteration {saved[1]}), is kept; " \
               "continue with --resume"
    else:
        kept = "no checkpoint was written by this run"
    print(f"\nstopped at once (second {signal_name(signum)}): {kept}", flush=True)
    # A stop mid-iteration can leave the DataLoader's worker iterator half torn down; its __del__
    # then reports an "exception ignored" traceback at exit (seen under load). The run is over and
    # its checkpoint is kept, so such clean-up noise is not shown.
    sys.unraisablehook = lambda unraisable: None
    return 128 + signum


def _configure(argv) -> dict:
    """The run's configuration, its --out checked (creating nothing): a ``ConfigError`` otherwise."""
    cfg = resolve_config(argv)
    try:
        check_dir(cfg["out"], "--out")
    except UsageError as e:
        raise ConfigError(f"error: {e}") from None
    return cfg


def main(argv=None) -> int:
    """Run the program on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    dist, folder, trainer, console = None, None, None, Console()
    new_folder = False  # this run created its folder: a run that cannot start leaves none behind
    try:
        cfg = _configure(argv)
        dist = Dist()
        console = Console(enabled=dist.main)
        folder = RunFolder(cfg["out"])
        new_folder = not os.path.exists(folder.path)
        if dist.main:  # the other processes wait for it in the process group's set-up
            _claim_folder(folder, cfg, console)
        trainer = Trainer(cfg, console=console, dist=dist, argv=argv)
        return trainer.run()
    except ConfigError as e:  # a bad flag or configuration: nothing was changed on disk
        console.end_stage()
        print(e, file=sys.stderr, flush=True)
        if new_folder:
            folder.lock.release()
            folder.remove_if_unused()
        return 2
    except StopNow as stop:
        console.end_stage()
        return _stopped_at_once(stop.signum, folder, trainer)
    except KeyboardInterrupt:  # Ctrl-C while setting up, before the stop handlers are in place
        console.end_stage()
        print("\ninterrupted before training began: nothing was trained", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    except OSError as e:  # a full disk, a folder that went away: what is on disk is whole (atomic writes)
        console.end_stage()
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if folder is not None:
            folder.lock.release()
        if dist is not None:
            dist.close()


if __name__ == "__main__":
    raise SystemExit(main())
