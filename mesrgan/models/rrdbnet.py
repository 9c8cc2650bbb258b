"""ESRGAN's RRDBNet, MESRGAN, and the two generators the MESRGAN authors actually ran.

Canonical skeleton (Wang et al., 2018), state_dict keys as the public ESRGAN / Real-ESRGAN
checkpoints: ``conv_first``, ``body.{i}.rdb{j}.conv{k}``, ``conv_body``, ``conv_up1``, ``conv_up2``,
``conv_hr``, ``conv_last``. MESRGAN keeps the names and turns every ``conv{k}`` into a bottleneck
block (``conv{k}.expand``, ``conv{k}.dw``, ``conv{k}.project``).

The "-paper" generators (as the MESRGAN authors' published code builds them) put an SRResNet skeleton — 9×9 head + PReLU, pixel-shuffle
upsamplers with PReLU, 9×9 tail — around one residual group of 16 dense blocks with 0.2 scaling.
"""
import math
from functools import partial

from torch import nn
from torch.nn import functional as F

from .blocks import (HIDDEN_WIDTHS, BottleneckResidualBlock, DenseBlock, PixelShuffleUpsampler,
                     check_positive_int, check_scale, conv3x3, inner_memory_format)
from ..ops.layout import callers_format


def _check_common(in_channels, out_channels, features, num_blocks, growth):
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("features", features), ("num_blocks", num_blocks), ("growth", growth)):
        check_positive_int(name, value)


def _brb_layer(expansion, hidden_width, skip, impl):
    check_positive_int("expansion", expansion)
    if hidden_width not in HIDDEN_WIDTHS:
        raise ValueError(f"hidden_width must be one of {HIDDEN_WIDTHS}, got {hidden_width!r}")
    return partial(BottleneckResidualBlock, expansion=expansion, hidden_width=hidden_width, skip=skip,
                   impl=impl)


class RRDB(nn.Module):
    """Residual in residual dense block: ``x + res_scale · rdbN(…rdb1(x))``, ``(N, F, H, W)`` in and out.

    Args:
        features, growth, res_scale: as :class:`DenseBlock`.
        dense_blocks: N, dense blocks per RRDB (ESRGAN: 3; the MESRGAN paper: 1).
        layer, activation: passed to each :class:`DenseBlock`.
    """

    def __init__(self, features=64, growth=32, dense_blocks=3, res_scale=0.2, layer=conv3x3, activation=True):
        super().__init__()
        check_positive_int("dense_blocks", dense_blocks)
        self.res_scale = res_scale
        for j in range(1, dense_blocks + 1):
            self.add_module(f"rdb{j}", DenseBlock(features, growth, res_scale, layer, activation))

    def forward(self, x):
        out = x
        for block in self.children():
            out = block(out)
        return x + self.res_scale * out


