"""The compiled operators: depthwise 3x3 and the fused bottleneck block; functional API, reference
paths and ``nn.Module``; the fused block in Triton (``bottleneck_block_triton``, for CUDA; imports
Triton only when called)."""
from .bottleneck import BlockParams, bottleneck_block, bottleneck_block_reference, has_fused_kernel
from .depthwise import (ACTIVATIONS, DepthwiseConv3x3, cpu_cache_info, depthwise_conv3x3, depthwise_conv3x3_reference,
                        empty_cpu_cache)
from .triton_bottleneck import bottleneck_block_triton

__all__ = ["ACTIVATIONS", "BlockParams", "DepthwiseConv3x3", "bottleneck_block", "bottleneck_block_reference",
           "bottleneck_block_triton", "cpu_cache_info", "depthwise_conv3x3", "depthwise_conv3x3_reference",
           "empty_cpu_cache", "has_fused_kernel"]
