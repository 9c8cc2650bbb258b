"""The depthwise ops refuse arguments on another device than x, the meta device included.

Every combination of devices for x, weight and bias (CPU, meta, and CUDA where there is a GPU):
the ones that agree run (and match the reference on real devices), every other one raises an
error that names the argument and both devices.
"""
import itertools

import pytest
import torch

from mesrgan.ops import depthwise_conv3x3_reference

op = torch.ops.mesrgan.depthwise_conv3x3
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])
C = 4


def _dev(name):
    return torch.device(name, 0) if name == "cuda" else torch.device(name)


def _inputs(xd, wd, bd, requires_grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, C, 7, 9, generator=g).to(xd).requires_grad_(requires_grad)
    w = torch.randn(C, 1, 3, 3, generator=g).to(wd).requires_grad_(requires_grad)
    b = None if bd is None else torch.randn(C, generator=g).to(bd).requires_grad_(requires_grad)
    return x, w, b


@pytest.mark.parametrize("xd,wd,bd", list(itertools.product(DEVICES, DEVICES, DEVICES + [None])))
@pytest.mark.parametrize("requires_grad", [False, True])
def test_forward_device_combinations(xd, wd, bd, requires_grad):
    x, w, b = _inputs(xd, wd, bd, requires_grad)
    agree = wd == xd and bd in (None, xd)
    if not agree:
        bad, got = ("weight", wd) if wd != xd else ("bias", bd)
        with pytest.raises(RuntimeError, match=rf"{bad} must be on x's device \({_dev(xd)}\), got {_dev(got)}"):
            op(x, w, b, "leaky_relu", 0.2)
        return
    y = op(x, w, b, "leaky_relu", 0.2)
    assert y.device.type == xd and y.shape == x.shape
    if xd != "meta":
        ref = depthwise_conv3x3_reference(x.detach().double(), w.detach().double(),
                                          None if b is None else b.detach().double(), activation="leaky_relu")
        torch.testing.assert_close(y.detach().double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("xd,gd", [(a, b) for a in DEVICES for b in DEVICES if a != b])
def test_backward_ops_refuse_mixed_devices(xd, gd):
    x = torch.randn(1, C, 5, 6).to(xd)
    g = torch.randn(1, C, 5, 6).to(gd)
    with pytest.raises(RuntimeError, match=rf"grad_out must be on x's device \({_dev(xd)}\), got {_dev(gd)}"):
        torch.ops.mesrgan.depthwise_conv3x3_backward_weight(x, g, True)
    with pytest.raises(RuntimeError, match=rf"grad_out must be on out's device \({_dev(xd)}\), got {_dev(gd)}"):
        torch.ops.mesrgan.depthwise_conv3x3_activation_backward(g, x, "relu", 0.0)
