"""Stopping a run on request: SIGINT (Ctrl-C) and SIGTERM.

The first signal says at once that the run will stop after the current iteration (which then
saves a checkpoint); a second one stops at once by raising :class:`StopNow`, which the program
turns into a message and exit status 128 + N, without a traceback. A checkpoint being written at
that moment is abandoned (its temporary file removed), so the last complete one stays.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys

__all__ = ["StopNow", "StopRequests", "ignore_stop_signals", "init_data_worker"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopNow(BaseException):
    """A second stop signal: leave at once. A BaseException, so no ``except Exception`` on the way
    swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = int(signum)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def ignore_stop_signals(_worker_id=None) -> None:
    """For DataLoader workers: Ctrl-C reaches the whole process group and ``kill`` may too; the
    main process stops the workers itself after saving, so they must not die first (the main
    process would then fail on a lost worker)."""
    for s in _SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def _drop_lost_parent_errors(default_hook):
    """A ``sys.excepthook`` for DataLoader workers that stays silent on a broken connection.

    A worker hands each batch's tensors to the main process over a socket served by a thread of
    multiprocessing's resource sharer. When the main process stops at once (a second Ctrl-C) in
    the middle of a hand-over, that socket breaks and the thread reports it through
    ``sys.excepthook``: a traceback after the one-line message, for a stop the user asked for."""
    def hook(exc_type, exc, tb):
        if issubclass(exc_type, (ConnectionError, EOFError)):
            return
        default_hook(exc_type, exc, tb)
    return hook


def init_data_worker(worker_id=None) -> None:
    """``worker_init_fn`` of the training DataLoader: the stop signals are the main process's
    to handle, and a main process gone at once leaves no traceback from the worker."""
    ignore_stop_signals(worker_id)
    sys.excepthook = _drop_lost_parent_errors(sys.excepthook)


class StopRequests:
    """Installs the handlers for the life of a ``with`` block; ``signum`` is the first signal received."""

    def __init__(self, announce: bool = True):
        self.signum = None
        self.at_once = None  # the second signal, once one came
        self._announce = announce
        self._old = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def raise_if_at_once(self) -> None:
        """Raise the StopNow of a second signal whose exception was dropped on its way."""
        if self.at_once is not None:
            raise StopNow(self.at_once)

    def request(self, signum: int) -> None:
        """Ask to stop after the current iteration (another process of the run was told to)."""
        if self.signum is None:
            self.signum = int(signum)

    def _handle(self, signum, _frame):
        if self.signum is not None:
            # Also remembered: a handler can run where exceptions are dropped (a fork hook of the
            # DataLoader starting its workers, seen under load); the loop then stops at its next check.
            self.at_once = signum
            raise StopNow(signum)
        self.signum = signum
        if self._announce:
            name = signal_name(signum)
            # os.write, not print: a handler can run in the middle of a print to the same stream.
            _say(f"\n{name}: stopping after the current iteration, with a checkpoint. "
                 f"{name} again stops at once (keeping the last checkpoint).\n")

    def __enter__(self):
        for s in _SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: no handlers there
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
