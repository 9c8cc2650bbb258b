"""What a run tells: progress on the console, ``metrics.jsonl``, TensorBoard.

* :class:`Console` prints messages and the progress of a stage: on a terminal a live tqdm bar
  (iteration, it/s, ETA, current losses); elsewhere plain lines, from the first iteration on,
  then every ``--log-every`` iterations and at least every :data:`PLAIN_EVERY_S` seconds.
* :class:`MetricsLog` appends one JSON object per line, and on ``--resume`` cuts the file back
  to the checkpoint's iteration, so that every iteration is logged once.
* :class:`TensorBoardLog` mirrors the numbers to TensorBoard when it is installed.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time

from ..io.atomic import write_text_atomic

__all__ = ["Console", "MetricsLog", "TensorBoardLog", "format_duration", "PLAIN_EVERY_S"]

PLAIN_EVERY_S = 30.0  # the longest a run off a terminal stays silent between progress lines


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s``, or ``?`` for an unknown duration."""
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    h, m = divmod(s // 60, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s % 60:02d}s"


def _losses_text(losses: dict) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in losses.items())


class Console:
    """Messages and stage progress for the main process (``enabled=False`` on the others)."""

    def __init__(self, enabled: bool = True, stream=None, tty: bool | None = None):
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._bar = None
        self._stage = None

    def info(self, text: str) -> None:
        """A message; on a terminal it goes above the live bar instead of breaking it."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    # ---- the progress of one stage ------------------------------------------------------------
    def start_stage(self, stage: str, done: int, total: int) -> None:
        self._stage, self._total = stage, total
        self._t0, self._done0 = time.perf_counter(), done
        self._t_line = -math.inf
        if self.enabled and self.tty:
            from tqdm import tqdm
            size = _fixed_size(self.stream)  # {}: follow the terminal as it is resized
            self._bar = tqdm(total=total, initial=done, desc=f"[{stage}]", unit="it", file=self.stream,
                             dynamic_ncols=not size, smoothing=0.1, mininterval=0.5, **size)
            self._t_bar = -math.inf

    def step(self, it: int, losses, force: bool = False) -> None:
        """After iteration ``it``. ``losses`` is a dict of floats, or a function giving it (called
        only when something is shown: reading a loss waits for the GPU). ``force``: a log point."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if self._bar is not None:
            self._bar.update(it - self._bar.n)
            if force or now - self._t_bar >= 1.0:  # the losses refresh once a second at most
                shown = {k: v for k, v in _value(losses).items() if k.startswith("l_")}  # not D's raw outputs
                self._bar.set_postfix_str(_losses_text(shown), refresh=False)
                self._t_bar = now
            return
        first = it == self._done0 + 1
        if force or first or now - self._t_line >= PLAIN_EVERY_S:
            rate = (it - self._done0) / max(now - self._t0, 1e-9)
            eta = format_duration((self._total - it) / max(rate, 1e-9))
            print(f"[{self._stage}] {it}/{self._total} {_losses_text(_value(losses))} | {rate:.2f} it/s | "
                  f"ETA {eta}", file=self.stream, flush=True)
            self._t_line = now

    def end_stage(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fixed_size(stream) -> dict:
    """A fixed bar size where the terminal reports none (some pseudo-terminals say 0 x 0, and tqdm
    then draws an empty bar); {} where it reports its size."""
    try:
        size = os.get_terminal_size(stream.fileno())
        if size.columns > 0 and size.lines > 0:
            return {}
    except (AttributeError, OSError, ValueError):  # not a real file (tests) or not a terminal
        pass
    return {"ncols": 100, "nrows": 24}


def _value(losses):
    return losses() if callable(losses) else losses


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, each with its ``stage`` and ``iteration``."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def trim(self, stages: tuple, stage: str, iteration: int) -> int:
        """Keep the records up to ``(stage, iteration)`` (stages ordered as in ``stages``) and drop
        the rest, including a line torn by a kill. Returns the number of lines dropped."""
        if not (self.enabled and os.path.isfile(self.path)):
            return 0
        limit = (stages.index(stage), iteration)
        kept, dropped = [], 0
        with open(self.path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    keep = (stages.index(rec["stage"]), rec["iteration"]) <= limit
                except (ValueError, KeyError):  # torn or foreign line
                    keep = False
                if keep and line.endswith("\n"):
                    kept.append(line)
                else:
                    dropped += 1
        if dropped:
            write_text_atomic(self.path, "".join(kept))
        return dropped


class TensorBoardLog:
    """TensorBoard scalars under ``folder``, numbered over both stages (stage 2 after stage 1)."""

    def __init__(self, folder: str, psnr_iters: int, purge_step: int | None = None):
        self._psnr_iters = psnr_iters
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # noqa: BLE001 - tensorboard is optional
            self._writer = None
            return
        # purge_step: a resumed run drops the events logged after its checkpoint.
        self._writer = SummaryWriter(folder, purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    @staticmethod
    def global_step(psnr_iters: int, stage: str, iteration: int) -> int:
        return iteration + (psnr_iters if stage == "gan" else 0)

    def add(self, record: dict) -> None:
        if self._writer is None:
            return
        step = self.global_step(self._psnr_iters, record["stage"], record["iteration"])
        for k, v in record.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("iteration", "time"):
                self._writer.add_scalar(f"{record['stage']}/{k}", v, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
