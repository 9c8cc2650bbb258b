"""Small reusable blocks shared by the generators: init, dense block, bottleneck block, upsamplers."""
import math

import torch
from torch import nn
from torch.nn import functional as F

from ..ops import BlockParams, DepthwiseConv3x3, bottleneck_block, has_fused_kernel
from ..ops.bottleneck import fused_bf16_training_wins
from ..ops.dense import dense_bottleneck_stack
from ..ops.depthwise import IMPLS, auto_picks_ours, autocast_dtype
from ..ops.layout import callers_format
from ..ops.triton_bottleneck import bottleneck_block_triton

# The bottleneck block's implementations: the depthwise op's, and the fused block in Triton.
BLOCK_IMPLS = IMPLS + ("triton",)

HIDDEN_WIDTHS = ("input", "output")
SCALES = (2, 4)


def check_scale(scale):
    """Validate an upscaling factor; the upsamplers are built from ×2 stages."""
    if not isinstance(scale, int) or isinstance(scale, bool) or scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return scale


def check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@torch.no_grad()
def scaled_kaiming_init_(modules, scale=0.1):
    """ESRGAN's init for residual branches: Kaiming normal (fan_in) times ``scale``, zero bias.

    Shrinking the branch makes each residual block start close to the identity, which is what lets
    deep stacks without batch norm train. Applies to every ``nn.Conv2d``, ``nn.Linear`` and
    ``DepthwiseConv3x3`` inside ``modules`` (an iterable of modules).
    """
    for module in modules:
        for m in module.modules():
            # Meta tensors hold no values, and their init goes through slow decompositions.
            if isinstance(m, (nn.Conv2d, nn.Linear, DepthwiseConv3x3)) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.zero_()


def conv3x3(in_channels, out_channels):
    return nn.Conv2d(in_channels, out_channels, 3, padding=1)


def inner_memory_format(x):
    """The layout the generators compute in for input x: channels_last on CPU, where oneDNN's
    convolutions and our fused block run fastest in it (and NCHW inputs would otherwise be reordered
    by every oneDNN convolution); the input's own layout elsewhere (CUDA: as measured before)."""
    if x.device.type == "cpu" and x.dim() == 4:
        return torch.channels_last
    return callers_format(x)




class BottleneckResidualBlock(nn.Module):
    """MobileNetV2's inverted bottleneck standing in for one 3×3 convolution.

    ``(N, C_in, H, W) -> (N, C_out, H, W)``: 1×1 expand to ``hidden`` channels → LeakyReLU →
    depthwise 3×3 with LeakyReLU → 1×1 project, linear. The input is added back only when ``skip``
    is set and ``C_in == C_out``.

    With ``impl="auto"`` or ``"mesrgan"``, a CPU float32 / float64 / bfloat16 input runs the whole
    block as one fused op (``mesrgan.ops.bottleneck_block``: the hidden tensor is never stored at
    full size, and the backward recomputes it); elsewhere (CUDA) the depthwise step uses our op
    (``mesrgan.ops.DepthwiseConv3x3``) between PyTorch's 1×1 convolutions. ``"auto"`` leaves CPU
    bfloat16 calls that will be differentiated to PyTorch's path on CPUs without AVX512_BF16 or with
    AMX (``mesrgan.ops.bottleneck.fused_bf16_training_wins``). ``impl="torch"`` is PyTorch's own path
    throughout. ``impl="triton"`` runs the whole block as the fused op written in
    Triton (``mesrgan.ops.triton_bottleneck``), for CUDA tensors (CPU tensors only under Triton's
    interpreter, ``TRITON_INTERPRET=1``); it is chosen only when asked for, never by ``"auto"``, and
    **has not yet run on a GPU** (it has passed the interpreter tests only). Parameters and
    ``state_dict`` are the same for every impl. The fused ops have no double backward: use
    ``impl="torch"`` for ``create_graph=True``.

    Args:
        in_channels, out_channels: C_in, C_out.
        expansion: t; the hidden width is ``t * C_in`` (``hidden_width="input"``, as the paper
            describes the block) or ``t * C_out`` (``hidden_width="output"``).
        skip: use the identity skip where the shapes allow it.
        negative_slope: of both LeakyReLUs.
        impl: ``"auto"``, ``"mesrgan"``, ``"torch"`` or ``"triton"``, as above.
    """

    def __init__(self, in_channels, out_channels, expansion=2, hidden_width="input", skip=True,
                 negative_slope=0.2, impl="auto"):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("expansion", expansion)
        if hidden_width not in HIDDEN_WIDTHS:
            raise ValueError(f"hidden_width must be one of {HIDDEN_WIDTHS}, got {hidden_width!r}")
        if impl not in BLOCK_IMPLS:
            raise ValueError(f"impl must be one of {BLOCK_IMPLS}, got {impl!r}")
        hidden = expansion * (in_channels if hidden_width == "input" else out_channels)
        self.use_skip = bool(skip) and in_channels == out_channels
        self.impl = impl
        self.negative_slope = float(negative_slope)
        self.expand = nn.Conv2d(in_channels, hidden, 1)
        self.act = nn.LeakyReLU(negative_slope, inplace=True)
        # The depthwise module holds the weights; under impl="triton" the block never calls it.
        self.dw = DepthwiseConv3x3(hidden, activation="leaky_relu", negative_slope=negative_slope,
                                   impl="auto" if impl == "triton" else impl)
        self.project = nn.Conv2d(hidden, out_channels, 1)

    @torch.no_grad()
    def init_scaled_(self, scale=0.1):
        """Kaiming init with only the projection scaled: the block's output is what stands in for a
        scaled convolution, and scaling all three layers would shrink it by ``scale**3``."""
        scaled_kaiming_init_([self.expand, self.dw], 1.0)
        scaled_kaiming_init_([self.project], scale)

    def uses_fused(self, x):
        """Whether ``forward(x)`` runs the compiled fused op (not the Triton one: the dense block's
        concatenation-free buffer is built on the compiled op, so under impl="triton" it concatenates)."""
        if torch.jit.is_scripting():
            return False
        if self.impl == "auto":
            return auto_picks_ours(x, self, has_fused_kernel, ours_trains_bf16=fused_bf16_training_wins())
        return self.impl == "mesrgan" and has_fused_kernel(x)

    def fused_args(self) -> BlockParams:
        """The fused op's arguments after x: the six parameters, then skip."""
        return BlockParams(self.expand.weight, self.expand.bias, self.dw.weight, self.dw.bias, self.project.weight,
                           self.project.bias, self.use_skip)

    def forward(self, x):
        if self.impl == "triton":
            return bottleneck_block_triton(x, *self.fused_args().tensors(), skip=self.use_skip,
                                           negative_slope=self.negative_slope)
        if self.uses_fused(x):
            return bottleneck_block(x, *self.fused_args().tensors(), skip=self.use_skip,
                                    negative_slope=self.negative_slope)
        y = self.project(self.dw(self.act(self.expand(x))))
        return x + y if self.use_skip else y


