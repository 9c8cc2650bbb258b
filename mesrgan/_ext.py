"""Loads the compiled extension ``mesrgan._C``, refusing one built against another torch.

An extension compiled against one torch and loaded under another fails with an ``undefined
symbol`` error at best and crashes at worst, so the build records its torch version
(``mesrgan/_build_info.py``) and this module compares before loading anything.
"""
import glob
import os

import torch

REBUILD = ("rebuild it against the installed torch with `pip install --no-build-isolation -e .` "
           "from the repository root (see docs/building.md)")

_here = os.path.dirname(os.path.abspath(__file__))


def _load():
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(f"mesrgan's compiled extension has not been built; {REBUILD}") from None
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"mesrgan's compiled extension was built against torch {_build_info.TORCH_VERSION}, "
            f"but torch {torch.__version__} is installed; {REBUILD}")
    libs = sorted(glob.glob(os.path.join(_here, "_C*.so")) + glob.glob(os.path.join(_here, "_C*.pyd")))
    if not libs:
        raise ImportError(f"mesrgan's compiled extension (mesrgan/_C*.so) is missing; {REBUILD}")
    try:
        torch.ops.load_library(libs[0])
    except OSError as e:
        raise ImportError(f"mesrgan's compiled extension {libs[0]} failed to load ({e}); {REBUILD}") from e
    return libs[0]


LIBRARY_PATH = _load()
WITH_CUDA = __import__(f"{__package__}._build_info", fromlist=["WITH_CUDA"]).WITH_CUDA