class RRDBNet(nn.Module):
    """ESRGAN's generator. ``(N, in_channels, H, W) -> (N, out_channels, scale·H, scale·W)``, any H, W.

    conv_first → ``num_blocks`` RRDBs → conv_body, plus the long skip → (nearest ×2 → conv →
    LeakyReLU) once per factor 2 → conv_hr → LeakyReLU → conv_last.

    Real-ESRGAN's ×2 and ×1 models (``unshuffle_input=True``) keep the ×4 body and first
    pixel-unshuffle the input by ``4 / scale`` (conv_first then takes 12 or 48 channels). Their
    input is reflect-padded at the bottom and right to a multiple of that factor, as Real-ESRGAN's
    inference pads it, and the output cropped back to ``scale·H x scale·W``.

    Args:
        in_channels, out_channels: image channels.
        features: trunk width F (64).
        num_blocks: RRDBs (23).
        growth: dense-block growth G (32).
        dense_blocks: dense blocks per RRDB (3 in ESRGAN; preset "esrgan" uses the paper's 1).
        scale: 2 (conv_up1 only) or 4 (conv_up1 and conv_up2); with ``unshuffle_input``, 1 or 2.
        res_scale: residual scaling of dense blocks and RRDBs (0.2).
        unshuffle_input: Real-ESRGAN's ×2 / ×1 layout (above).
    """

    def __init__(self, in_channels=3, out_channels=3, features=64, num_blocks=23, growth=32, dense_blocks=3,
                 scale=4, res_scale=0.2, unshuffle_input=False):
        super().__init__()
        _check_common(in_channels, out_channels, features, num_blocks, growth)
        self._build(in_channels, out_channels, features, num_blocks, growth, dense_blocks, scale, res_scale,
                    conv3x3, True, unshuffle_input)

    def _build(self, in_channels, out_channels, features, num_blocks, growth, dense_blocks, scale, res_scale,
               layer, activation, unshuffle_input=False):
        if unshuffle_input:
            if isinstance(scale, bool) or scale not in (1, 2):
                raise ValueError(f"scale must be 1 or 2 with unshuffle_input (Real-ESRGAN's x1 / x2 layout), "
                                 f"got {scale!r}")
            self.scale, self.unshuffle = scale, 4 // scale
        else:
            self.scale, self.unshuffle = check_scale(scale), 1
        # the tiler (mesrgan.inference) starts tiles on multiples of this, so that every tile is
        # unshuffled in the same phase as the whole image
        self.input_multiple = self.unshuffle
        self.up_stages = 2 if unshuffle_input else int(math.log2(self.scale))
        self.conv_first = nn.Conv2d(in_channels * self.unshuffle ** 2, features, 3, padding=1)
        self.body = nn.Sequential(*(RRDB(features, growth, dense_blocks, res_scale, layer, activation)
                                    for _ in range(num_blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.conv_up1 = nn.Conv2d(features, features, 3, padding=1)
        if self.up_stages == 2:
            self.conv_up2 = nn.Conv2d(features, features, 3, padding=1)
        self.conv_hr = nn.Conv2d(features, features, 3, padding=1)
        self.conv_last = nn.Conv2d(features, out_channels, 3, padding=1)

    def forward(self, x):
        # Computed in the fastest layout for the device (blocks.inner_memory_format); the result
        # comes back in x's memory format.
        out_format = callers_format(x)
        h, w = x.shape[-2:]
        if self.unshuffle > 1:
            # pads of 0 where the size is already a multiple: no branch on the size, so that the
            # graph stays valid for every size when exported
            f = self.unshuffle
            x = F.pixel_unshuffle(F.pad(x, (0, (f - w % f) % f, 0, (f - h % f) % f), mode="reflect"), f)
        feat = self.conv_first(x.contiguous(memory_format=inner_memory_format(x)))
        feat = feat + self.conv_body(self.body(feat))
        for k in range(1, self.up_stages + 1):
            up = F.interpolate(feat, scale_factor=2, mode="nearest")
            feat = F.leaky_relu(getattr(self, f"conv_up{k}")(up), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        if self.unshuffle > 1:
            out = out[..., :h * self.scale, :w * self.scale]
        return out.contiguous(memory_format=out_format)


class MESRGAN(RRDBNet):
    """RRDBNet with every dense-block convolution replaced by a :class:`BottleneckResidualBlock`.

    Same shapes and skeleton as :class:`RRDBNet`.

    Args (beyond :class:`RRDBNet`'s):
        expansion: t (2).
        hidden_width: ``"input"`` (t × the layer's input channels, as the paper describes) or
            ``"output"`` (t × its output channels).
        skip: the bottleneck's identity skip, used only where input and output channels match.
        dense_activation: LeakyReLU between dense-block layers, as in ESRGAN.
        impl: the bottleneck blocks' implementation: ``"auto"``, ``"mesrgan"``, ``"torch"`` or ``"triton"``
            (see :class:`BottleneckResidualBlock`; ``"triton"`` has not yet run on a GPU).
    """

    def __init__(self, in_channels=3, out_channels=3, features=64, num_blocks=23, growth=32, dense_blocks=3,
                 scale=4, res_scale=0.2, expansion=2, hidden_width="input", skip=True, dense_activation=True,
                 impl="auto"):
        nn.Module.__init__(self)
        _check_common(in_channels, out_channels, features, num_blocks, growth)
        self._build(in_channels, out_channels, features, num_blocks, growth, dense_blocks, scale, res_scale,
                    _brb_layer(expansion, hidden_width, skip, impl), bool(dense_activation))


class PaperESRGAN(nn.Module):
    """The "ESRGAN" the MESRGAN authors ran: SRResNet skeleton around one group of dense blocks.

    ``(N, in_channels, H, W) -> (N, out_channels, scale·H, scale·W)``, any H, W.
    conv_head 9×9 → PReLU → ``num_blocks`` dense blocks (each with its own ``res_scale`` residual) →
    conv_body 3×3, plus the long skip → pixel-shuffle ×2 + PReLU per factor 2 → conv_tail 9×9.

    Args:
        in_channels, out_channels: image channels.
        features: trunk width (64).
        num_blocks: dense blocks in the group (16).
        growth: dense-block growth (32).
        scale: 2 or 4.
        res_scale: dense-block residual scaling (0.2).
    """

    def __init__(self, in_channels=3, out_channels=3, features=64, num_blocks=16, growth=32, scale=4,
                 res_scale=0.2):
        super().__init__()
        _check_common(in_channels, out_channels, features, num_blocks, growth)
        self._build(in_channels, out_channels, features, num_blocks, growth, scale, res_scale, conv3x3, True)

    def _build(self, in_channels, out_channels, features, num_blocks, growth, scale, res_scale, layer,
               activation):
        self.scale = check_scale(scale)
        self.conv_head = nn.Conv2d(in_channels, features, 9, padding=4)
        self.prelu_head = nn.PReLU()
        self.body = nn.Sequential(*(DenseBlock(features, growth, res_scale, layer, activation)
                                    for _ in range(num_blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.upsample = PixelShuffleUpsampler(features, scale)
        self.conv_tail = nn.Conv2d(features, out_channels, 9, padding=4)

    def forward(self, x):
        # As RRDBNet.forward: the fastest layout inside, x's memory format out.
        out_format = callers_format(x)
        head = self.prelu_head(self.conv_head(x.contiguous(memory_format=inner_memory_format(x))))
        feat = head + self.conv_body(self.body(head))
        return self.conv_tail(self.upsample(feat)).contiguous(memory_format=out_format)


class PaperMESRGAN(PaperESRGAN):
    """The "MESRGAN" the authors ran: :class:`PaperESRGAN` with bottleneck blocks in the dense blocks.

    As their code has it: hidden width t × input channels, no bottleneck skip, and no LeakyReLU
    between dense-block layers (the bottleneck's own activations remain). Same shapes as
    :class:`PaperESRGAN`.

    Args (beyond :class:`PaperESRGAN`'s): ``expansion``, ``hidden_width``, ``skip``,
    ``dense_activation``, ``impl`` as in :class:`MESRGAN`, with the authors' defaults.
    """

    def __init__(self, in_channels=3, out_channels=3, features=64, num_blocks=16, growth=32, scale=4,
                 res_scale=0.2, expansion=2, hidden_width="input", skip=False, dense_activation=False,
                 impl="auto"):
        nn.Module.__init__(self)
        _check_common(in_channels, out_channels, features, num_blocks, growth)
        self._build(in_channels, out_channels, features, num_blocks, growth, scale, res_scale,
                    _brb_layer(expansion, hidden_width, skip, impl), bool(dense_activation))
