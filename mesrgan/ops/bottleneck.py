"""Python face of ``torch.ops.mesrgan.bottleneck_block``: the fused MobileNetV2 bottleneck block.

One call computes ``1x1 expand + bias -> LeakyReLU -> depthwise 3x3 + bias -> LeakyReLU ->
1x1 project + bias (+ x)``. The CPU kernel (csrc/cpu/bottleneck_*) works in bands of rows
with their halo, so the hidden tensor (``hidden`` channels at full resolution) never goes to memory
at full size; its backward recomputes the hidden activations band by band instead of storing them.
Autograd is registered in C++ (csrc/autograd_bottleneck.cpp). Double backward is refused with an
error (the unfused path, ``bottleneck_block_reference``, supports it).
"""
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from .depthwise import kernel_dtype
from .layout import op_output_format

_op = torch.ops.mesrgan.bottleneck_block.default
PARAM_NAMES = ("expand_weight", "expand_bias", "dw_weight", "dw_bias", "project_weight", "project_bias")


class BlockParams(NamedTuple):
    """One block's arguments of :func:`bottleneck_block` after x: its six parameters, then skip."""
    expand_weight: torch.Tensor
    expand_bias: Optional[torch.Tensor]
    dw_weight: torch.Tensor
    dw_bias: Optional[torch.Tensor]
    project_weight: torch.Tensor
    project_bias: Optional[torch.Tensor]
    skip: bool

    def tensors(self) -> tuple:
        """The six parameters, in :data:`PARAM_NAMES` order."""
        return tuple(self)[:len(PARAM_NAMES)]

    @property
    def in_channels(self) -> int:
        return self.expand_weight.shape[1]

    @property
    def out_channels(self) -> int:
        return self.project_weight.shape[0]


def _check_slope(negative_slope, name="negative_slope"):
    if not isinstance(negative_slope, (int, float)) or isinstance(negative_slope, bool):
        raise TypeError(f"{name} must be a float, got {type(negative_slope).__name__}")
    if negative_slope < 0:
        raise ValueError(f"{name} must be >= 0, got {negative_slope}")


def bottleneck_block_reference(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                               *, skip=False, negative_slope=0.2):
    """PyTorch's own path: three ``F.conv2d`` calls and two LeakyReLUs, each tensor at full size.

    The one reference of the fused op, used by the tests and by ``BottleneckResidualBlock``'s
    unfused paths.
    """
    h = F.leaky_relu(F.conv2d(x, expand_weight, expand_bias), negative_slope)
    h = F.leaky_relu(F.conv2d(h, dw_weight, dw_bias, padding=1, groups=h.shape[1]), negative_slope)
    y = F.conv2d(h, project_weight, project_bias)
    return x + y if skip else y


