"""mesrgan: fast 3x3 depthwise convolution for PyTorch, and the SRGAN / ESRGAN / MESRGAN models.

Importing the package loads the compiled operator (``torch.ops.mesrgan.*``); see
:mod:`mesrgan.ops` for its Python API.
"""
import sys as _sys

try:
    from . import _ext  # noqa: F401  (loads and registers the compiled operator)
    from . import ops
except KeyboardInterrupt:
    # `python -m mesrgan.<program>` imports this package (and torch) before the program's own
    # Ctrl-C handling exists; while it does, sys.argv[0] is "-m". A library import is the caller's.
    if _sys.argv[:1] != ["-m"]:
        raise
    print("\ninterrupted while starting: nothing was done", file=_sys.stderr, flush=True)
    raise SystemExit(130) from None

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
