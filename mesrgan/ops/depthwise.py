"""Python face of ``torch.ops.mesrgan.depthwise_conv3x3``: fake kernels, the function, ``nn.Module``.

The compiled ops do the forward (convolution + bias + activation in one pass), the activation's
backward and the weight / bias reduction. The autograd, registered in C++ (csrc/autograd.cpp),
builds the backward from those three ops only, so that every derivative of every order runs
through compiled kernels:

* grad_input  = depthwise_conv3x3(grad_pre, weight rotated 180°)   (the forward op again)
* grad_weight, grad_bias = depthwise_conv3x3_backward_weight(x, grad_pre)
* grad_pre    = depthwise_conv3x3_activation_backward(grad_output, output): grad_output times the
  activation's slope, read from the sign of the saved output.

Because the activation's slope is read from the sign of the output, leaky_relu needs
``negative_slope >= 0``.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import _ext
from .layout import op_output_format

ACTIVATIONS = ("none", "relu", "relu6", "leaky_relu")
IMPLS = ("auto", "mesrgan", "torch")

_op = torch.ops.mesrgan.depthwise_conv3x3.default


def _check_activation(activation, negative_slope):
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a str, one of {ACTIVATIONS}, got {type(activation).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError(f"negative_slope must be a float, got {type(negative_slope).__name__}")
    if negative_slope < 0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")


def _activate(z, activation, negative_slope):
    if activation == "relu":
        return F.relu(z)
    if activation == "relu6":
        return F.relu6(z)
    if activation == "leaky_relu":
        return F.leaky_relu(z, negative_slope)
    return z


def depthwise_conv3x3_reference(x, weight, bias=None, *, activation="none", negative_slope=0.2):
    """PyTorch's own path: ``F.conv2d(x, weight, bias, padding=1, groups=C)`` then the activation.

    The one reference used by the tests, the benchmarks and ``DepthwiseConv3x3(impl="torch")``.
    """
    _check_activation(activation, negative_slope)
    return _activate(F.conv2d(x, weight, bias, padding=1, groups=x.shape[1]), activation, negative_slope)


def depthwise_conv3x3(x, weight, bias=None, *, activation="none", negative_slope=0.2):
    """Depthwise 3x3 convolution, stride 1, padding 1, with the activation fused into the output write.

    Args:
        x: ``(N, C, H, W)``; float32/float64/bfloat16 on CPU, float32/float16/bfloat16 on CUDA. NCHW and
            channels_last inputs each take their own kernel; other strides are copied first.
        weight: ``(C, 1, 3, 3)``, as ``nn.Conv2d(C, C, 3, padding=1, groups=C)`` stores it.
        bias: ``(C,)`` or None.
        activation: ``"none"``, ``"relu"``, ``"relu6"`` or ``"leaky_relu"``.
        negative_slope: slope of leaky_relu for negative inputs (>= 0).

    Returns:
        ``(N, C, H, W)`` in x's dtype and memory format (channels_last in, channels_last out).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if bias is not None and not isinstance(bias, torch.Tensor):
        raise TypeError(f"bias must be a torch.Tensor or None, got {type(bias).__name__}")
    _check_activation(activation, negative_slope)
    return _op(x, weight, bias, activation, float(negative_slope))


def _check_same_device(op, x_name, x, **others):
    # The dispatcher sends a call to the Meta kernel (the fake below) as soon as one argument is on
    # the meta device, so a CPU x with a meta weight would otherwise return uninitialised memory;
    # the compiled kernels check real devices in C++ (csrc/depthwise_conv3x3.cpp).
    for name, t in others.items():
        if t is not None:
            torch._check(t.device == x.device,
                         lambda: f"{op}: {name} must be on {x_name}'s device ({x.device}), got {t.device}")


@torch.library.register_fake("mesrgan::depthwise_conv3x3")
def _fake_forward(x, weight, bias=None, activation="none", negative_slope=0.2):
    _check_same_device("depthwise_conv3x3", "x", x, weight=weight, bias=bias)
    torch._check(x.dim() == 4, lambda: f"depthwise_conv3x3: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    torch._check(tuple(weight.shape) == (x.shape[1], 1, 3, 3),
                 lambda: f"depthwise_conv3x3: weight must have shape (C, 1, 3, 3), got {tuple(weight.shape)}")
    return torch.empty_like(x, memory_format=op_output_format(x))


@torch.library.register_fake("mesrgan::depthwise_conv3x3_activation_backward")
def _fake_activation_backward(grad_out, out, activation, negative_slope):
    _check_same_device("depthwise_conv3x3_activation_backward", "out", out, grad_out=grad_out)
    return torch.empty_like(grad_out, memory_format=op_output_format(grad_out))


@torch.library.register_fake("mesrgan::depthwise_conv3x3_backward_weight")
def _fake_backward_weight(x, grad_out, need_bias):
    _check_same_device("depthwise_conv3x3_backward_weight", "x", x, grad_out=grad_out)
    C = x.shape[1]
    return x.new_empty((C, 1, 3, 3)), x.new_empty((C,) if need_bias else (0,))


# Autograd of all three ops is registered in C++ (csrc/autograd.cpp), so that a forward + backward
# runs no Python beyond the call itself; the backward of each is written with the ops, so double
# backward works.


