"""A densely connected stack of fused bottleneck blocks that never concatenates its features.

In a dense block (ESRGAN's, with MESRGAN's bottleneck blocks as its layers) layer k reads the block's
input and every earlier layer's output side by side. ``torch.cat`` builds that input afresh for each
layer, so a block of five layers copies its growing features four times in the forward and the
backward sums the slices of four concatenations' gradients. Here they live in one channels_last
buffer ``(N, F + sum of the first L-1 layers' outputs, H, W)``: layer k reads the channel slice in
front of it in place (the fused op takes a pixel stride) and writes its output into the next slice;
the backward walks the layers in reverse over one gradient buffer of the same shape, each layer
adding its input's gradient into its slice inside the GEMM's store. The buffer is also all the
forward keeps for the backward (the concatenations' inputs, 5F + 10G channels for ESRGAN's shape,
become F + 4G).

CPU only and eager only: ``torch.compile`` / ``torch.export`` / TorchScript trace the concatenating
path instead (the models choose; see ``mesrgan.models.blocks.DenseBlock``). No double backward.
"""
import torch

from .bottleneck import PARAM_NAMES, BlockParams, _check_slope
from .layout import callers_format

_out = torch.ops.mesrgan._bottleneck_block_out.default
_forward = torch.ops.mesrgan.bottleneck_block.default
_backward_into = torch.ops.mesrgan._bottleneck_block_backward_into.default
_empty_nhwc = torch.ops.mesrgan._cpu_empty_nhwc.default  # recycled memory: a fresh buffer costs page faults
PARAMS_PER_LAYER = len(PARAM_NAMES)  # expand weight and bias, depthwise weight and bias, projection weight and bias
_PROJECT_WEIGHT = PARAM_NAMES.index("project_weight")


