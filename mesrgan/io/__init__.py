"""Files in and out: images read and written keeping layout, bit depth and format
(:mod:`.images`), and every write whole or absent (:mod:`.atomic`). The base layer of the package:
it imports nothing else of mesrgan."""
from .atomic import atomic_path, is_temp_name, remove_temp_files, write_text_atomic
from .images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, MAX_PIXELS_ENV, ImageReadError, ImageTooLargeError,
                     LoadedImage, check_image, default_max_pixels, image_size, is_image_file, read_image,
                     read_image_samples, read_png16, to_samples, write_image, write_png16)

__all__ = ["atomic_path", "is_temp_name", "remove_temp_files", "write_text_atomic", "DEFAULT_MAX_PIXELS",
           "IMAGE_EXTENSIONS", "MAX_PIXELS_ENV", "ImageReadError", "ImageTooLargeError", "LoadedImage", "check_image",
           "default_max_pixels", "image_size", "is_image_file", "read_image", "read_image_samples", "read_png16",
           "to_samples", "write_image", "write_png16"]