class DenseBlock(nn.Module):
    """ESRGAN's residual dense block: five densely connected layers, residual scaled by ``res_scale``.

    ``(N, F, H, W) -> (N, F, H, W)``. Layer k (1..5) sees the block input and all earlier outputs,
    ``F + (k-1)·G`` channels, and produces ``G`` channels (the fifth produces ``F``). Output:
    ``x + res_scale · conv5(...)``.

    When all five layers are bottleneck blocks that run the fused op on x, in eager mode, the block
    concatenates nothing: the features live in one channels_last buffer whose channel slices the
    layers read and write in place (``mesrgan.ops.dense``). Elsewhere (3×3 convolutions, CUDA,
    impl="torch" or "triton", ``torch.compile`` / ``torch.export`` / TorchScript scripting and tracing) it concatenates.

    Args:
        features: F.
        growth: G.
        res_scale: residual scaling (0.2 in ESRGAN).
        layer: ``callable(in_channels, out_channels) -> nn.Module`` building each of the five layers
            (a 3×3 convolution in ESRGAN, a bottleneck block in MESRGAN).
        activation: LeakyReLU(0.2) after layers 1–4 (ESRGAN). The MESRGAN authors' code drops it.
    """

    def __init__(self, features=64, growth=32, res_scale=0.2, layer=conv3x3, activation=True):
        super().__init__()
        self.res_scale = res_scale
        self.activation = activation
        for k in range(1, 6):
            out = features if k == 5 else growth
            conv = layer(features + (k - 1) * growth, out)
            if hasattr(conv, "init_scaled_"):
                conv.init_scaled_(0.1)
            else:
                scaled_kaiming_init_([conv], 0.1)
            self.add_module(f"conv{k}", conv)

    def uses_buffer(self, x):
        """Whether ``forward(x)`` runs the buffered, concatenation-free path."""
        if torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling() or x.dim() != 4:
            return False
        layers = [getattr(self, f"conv{k}") for k in range(1, 6)]
        return all(isinstance(m, BottleneckResidualBlock) and m.uses_fused(x) for m in layers) and \
            len({m.negative_slope for m in layers}) == 1

    def forward(self, x):
        if self.uses_buffer(x):
            layers = [getattr(self, f"conv{k}") for k in range(1, 6)]
            args = [m.fused_args() for m in layers]
            if autocast_dtype(x) is not None:
                # Inside torch.autocast: the buffer's ops see the region's dtype, as the per-layer
                # ops' autocast kernels would (the casts are differentiable: the parameters' gradients
                # come back in their own dtype).
                def cast(t):
                    return t.to(autocast_dtype(t) or t.dtype) if isinstance(t, torch.Tensor) else t

                x = cast(x)
                args = [BlockParams(*(cast(t) for t in a)) for a in args]
            return dense_bottleneck_stack(x, args, res_scale=self.res_scale,
                                          between_slope=0.2 if self.activation else None,
                                          negative_slope=layers[0].negative_slope)
        feats = [x]
        for k in range(1, 5):
            y = getattr(self, f"conv{k}")(torch.cat(feats, 1))
            if self.activation:
                y = F.leaky_relu(y, 0.2)
            feats.append(y)
        return x + self.res_scale * self.conv5(torch.cat(feats, 1))


class PixelShuffleUpsampler(nn.Sequential):
    """SRGAN's upsampler: ``log2(scale)`` × (conv 3×3 F → 4F, pixel shuffle ×2, PReLU).

    ``(N, F, H, W) -> (N, F, scale·H, scale·W)``.
    """

    def __init__(self, features, scale):
        check_scale(scale)
        layers = []
        for _ in range(int(math.log2(scale))):
            layers += [conv3x3(features, 4 * features), nn.PixelShuffle(2), nn.PReLU()]
        super().__init__(*layers)
