"""Data pipeline: MATLAB-style resize, image folders, random crops, bundled default images.

* :func:`imresize` - MATLAB-style antialiased bicubic resize (how SR papers make LR images).
* :func:`bundled_images` - scikit-image's bundled colour photos, ``split="train"`` or ``"val"``.
* :class:`CropDataset` - random HR crops + LR, from folders, arrays or paired LR/HR folders.
* ``python -m mesrgan.data.prepare SRC DST`` - cut large images into sub-images once.
"""
from .bundled import BUNDLED_TRAIN, BUNDLED_VAL, bundled_images
from .datasets import (IMAGE_EXTENSIONS, CropDataset, SampleIdSampler, augment, find_images,
                       load_image, prepare_validation, quantize, scan_images)
from .resize import imresize

__all__ = ["imresize", "bundled_images", "BUNDLED_TRAIN", "BUNDLED_VAL", "IMAGE_EXTENSIONS",
           "CropDataset", "SampleIdSampler", "augment", "find_images", "load_image",
           "prepare_validation", "quantize", "scan_images"]
