"""Colour-to-luma conversions of MATLAB, shared by the metrics (one definition of each formula).

They take tensors ``(N, 3, H, W)`` on the 0..255 scale and return ``(N, 1, H, W)``,
unrounded (MATLAB rounds only because its input is uint8; the callers decide).
"""

# MATLAB rgb2ycbcr, first row (ITU-R BT.601, studio range 16..235), for R, G, B in [0, 1]; the
# output is on the 0..255 scale: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for 8-bit RGB.
Y_COEFFS = (65.481, 128.553, 24.966)
Y_OFFSET = 16.0
# MATLAB rgb2gray: the first row of inv([1 0.956 0.621; 1 -0.272 -0.647; 1 -1.106 1.703]), i.e.
# the Y of NTSC YIQ to full precision (not the rounded 0.299 / 0.587 / 0.114 of OpenCV).
GRAY_COEFFS = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def y_of(rgb255):
    """BT.601 luma of MATLAB's ``rgb2ycbcr``: ``(N, 3, H, W)`` 0..255 -> ``(N, 1, H, W)`` 16..235."""
    r, g, b = rgb255.unbind(1)
    return (Y_OFFSET + (Y_COEFFS[0] * r + Y_COEFFS[1] * g + Y_COEFFS[2] * b) / 255.0)[:, None]


def integer_y_times_255000(rgb_int):
    """``255000 * Y`` of :func:`y_of`, exactly, for integer ``(N, 3, H, W)`` 8-bit RGB (int64)."""
    r, g, b = rgb_int.unbind(1)
    return (16 * 255_000 + 65_481 * r + 128_553 * g + 24_966 * b)[:, None]


def gray_of(rgb255):
    """MATLAB's ``rgb2gray``: ``(N, 3, H, W)`` 0..255 -> ``(N, 1, H, W)`` 0..255."""
    r, g, b = rgb255.unbind(1)
    return (GRAY_COEFFS[0] * r + GRAY_COEFFS[1] * g + GRAY_COEFFS[2] * b)[:, None]
