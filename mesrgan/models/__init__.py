"""The networks: SRGAN / ESRGAN / MESRGAN generators, discriminators, VGG19 features, checkpoints.

Build by name with :func:`build_generator` / :func:`build_discriminator`; constructor keyword
arguments are the config keys. ``python -m mesrgan.models --report`` prints parameters and MACs.
"""
from .blocks import BottleneckResidualBlock, DenseBlock, PixelShuffleUpsampler, scaled_kaiming_init_
from .checkpoint import CheckpointNotFoundError, generator_checkpoint, infer_generator, load_generator
from .checkpoint import CheckpointError, read_checkpoint
from .compute import compute_report, count_macs, format_compute_table, layer_macs
from .discriminators import SRGANDiscriminator, VGGStyleDiscriminator
from .pretrained import DEFAULT_PRETRAINED, PRETRAINED, load_pretrained
from .presets import DISCRIMINATORS, GENERATORS, build_discriminator, build_generator, generator_config
from .rrdbnet import MESRGAN, RRDB, PaperESRGAN, PaperMESRGAN, RRDBNet
from .srresnet import ResidualBlockBN, SRResNet
from .vgg import VGG19_LAYERS, VGG19_URL, VGGFeatureExtractor

__all__ = [
    "BottleneckResidualBlock", "CheckpointNotFoundError", "DISCRIMINATORS", "DenseBlock", "GENERATORS", "MESRGAN",
    "PaperESRGAN", "PaperMESRGAN", "PixelShuffleUpsampler", "RRDB", "RRDBNet", "ResidualBlockBN", "SRGANDiscriminator",
    "SRResNet", "VGG19_LAYERS", "VGG19_URL", "VGGFeatureExtractor", "VGGStyleDiscriminator", "build_discriminator",
    "build_generator", "compute_report", "count_macs", "format_compute_table", "generator_checkpoint",
    "generator_config", "infer_generator", "layer_macs", "load_generator", "scaled_kaiming_init_",
]
__all__ += ["CheckpointError", "read_checkpoint", "DEFAULT_PRETRAINED", "PRETRAINED", "load_pretrained"]
