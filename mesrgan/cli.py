"""What the command-line programs share: their one-line errors, range-checked numeric flags, the
device, precision and checkpoint flags, output locations checked before any work, output names,
and the ``main`` that turns errors and stop signals into an exit status.

Every error here is a :class:`UsageError` (exit status 2 in the programs) whose message names the
flag, what was expected and what was given.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import os
import signal
import sys
import tempfile
import threading

import torch

from .io.atomic import write_text_atomic  # noqa: F401  (re-exported for the programs)
from .models import CheckpointError, load_generator
from .models.pretrained import PRETRAINED, PretrainedError, pretrained_path

__all__ = ["UsageError", "resolve_device", "weights_file", "weights_label", "load_checkpoint", "DTYPES", "DTYPE_HELP",
           "resolve_dtype", "int_range", "float_range", "check_dir", "check_file", "prepare_dir", "prepare_file", "write_text_atomic",
           "output_stems", "check_finite_weights", "return_freed_memory", "run_program", "Stopped"]


class UsageError(Exception):
    """A problem with the command line or the checkpoint: nothing is processed."""


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """``--device``: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UsageError(f"{flag} {name}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{flag} {name}: CUDA is not available on this machine (torch {torch.__version__}, CUDA "
                         f"build {torch.version.cuda}); use {flag} cpu")
    return device


#: the generator a run folder given as --weights stands for, best first
RUN_FOLDER_WEIGHTS = ("best.pt", "stage1_best.pt", "last.pt")


def weights_file(weights: str) -> str:
    """``--weights``: a checkpoint file; a training run folder, which stands for its best
    generator: ``best.pt`` (stage 2's, or stage 1's when stage 2 never ran), else ``stage1_best.pt``
    (stage 1 ended without VGG weights), else ``last.pt``; or the name of a model shipped with the
    package (``mesrgan-lite-x4``) where no file or folder of that name exists."""
    if weights in PRETRAINED and not os.path.exists(weights):
        try:
            return pretrained_path(weights)
        except PretrainedError as e:
            raise UsageError(f"--weights: {e}") from e
    if not os.path.isdir(weights):
        return weights
    for name in RUN_FOLDER_WEIGHTS:
        if os.path.isfile(os.path.join(weights, name)):
            return os.path.join(weights, name)
    raise UsageError(f"--weights: {weights!r} is a folder without a run's checkpoint ({', '.join(RUN_FOLDER_WEIGHTS)}); "
                     "pass a checkpoint file or a training run folder")


def weights_label(given: str, resolved: str) -> str:
    """How the programs name the generator in their output: a shipped model by its name."""
    return f"{given} (shipped with mesrgan)" if given in PRETRAINED and resolved != given else resolved


def load_checkpoint(weights: str, model: str | None, device, scale: int | None = None):
    """``mesrgan.models.load_generator`` for the command-line programs, its errors turned into
    one-line :class:`UsageError` messages. Returns ``(generator, info, scale)``; ``scale`` is the
    checkpoint's (or the given one, or 4), and a given one that differs is an error. ``weights``
    may be a run folder (:func:`weights_file`)."""
    weights = weights_file(weights)
    if not os.path.exists(weights):
        raise UsageError(f"--weights: checkpoint {weights!r} does not exist")
    try:
        generator, info = load_generator(weights, model=model, device=device)
    except CheckpointError as e:  # already names the file and what it holds
        raise UsageError(f"--weights: {e}") from e
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        raise UsageError(f"--weights: cannot load {weights!r}: {e}") from e
    got = info["config"].get("scale")
    if scale is not None and got is not None and got != scale:
        raise UsageError(f"--scale {scale}: the checkpoint {weights!r} holds a x{got} {info['model']} generator")
    return generator, info, got or scale or 4


