"""Running a trained generator: on images of any size in overlapping tiles within a memory budget
(:mod:`.tiling`), and exported to ONNX with the compiled ops decomposed (:mod:`.onnx_export`,
imported on use: it needs the ``export`` extra)."""
from .tiling import (DEFAULT_MAX_MEMORY, DEFAULT_TILE_PAD, MIN_TILE, image_memory, tile_edges, tile_for_budget,
                     tile_memory, upscale_pixels, upscale_tensor)

__all__ = ["DEFAULT_MAX_MEMORY", "DEFAULT_TILE_PAD", "MIN_TILE", "image_memory", "tile_edges", "tile_for_budget",
           "tile_memory", "upscale_pixels", "upscale_tensor"]