def cpu_cache_info():
    """The CPU output cache (large outputs of the mesrgan ops come from recycled memory; see
    docs/performance.md): a dict with ``idle_bytes``, ``idle_blocks``, ``hits``, ``misses`` and ``limit_bytes``
    (``MESRGAN_CPU_CACHE_MB``; 0 when the cache is off)."""
    keys = ("idle_bytes", "idle_blocks", "hits", "misses", "limit_bytes")
    return dict(zip(keys, torch.ops.mesrgan._cpu_cache_info()))


def empty_cpu_cache():
    """Frees the idle blocks of the CPU output cache (tensors still alive keep theirs)."""
    torch.ops.mesrgan._cpu_cache_clear()


_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)


def autocast_dtype(t):
    """The dtype ``torch.autocast`` casts t to for the mesrgan ops (their autocast kernels cast as
    conv2d's do: float32 / float16 / bfloat16 tensors on the region's device; float64 is left
    alone), or None outside a region."""
    device = t.device.type
    if device in ("cpu", "cuda") and t.dtype in _AUTOCAST_ELIGIBLE and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def kernel_dtype(x):
    """The dtype a mesrgan op runs in for input x: the autocast dtype inside ``torch.autocast``, x's
    own dtype elsewhere."""
    return autocast_dtype(x) or x.dtype


def _has_kernel(x):
    dtype = kernel_dtype(x)
    if x.device.type == "cpu":
        return dtype in (torch.float32, torch.float64, torch.bfloat16)
    if x.device.type == "cuda":
        return _ext.WITH_CUDA and dtype in (torch.float32, torch.float16, torch.bfloat16)
    return False


def _will_differentiate(x, module):
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters()))


def auto_picks_ours(x, module, has_kernel=None, ours_trains_bf16=False):
    """``impl="auto"``'s choice for ``module`` called on x: ours where we have a kernel
    (``has_kernel(x)``; default: the depthwise op's), except a CPU bfloat16 call that will be
    differentiated, which takes PyTorch's path unless ``ours_trains_bf16``.

    The fused block passes ``ours_trains_bf16`` where its bfloat16 backward runs vdpbf16ps on a CPU
    without AMX (``bottleneck.fused_bf16_training_wins``): there, on an AMD EPYC Zen 4 at 2 threads
    (2026-12-05, quiet machine, LR 32 batch 4, autocast), a MESRGAN-paper training step took
    0.98-0.99x the time of PyTorch's path and lite's 0.82x, with a fraction of its activation memory
    (the fused backward recomputes the hidden tensor). The depthwise op alone measured level with
    PyTorch's path in bfloat16 training (1.05x, same machine); without AVX512_BF16 our bfloat16
    backward runs float32 GEMMs on widened rows (slower than PyTorch's path in a rough measurement
    with that form forced on the same machine), and on AMX CPUs PyTorch's convolutions run AMX,
    which we have not measured against: those stay on PyTorch's path."""
    if not (has_kernel or _has_kernel)(x):
        return False
    if x.device.type == "cpu" and kernel_dtype(x) == torch.bfloat16 and _will_differentiate(x, module):
        return ours_trains_bf16
    return True


class DepthwiseConv3x3(nn.Module):
    """Depthwise 3x3 convolution (stride 1, padding 1) with an optional fused activation.

    Parameters and state_dict match ``nn.Conv2d(channels, channels, 3, padding=1, groups=channels,
    bias=bias)``: ``weight`` ``(C, 1, 3, 3)`` and ``bias`` ``(C,)``, with the same initialisation.

    Args:
        channels: C.
        bias: learn a per-channel bias.
        activation: ``"none"``, ``"relu"``, ``"relu6"`` or ``"leaky_relu"``, fused into the op.
        negative_slope: leaky_relu's slope (>= 0).
        impl: ``"mesrgan"`` always uses the compiled op (errors where it has no kernel);
            ``"torch"`` uses ``F.conv2d`` + activation (PyTorch's path, the paper's baseline);
            ``"auto"`` uses the compiled op where it has a kernel for the input's device and dtype
            (the autocast dtype inside ``torch.autocast``) and PyTorch's path elsewhere, and for
            CPU bfloat16 calls that will be differentiated (see :func:`auto_picks_ours`).
    """

    def __init__(self, channels, bias=True, activation="none", negative_slope=0.2, impl="auto",
                 device=None, dtype=None):
        super().__init__()
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        _check_activation(activation, negative_slope)
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        self.channels = channels
        self.activation = activation
        self.negative_slope = float(negative_slope)
        self.impl = impl
        self.weight = nn.Parameter(torch.empty(channels, 1, 3, 3, device=device, dtype=dtype))
        if bias:
            self.bias = nn.Parameter(torch.empty(channels, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # Same as nn.Conv2d: kaiming_uniform(a=sqrt(5)) and a bias uniform in ±1/sqrt(fan_in), fan_in = 9.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(9)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        if self.impl == "torch" or (self.impl == "auto" and not auto_picks_ours(x, self)):
            return depthwise_conv3x3_reference(x, self.weight, self.bias, activation=self.activation,
                                               negative_slope=self.negative_slope)
        return depthwise_conv3x3(x, self.weight, self.bias, activation=self.activation,
                                 negative_slope=self.negative_slope)

    def extra_repr(self):
        s = f"{self.channels}, bias={self.bias is not None}, activation={self.activation!r}"
        if self.activation == "leaky_relu":
            s += f", negative_slope={self.negative_slope}"
        return s + f", impl={self.impl!r}"
