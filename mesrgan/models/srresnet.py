"""SRResNet, SRGAN's generator (Ledig et al., 2017)."""
from torch import nn

from .blocks import PixelShuffleUpsampler, check_positive_int, check_scale, scaled_kaiming_init_


class ResidualBlockBN(nn.Module):
    """SRResNet's block: conv 3×3 → BN → PReLU → conv 3×3 → BN, plus the input.

    ``(N, F, H, W) -> (N, F, H, W)``.
    """

    def __init__(self, features=64):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(features)
        self.prelu = nn.PReLU()
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(features)
        scaled_kaiming_init_([self.conv1, self.conv2], 0.1)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class SRResNet(nn.Module):
    """SRGAN's generator: 9×9 head, residual blocks with batch norm, pixel-shuffle upsamplers, 9×9 tail.

    ``(N, in_channels, H, W) -> (N, out_channels, scale·H, scale·W)``, any H and W. The output is
    linear (no tanh); inputs and targets are images in [0, 1].

    Args:
        in_channels, out_channels: image channels.
        features: width of the trunk (64).
        num_blocks: residual blocks (16).
        scale: 2 or 4.
    """

    def __init__(self, in_channels=3, out_channels=3, features=64, num_blocks=16, scale=4):
        super().__init__()
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                            ("features", features), ("num_blocks", num_blocks)):
            check_positive_int(name, value)
        self.scale = check_scale(scale)
        self.conv_head = nn.Conv2d(in_channels, features, 9, padding=4)
        self.prelu_head = nn.PReLU()
        self.body = nn.Sequential(*(ResidualBlockBN(features) for _ in range(num_blocks)))
        self.conv_body = nn.Conv2d(features, features, 3, padding=1)
        self.bn_body = nn.BatchNorm2d(features)
        self.upsample = PixelShuffleUpsampler(features, scale)
        self.conv_tail = nn.Conv2d(features, out_channels, 9, padding=4)

    def forward(self, x):
        head = self.prelu_head(self.conv_head(x))
        feat = head + self.bn_body(self.conv_body(self.body(head)))
        return self.conv_tail(self.upsample(feat))
