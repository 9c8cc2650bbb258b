"""Discriminators: SRGAN's (Ledig et al.) and ESRGAN's VGG-style one (Wang et al.).

Both end in dense layers over the flattened feature map, so each is built for one square crop size
(``input_size``) and rejects any other with an error that says how to build one that fits.
"""
from torch import nn


def _check_input_size(name, input_size, multiple):
    if (not isinstance(input_size, int) or isinstance(input_size, bool) or input_size < multiple
            or input_size % multiple):
        raise ValueError(f"{name}: input_size must be a positive multiple of {multiple} (the network halves "
                         f"the crop {multiple.bit_length() - 1} times), got {input_size!r}")
    return input_size


def _check_input(name, x, input_size, in_channels):
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[2] != input_size or x.shape[3] != input_size:
        raise ValueError(f"{name} was built for (N, {in_channels}, {input_size}, {input_size}) crops, got "
                         f"{tuple(x.shape)}; build it with input_size=<crop size> (a multiple of "
                         f"{32 if name == 'VGGStyleDiscriminator' else 16}) for other crops")


class SRGANDiscriminator(nn.Module):
    """SRGAN's discriminator: ``(N, in_channels, S, S) -> (N, 1)`` logits (no sigmoid), S = input_size.

    Eight 3×3 convs 64, 64, 128, 128, 256, 256, 512, 512 with strides 1, 2, … (S/16 at the end),
    batch norm after all but the first, LeakyReLU 0.2, then dense 1024 → LeakyReLU → dense 1.

    Args:
        in_channels: image channels.
        features: width of the first conv (64); doubles every second conv.
        input_size: S, the crop size; a multiple of 16 (96 in SRGAN, 128 for the ESRGAN crops).
    """

    def __init__(self, in_channels=3, features=64, input_size=96):
        super().__init__()
        self.input_size = _check_input_size("SRGANDiscriminator", input_size, 16)
        self.in_channels = in_channels
        layers, c_in = [], in_channels
        for i in range(8):
            c_out = features * 2 ** (i // 2)
            layers.append(nn.Conv2d(c_in, c_out, 3, stride=1 + i % 2, padding=1))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = input_size // 16
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, 1024),
                                        nn.LeakyReLU(0.2, inplace=True), nn.Linear(1024, 1))

    def forward(self, x):
        _check_input("SRGANDiscriminator", x, self.input_size, self.in_channels)
        return self.classifier(self.features(x))


class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator: ``(N, in_channels, S, S) -> (N, 1)`` raw logits, S = input_size.

    Five stages of (3×3 conv stride 1, 4×4 conv stride 2), widths 64, 128, 256, 512, 512, batch norm
    after every conv but the first, LeakyReLU 0.2; then dense 100 → LeakyReLU → dense 1. The logits
    are what the relativistic average loss compares (``D(real) - mean D(fake)``).

    Args:
        in_channels: image channels.
        features: width of the first stage (64).
        input_size: S, the crop size; a multiple of 32 (128 in ESRGAN, 96 for SRGAN crops).
    """

    def __init__(self, in_channels=3, features=64, input_size=128):
        super().__init__()
        self.input_size = _check_input_size("VGGStyleDiscriminator", input_size, 32)
        self.in_channels = in_channels
        widths = [features, 2 * features, 4 * features, 8 * features, 8 * features]
        layers, c_in = [], in_channels
        for i, c_out in enumerate(widths):
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            layers += [nn.Conv2d(c_out, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        side = input_size // 32
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, 100),
                                        nn.LeakyReLU(0.2, inplace=True), nn.Linear(100, 1))

    def forward(self, x):
        _check_input("VGGStyleDiscriminator", x, self.input_size, self.in_channels)
        return self.classifier(self.features(x))
