"""The depthwise 3x3 operator: functional API, reference path and ``nn.Module``."""
from .depthwise import (ACTIVATIONS, DepthwiseConv3x3, cpu_cache_info, depthwise_conv3x3, depthwise_conv3x3_reference,
                        empty_cpu_cache)

__all__ = ["ACTIVATIONS", "DepthwiseConv3x3", "cpu_cache_info", "depthwise_conv3x3", "depthwise_conv3x3_reference",
           "empty_cpu_cache"]
