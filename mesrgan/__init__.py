"""mesrgan: fast 3x3 depthwise convolution for PyTorch, and the SRGAN / ESRGAN / MESRGAN models.

Importing the package loads the compiled operator (``torch.ops.mesrgan.*``); see
:mod:`mesrgan.ops` for its Python API.
"""
from . import _ext  # noqa: F401  (loads and registers the compiled operator)
from . import ops

__version__ = "0.1.0"
__all__ = ["ops", "__version__"]
