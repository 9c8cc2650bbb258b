"""Data pipeline: MATLAB-style resize, image folders, random crops, bundled default images."""
from .resize import imresize

__all__ = ["imresize"]
