"""The depthwise 3x3 operator: functional API, reference path and ``nn.Module``."""
from .depthwise import ACTIVATIONS, DepthwiseConv3x3, depthwise_conv3x3, depthwise_conv3x3_reference

__all__ = ["ACTIVATIONS", "DepthwiseConv3x3", "depthwise_conv3x3", "depthwise_conv3x3_reference"]
