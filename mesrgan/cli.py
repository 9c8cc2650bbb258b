"""What the command-line programs share: range-checked numeric flags, output locations checked
before any work, and files written atomically.

Every error here is a :class:`mesrgan.inference.UsageError` (exit status 2 in the programs) whose
message names the flag, what was expected and what was given.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

from .inference import UsageError

__all__ = ["int_range", "float_range", "check_dir", "check_file", "prepare_dir", "prepare_file", "write_text_atomic"]


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


def _new_file_mode():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader (or a crash midway) sees the old file or the whole new one, never half of it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode())  # mkstemp makes it private (0600); give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_program(build_parser, run, argv=None) -> int:
    """The ``main`` of a ``python -m`` program: parse ``argv``, ``run(args)``, and turn a
    ``UsageError`` into one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
