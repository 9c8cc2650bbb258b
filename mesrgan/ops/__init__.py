"""The compiled operators: depthwise 3x3 and the fused bottleneck block; functional API, reference
paths and ``nn.Module``."""
from .bottleneck import bottleneck_block, bottleneck_block_reference, has_fused_kernel
from .depthwise import (ACTIVATIONS, DepthwiseConv3x3, cpu_cache_info, depthwise_conv3x3, depthwise_conv3x3_reference,
                        empty_cpu_cache)

__all__ = ["ACTIVATIONS", "DepthwiseConv3x3", "bottleneck_block", "bottleneck_block_reference", "cpu_cache_info",
           "depthwise_conv3x3", "depthwise_conv3x3_reference", "empty_cpu_cache", "has_fused_kernel"]
