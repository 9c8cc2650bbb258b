"""Each compiled mesrgan op written in plain PyTorch ops, for the tools that cannot run our kernels.

``DECOMPOSITIONS`` maps every op overload of ``torch.ops.mesrgan`` that a model's forward can
call to a function of the same signature built from standard ATen ops only. Exporters use it
(:func:`mesrgan.inference.onnx_export.export_onnx` runs ``ExportedProgram.run_decompositions`` with it): a
depthwise convolution becomes a grouped ``Conv`` plus its activation in ONNX, which every runtime
(onnxruntime, OpenVINO, TensorRT, ncnn) already has.

A new forward op gets one entry here, written with the op's own reference path (the one its tests
compare against), so that what is exported is what is tested. The backward-only ops need none:
nothing exported for inference calls them.
"""
import torch

from .bottleneck import bottleneck_block_reference
from .depthwise import depthwise_conv3x3_reference


def _depthwise_conv3x3(x, weight, bias=None, activation="none", negative_slope=0.2):
    return depthwise_conv3x3_reference(x, weight, bias, activation=activation, negative_slope=negative_slope)


def _bottleneck_block(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip=False,
                      negative_slope=0.2):
    return bottleneck_block_reference(x, expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias,
                                      skip=skip, negative_slope=negative_slope)


#: op overload -> the same computation in standard ATen ops
DECOMPOSITIONS = {
    torch.ops.mesrgan.depthwise_conv3x3.default: _depthwise_conv3x3,
    torch.ops.mesrgan.bottleneck_block.default: _bottleneck_block,
}
