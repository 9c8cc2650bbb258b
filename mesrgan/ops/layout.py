"""Memory formats, in one place: the one the compiled ops return, and the caller's own.

channels_last (NHWC) is the CPU kernels' layout; a contiguous NCHW tensor is also accepted, and a
result goes back in the format its input came in.
"""
import torch

__all__ = ["op_output_format", "callers_format"]


def _prefers_channels_last(x):
    # Mirrors prefers_channels_last() in csrc/depthwise_conv3x3.cpp: a tensor contiguous in both
    # formats (C == 1, or H == W == 1) counts as NCHW; other strides go by which of C and W is inner.
    nchw = x.is_contiguous()
    nhwc = x.is_contiguous(memory_format=torch.channels_last)
    if nchw or nhwc:
        return nhwc and not nchw
    return x.stride(1) < x.stride(3)


def op_output_format(x):
    """The memory format of the compiled ops' result (and of their fake kernels') for input ``x``."""
    return torch.channels_last if _prefers_channels_last(x) else torch.contiguous_format


def callers_format(x):
    """The memory format to hand a result back in: channels_last only when ``x`` is 4-D and
    channels_last-contiguous but not NCHW-contiguous; the default format for anything else."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