def int_range(lo: int, hi: int | None = None, *, zero_ok: bool = False):
    """An argparse ``type`` for whole numbers in ``[lo, hi]`` (``hi`` None: no upper bound),
    optionally also 0 (for flags where 0 means "off")."""
    def parse(text):
        try:
            value = int(text.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (zero_ok and value == 0) or (value >= lo and (hi is None or value <= hi)):
            return value
        span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise argparse.ArgumentTypeError(f"expected {'0 or ' if zero_ok else ''}a whole number {span}, got {value}")
    parse.__name__ = "int"  # argparse names the type in some messages
    return parse


def float_range(lo: float, hi: float | None = None, *, lo_open: bool = False):
    """An argparse ``type`` for finite numbers ``>= lo`` (``> lo`` when ``lo_open``) and ``<= hi``."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = value == value and abs(value) != float("inf") and (value > lo if lo_open else value >= lo) \
            and (hi is None or value <= hi)
        if not ok:
            span = f"{'>' if lo_open else '>='} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise argparse.ArgumentTypeError(f"expected a number {span}, got {text}")
        return value
    parse.__name__ = "float"
    return parse


def _first_existing(path):
    """The nearest ancestor of ``path`` (itself included) that exists."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _probe_write(folder, flag, path, what):
    try:
        # A real probe rather than os.access: access() ignores read-only mounts for root, and
        # pseudo file systems (/proc, /sys) refuse new files whatever the permission bits say.
        with tempfile.TemporaryFile(dir=folder, prefix=".mesrgan-write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {path}: {what} ({e.strerror or e})") from None


def check_dir(path: str, flag: str) -> str:
    """Check, creating nothing, that ``path`` is a writable folder or could be created as one
    (its nearest existing ancestor is a writable folder). Raises :class:`UsageError` naming
    ``flag`` when a part of the path is a file or nothing can be written there."""
    if os.path.isdir(path):
        _probe_write(path, flag, path, "cannot write in this folder")
    elif os.path.lexists(path):
        raise UsageError(f"{flag} {path}: is a file, not a folder")
    else:
        ancestor = _first_existing(path)
        if not os.path.isdir(ancestor):
            raise UsageError(f"{flag} {path}: cannot create the folder, because {ancestor} is a file")
        _probe_write(ancestor, flag, path, f"cannot create the folder in {ancestor}")
    return path


def prepare_dir(path: str, flag: str) -> str:
    """:func:`check_dir`, then create the folder and its parents where missing."""
    check_dir(path, flag)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None
    if not os.path.isdir(path):
        raise UsageError(f"{flag} {path}: cannot create the folder")
    _probe_write(path, flag, path, "cannot write in this folder")
    return path


def check_file(path: str, flag: str) -> str:
    """Check, creating nothing, that ``path`` can be written as a file: not a folder, its folder
    writable or creatable, an existing file there writable. Raises :class:`UsageError` naming ``flag``."""
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    try:
        check_dir(os.path.dirname(os.path.abspath(path)), flag)
    except UsageError as e:
        raise UsageError(f"{flag} {path}: {str(e)[len(flag) + 1:]}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{flag} {path}: the file exists and cannot be overwritten")
    return path


def prepare_file(path: str, flag: str) -> str:
    """:func:`check_file`, then create the file's folder where missing."""
    check_file(path, flag)
    parent = os.path.dirname(os.path.abspath(path))
    try:
        prepare_dir(parent, flag)
    except UsageError as e:
        raise UsageError(f"{flag} {path}: {str(e)[len(flag) + 1:]}") from None
    return path


#: inference precisions of upscale / evaluate (``--dtype``), and what each does where
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_HELP = ("inference precision: float32 (default), bfloat16 (CPU and CUDA: the model and each tile in "
              "bfloat16; fast on CPUs with AVX512_BF16 or AMX and on GPUs, within bfloat16's rounding of "
              "float32, about 3 significant digits), float16 (CUDA only)")


def resolve_dtype(name: str | None, device: torch.device, flag: str = "--dtype") -> torch.dtype:
    """``--dtype NAME`` on ``device``: float16 needs CUDA (PyTorch's CPU float16 convolutions are slow
    and not what users run); bfloat16 runs on both."""
    dtype = DTYPES[name or "float32"]
    if dtype == torch.float16 and device.type != "cuda":
        raise UsageError(f"{flag}: float16 inference is CUDA-only; on {device.type} use --dtype bfloat16 "
                         "(fast on CPUs with AVX512_BF16 or AMX) or float32")
    return dtype


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_freed_memory() -> bool:
    """Make glibc hand large freed blocks back to the OS at once (a fixed 64 KiB mmap threshold).

    By default glibc raises its mmap threshold (up to 32 MiB) after a large block is freed, and
    later blocks below it come from the heap and stay there when freed: a tiled upscale with a
    300 MB budget peaked at 591 MB above its baseline, 340 MB with the fixed threshold (2-core AMD
    EPYC VM, docs/evaluation.md). Process-wide, so only programs call it. Returns whether it took."""
    try:
        return ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 64 * 1024) == 1
    except (OSError, AttributeError):  # not glibc
        return False


def output_stems(paths) -> dict:
    """``{path: stem}`` for the output files of ``paths``: each input's file stem, or, where inputs
    share one (``a.jpg`` and ``a.png``; ``x/a.png`` and ``y/a.png``), a longer name that tells
    them apart (``a_jpg``, ``a_png``; ``x_a_png``, ``y_a_png``), so that no output overwrites another."""
    def with_extension(p):
        return os.path.basename(p).replace(".", "_")

    def with_folder(p):
        return f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}_{with_extension(p)}"

    stems = {p: os.path.splitext(os.path.basename(p))[0] for p in paths}
    for longer in (with_extension, with_folder):
        taken = collections.Counter(stems.values())
        stems = {p: longer(p) if taken[s] > 1 else s for p, s in stems.items()}
    return stems


def check_finite_weights(model, flag: str, path: str) -> None:
    """Refuse a network with NaN or infinite weights: it would only produce black or garbage images."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise UsageError(f"{flag} {path}: the weights hold NaN or infinite values ({shown}); the network cannot "
                         "produce an image from them (a training run that diverged?)")


class Stopped(BaseException):
    """SIGTERM (or another stop signal) while a program runs: unwinds like Ctrl-C, so that the file
    being written is discarded and the ones finished stay."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, _frame):
    raise Stopped(signum)


@contextlib.contextmanager
def _sigterm_unwinds():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_program(build_parser, run, argv=None) -> int:
    """The ``main`` of a ``python -m`` program: parse ``argv``, ``run(args)``, and turn a
    ``UsageError`` into one line on stderr and exit status 2, and Ctrl-C or SIGTERM into one line
    and exit status 128 + the signal (every output is written whole or not at all, so the ones
    already finished are complete and the one in progress is absent)."""
    args = build_parser().parse_args(argv)
    try:
        with _sigterm_unwinds():
            return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"\nstopped by {signal.Signals(signum).name}: the outputs finished before it are complete; "
              "the one in progress was not written", file=sys.stderr, flush=True)
        return 128 + signum
