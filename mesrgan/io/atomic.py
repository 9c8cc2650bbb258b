"""Files that are whole or absent: every output of the package is written through here.

:func:`atomic_path` hands out a temporary name in the destination's folder; when the block ends
without an exception the file is flushed to disk and renamed over the destination (a rename within
a folder is atomic on POSIX), otherwise it is deleted. A reader, or a crash at any moment, sees the
old file or the whole new one, never part of one. Only ``kill -9`` (or a power cut) can leave the
temporary file itself behind: a hidden ``.<name>.tmp<pid>`` beside the destination, never under
the destination's name; :func:`remove_temp_files` clears those of a folder whose writer is known
to be gone.
"""
from __future__ import annotations

import contextlib
import os
import re

__all__ = ["atomic_path", "write_text_atomic", "remove_temp_files", "is_temp_name"]

_TEMP_NAME = re.compile(r"^\..+\.tmp\d+$")


def _temp_name(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp{os.getpid()}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one :func:`atomic_path` hands out."""
    return bool(_TEMP_NAME.match(name))


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: str) -> None:
    with contextlib.suppress(OSError):  # make the rename durable where the OS allows
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str):
    """``with atomic_path(dst) as tmp: write(tmp)``: ``dst`` gets the whole file or is left as it
    was. The writer may open ``tmp`` itself (Pillow, ``torch.save``, ...); the new file gets the
    usual permissions (``0666 & ~umask``), like ``open(dst, "w")`` would give."""
    path = os.fspath(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _new_file_mode())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_folder(os.path.dirname(os.path.abspath(path)))


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8) through :func:`atomic_path`."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)


def remove_temp_files(folder: str) -> list:
    """Delete the temporary files that killed writers left in ``folder``; returns their paths.
    Only safe when no live process writes there (a live writer would lose its file)."""
    if not os.path.isdir(folder):
        return []
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if is_temp_name(name) and os.path.isfile(path):
            os.unlink(path)
            removed.append(path)
    return removed
