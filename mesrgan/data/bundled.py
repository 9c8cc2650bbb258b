"""The default training data: colour photographs shipped inside scikit-image (no download).

scikit-image carries a handful of real photographs in its package folder ``skimage/data``. They
are read straight from there with Pillow (nothing is fetched, ``skimage`` itself is not even
imported). Two of them are held out for validation.
"""
from __future__ import annotations

import importlib.util
import os

import numpy as np

__all__ = ["BUNDLED_TRAIN", "BUNDLED_VAL", "bundled_images", "bundled_data_dir"]

# Real colour photographs only: the synthetic charts (color, chessboard, phantom), the grayscale
# images and the second view of the motorcycle stereo pair (nearly the same picture) are left out.
BUNDLED_TRAIN = ("astronaut.png", "coffee.png", "motorcycle_left.png", "hubble_deep_field.jpg",
                 "retina.jpg", "ihc.png")
BUNDLED_VAL = ("chelsea.png", "rocket.jpg")


def bundled_data_dir() -> str:
    """The folder of scikit-image's bundled images; a clear error when scikit-image is missing."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the default training data are the photographs bundled with scikit-image, which is not "
            "installed: `pip install scikit-image`, or pass your own images with --data DIR")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def bundled_images(split: str = "train") -> list[tuple[str, np.ndarray]]:
    """The bundled photographs of one split, as ``(name, HxWx3 uint8 RGB array)`` pairs.

    Args:
        split: ``"train"`` (6 photos) or ``"val"`` (2 held-out photos: chelsea, rocket).

    Names are the file stems (``"astronaut"``, ``"chelsea"``, ...); the order is fixed.
    """
    from .datasets import load_image  # local: datasets imports nothing from here

    if split not in ("train", "val"):
        raise ValueError(f"bundled_images: split must be 'train' or 'val', got {split!r}")
    root = bundled_data_dir()
    files = BUNDLED_TRAIN if split == "train" else BUNDLED_VAL
    out = []
    for f in files:
        path = os.path.join(root, f)
        if not os.path.isfile(path):
            raise RuntimeError(f"scikit-image's bundled image {path} is missing; "
                               "reinstall scikit-image or pass --data DIR")
        out.append((os.path.splitext(f)[0], load_image(path)))
    return out