def bottleneck_block(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, *,
                     skip=False, negative_slope=0.2):
    """The fused bottleneck block.

    Args:
        x: ``(N, C_in, H, W)``, float32, float64 or bfloat16 on CPU (all arguments of one dtype;
            inside ``torch.autocast`` they are cast to its dtype). channels_last is the kernel's layout;
            other layouts are copied to it, and the output comes back in x's memory format.
        expand_weight: ``(hidden, C_in, 1, 1)``; expand_bias: ``(hidden,)`` or None.
        dw_weight: ``(hidden, 1, 3, 3)``; dw_bias: ``(hidden,)`` or None.
        project_weight: ``(C_out, hidden, 1, 1)``; project_bias: ``(C_out,)`` or None.
        skip: add x to the output (needs ``C_in == C_out``).
        negative_slope: of both LeakyReLUs (>= 0).

    Returns:
        ``(N, C_out, H, W)``, equal to :func:`bottleneck_block_reference` of the same arguments.
    """
    for name, t in (("x", x), ("expand_weight", expand_weight), ("dw_weight", dw_weight),
                    ("project_weight", project_weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("expand_bias", expand_bias), ("dw_bias", dw_bias), ("project_bias", project_bias)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    # Checked here as well as in C++: with a meta tensor among the arguments the dispatcher would
    # pick the meta (fake) kernel and return an empty result instead of reaching the device check.
    _check_devices(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias)
    if not isinstance(skip, bool):
        raise TypeError(f"skip must be a bool, got {type(skip).__name__}")
    _check_slope(negative_slope)
    return _op(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip,
               float(negative_slope))


def _check_devices(x, *params):
    for name, t in zip(PARAM_NAMES, params):
        if t is not None and t.device != x.device:
            raise RuntimeError(f"bottleneck_block: {name} must be on x's device ({x.device}), got {t.device}")


# The form of the fused block's bfloat16 GEMMs in this process: "avx512_bf16" (vdpbf16ps) or "float32"
# (the float32 GEMMs on widened rows); fixed for the process (the CPU, MESRGAN_CPU_ISA).
_CPU_BF16_GEMM = torch.ops.mesrgan._cpu_bf16_gemm()


def _cpu_has_amx():
    """Whether the CPU has AMX tiles (then oneDNN runs PyTorch's bfloat16 convolutions on them)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private in torch 2.x: fall back to cpuinfo
    if probe is not None:
        return bool(probe())
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


def fused_bf16_training_wins():
    """Whether ``impl="auto"`` trains CPU bfloat16 blocks with the fused op: where its bfloat16 GEMMs
    run vdpbf16ps (AVX512_BF16) and the CPU has no AMX. Its backward then works band by band on
    bfloat16 rows: a MESRGAN-paper autocast training step took 0.98-0.99x the time of PyTorch's path
    and lite's 0.82x (AMD EPYC Zen 4, 2 threads, LR 32 batch 4, 2026-12-05), holding no hidden
    tensor. Without AVX512_BF16 its GEMMs are float32 ones on widened rows (slower than PyTorch's
    path in a rough measurement with that form forced), and with AMX PyTorch's convolutions run on AMX tiles (not measured against): both stay
    on PyTorch's path."""
    return _CPU_BF16_GEMM == "avx512_bf16" and not _CPU_HAS_AMX


_CPU_HAS_AMX = _cpu_has_amx()


def has_fused_kernel(x):
    """Whether the fused op has a kernel for x's device and dtype (CPU: float32, float64, bfloat16),
    the dtype being the autocast dtype inside ``torch.autocast`` (see :func:`kernel_dtype`)."""
    return x.device.type == "cpu" and kernel_dtype(x) in (torch.float32, torch.float64, torch.bfloat16)


@torch.library.register_fake("mesrgan::bottleneck_block")
def _fake_forward(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip=False,
                  negative_slope=0.2):
    torch._check(x.dim() == 4, lambda: f"bottleneck_block: x must be 4-D (N, C_in, H, W), got {tuple(x.shape)}")
    torch._check(project_weight.dim() == 4, lambda: "bottleneck_block: project_weight must be 4-D")
    for name, t in zip(PARAM_NAMES, (expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias)):
        torch._check(t is None or t.device == x.device,
                     lambda: f"bottleneck_block: {name} must be on x's device ({x.device}), got {t.device}")
    N, _, H, W = x.shape
    return x.new_empty((N, project_weight.shape[0], H, W)).contiguous(memory_format=op_output_format(x))


@torch.library.register_fake("mesrgan::bottleneck_block_backward")
def _fake_backward(grad_out, x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, skip,
                   negative_slope, output_mask):
    def grad_like(t, needed):
        return t.new_empty(t.shape) if needed and t is not None else x.new_empty((0,))

    gx = torch.empty_like(x, memory_format=op_output_format(x)) if output_mask[0] else x.new_empty((0,))
    c_out = project_weight.shape[0]
    return (gx, grad_like(expand_weight, output_mask[1]),
            grad_like(expand_bias, output_mask[2] and expand_bias is not None),
            grad_like(dw_weight, output_mask[3]),
            grad_like(dw_bias, output_mask[4] and dw_bias is not None),
            grad_like(project_weight, output_mask[5]),
            x.new_empty((c_out,) if output_mask[6] else (0,)))