def dense_bottleneck_stack(x, layers, *, res_scale, between_slope=None, negative_slope=0.2):
    """``x + res_scale * layer_L([x, y_1, ..., y_{L-1}])`` with ``y_k = act(layer_k([x, y_1, ..., y_{k-1}]))``.

    Args:
        x: ``(N, F, H, W)``, float32 or float64 on CPU.
        layers: a sequence of L >= 1 :class:`~mesrgan.ops.bottleneck.BlockParams` (or plain tuples
            ``(expand_weight, expand_bias, dw_weight, dw_bias, project_weight, project_bias, skip)``),
            each the arguments of :func:`mesrgan.ops.bottleneck_block` after x; the last layer's
            output must have F channels.
        res_scale: the residual's scale.
        between_slope: LeakyReLU slope applied to layers 1..L-1's outputs (ESRGAN's 0.2), or None.
        negative_slope: the bottleneck blocks' own LeakyReLU slope.

    Returns:
        ``(N, F, H, W)`` in x's memory format, equal (to rounding) to the same layers run on
        ``torch.cat`` of the features.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"dense_bottleneck_stack: x must be a 4-D tensor (N, F, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if len(layers) < 1:
        raise ValueError("dense_bottleneck_stack: layers must hold at least one layer")
    _check_slope(negative_slope)
    if between_slope is not None:
        _check_slope(between_slope, "between_slope")
    features = x.shape[1]
    c_in = features
    for k, layer in enumerate(layers):
        if len(layer) != PARAMS_PER_LAYER + 1:
            raise ValueError(f"dense_bottleneck_stack: layers[{k}] must be (expand_weight, expand_bias, dw_weight, "
                             f"dw_bias, project_weight, project_bias, skip), got {len(layer)} items")
    layers = [BlockParams(*layer) for layer in layers]
    for k, layer in enumerate(layers):
        if layer.in_channels != c_in:
            raise ValueError(f"dense_bottleneck_stack: layers[{k}] expects {layer.in_channels} input channels, but "
                             f"it reads the {c_in} channels of x and the earlier layers' outputs")
        c_in += layer.out_channels
    if layers[-1].out_channels != features:
        raise ValueError(f"dense_bottleneck_stack: the last layer must give x's {features} channels, "
                         f"got {layers[-1].out_channels}")
    skips = tuple(bool(layer.skip) for layer in layers)
    params = [t for layer in layers for t in layer.tensors()]
    return _DenseStack.apply(x, float(res_scale), between_slope, float(negative_slope), skips, *params)


def _layer_params(params, k):
    return params[PARAMS_PER_LAYER * k:PARAMS_PER_LAYER * (k + 1)]


class _DenseStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, res_scale, between_slope, negative_slope, skips, *params):
        layers = len(skips)
        n, features, h, w = x.shape
        widths = [_layer_params(params, k)[_PROJECT_WEIGHT].shape[0] for k in range(layers - 1)]
        buf = _empty_nhwc(x, features + sum(widths))
        buf[:, :features].copy_(x)
        c = features
        for k, width in enumerate(widths):
            out = buf[:, c:c + width]
            _out(buf[:, :c], *_layer_params(params, k), skips[k], negative_slope, out)
            if between_slope is not None:
                torch.nn.functional.leaky_relu_(out, between_slope)
            c += width
        y = _forward(buf, *_layer_params(params, layers - 1), skips[-1], negative_slope)
        y = y.mul_(res_scale).add_(x).contiguous(memory_format=callers_format(x))
        ctx.res_scale, ctx.between_slope, ctx.negative_slope, ctx.skips = res_scale, between_slope, negative_slope, skips
        ctx.widths, ctx.x_format = widths, callers_format(x)
        ctx.save_for_backward(buf, *params)
        return y

    @staticmethod
    def backward(ctx, dout):
        if torch.is_grad_enabled():
            raise RuntimeError("bottleneck_block: double backward (create_graph=True) is not supported by the fused "
                               "op; build the model with impl=\"torch\" for higher-order gradients")
        buf, *params = ctx.saved_tensors
        layers = len(ctx.skips)
        features = buf.shape[1] - sum(ctx.widths)
        needs_param = ctx.needs_input_grad[5:]
        # A layer's input needs a gradient when x does or when an earlier layer has a weight that does.
        below = [ctx.needs_input_grad[0]]
        for k in range(layers - 1):
            below.append(below[-1] or any(needs_param[PARAMS_PER_LAYER * k:PARAMS_PER_LAYER * (k + 1)]))
        grads = [None] * len(params)
        gbuf = _empty_nhwc(buf, buf.shape[1]) if any(below) else None
        width_in = buf.shape[1]
        for k in reversed(range(layers)):
            p = _layer_params(params, k)
            if k < layers - 1:
                width_in -= ctx.widths[k]
            mask = [below[k]] + [bool(needs_param[PARAMS_PER_LAYER * k + i]) and p[i] is not None
                                 for i in range(PARAMS_PER_LAYER)]
            if not any(mask):  # nothing below needs a gradient either (below only grows with k)
                continue
            if k == layers - 1:
                g = dout * ctx.res_scale
            else:
                g = gbuf[:, width_in:width_in + ctx.widths[k]]
                if ctx.between_slope is not None:  # LeakyReLU' from its output's sign (the slope is >= 0)
                    g = torch.ops.aten.leaky_relu_backward(g, buf[:, width_in:width_in + ctx.widths[k]],
                                                           ctx.between_slope, True)
            grad_x = gbuf[:, :width_in] if below[k] else buf.new_empty((0,))
            # The last layer writes the whole gradient buffer; the others add to what later layers gave.
            layer_grads = _backward_into(g, buf[:, :width_in], p[0], p[1], p[2], p[3], p[4], ctx.skips[k],
                                         ctx.negative_slope, mask, grad_x, k != layers - 1)
            for i in range(PARAMS_PER_LAYER):
                if mask[1 + i]:
                    grads[PARAMS_PER_LAYER * k + i] = layer_grads[i]
            if k == layers - 1 and below[k]:
                gbuf[:, :features] += dout  # the residual's own path
        dx = None
        if ctx.needs_input_grad[0]:
            dx = gbuf[:, :features].contiguous(memory_format=ctx.x_format)
        return (dx, None, None, None, None, *grads)
