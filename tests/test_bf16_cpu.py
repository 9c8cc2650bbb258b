"""bfloat16 on the CPU: both ops' kernels (float32 inside, bfloat16 in memory) and torch.autocast.

Results are compared with float64 computed from the same bfloat16 values, so the error measured is
the kernels' own (rounding of the outputs and of the intermediate gradients to bfloat16, float32
accumulation): about 2^-9 of the result's scale. Each check also asserts the error is not zero, so
that a float64 path taken by mistake would show.
"""
import os
import subprocess
import sys

import pytest
import torch

from mesrgan.ops import depthwise_conv3x3

# Largest error seen in these tests, relative to the reference's largest magnitude, was about
# 5e-3 (the gradients: two roundings to bfloat16 in a row); 1.5e-2 leaves a margin of 3.
TOL = 1.5e-2


def assert_bf16_close(actual, ref, tol=TOL):
    """Returns the error (a few results are exact: a 1x1 image's bias gradient is grad_out itself)."""
    assert actual.dtype == torch.bfloat16
    scale = ref.abs().max().item()
    err = (actual.double() - ref).abs().max().item()
    assert err <= tol * scale, f"error {err:.3g} for a scale of {scale:.3g}"
    return err


def bf16_leaves(*tensors):
    return [None if t is None else t.to(torch.bfloat16).requires_grad_() for t in tensors]


def double_leaves(*tensors):
    return [None if t is None else t.detach().double().requires_grad_() for t in tensors]


def grads_of(out, leaves, g):
    out.backward(g)
    return [None if t is None else t.grad for t in leaves]


# --- depthwise ------------------------------------------------------------------------------------

SHAPES = [(2, 5, 7, 9), (1, 19, 1, 1), (1, 3, 1, 20), (2, 33, 40, 37), (1, 17, 70, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("activation", ["leaky_relu", "relu6", "relu", "none"])
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_forward_and_gradients(shape, layout, activation, bias):
    gen = torch.Generator().manual_seed(hash((shape, layout, activation, bias)) % 2**31)
    C = shape[1]
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(C, 1, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(C, generator=gen, dtype=torch.float64) if bias else None
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    xb, wb, bb = bf16_leaves(x, w, b)
    xd, wd, bd = double_leaves(xb, wb, bb)
    y = depthwise_conv3x3(xb, wb, bb, activation=activation)
    ref = depthwise_conv3x3(xd, wd, bd, activation=activation)
    assert y.stride() == ref.stride()  # the same layout as the float64 kernels give
    assert assert_bf16_close(y, ref.detach()) > 0
    if activation == "relu6":
        # The backward reads the clamp from the saved output, and an output just below 6 rounds to
        # 6.0 in bfloat16 and reads as clamped (as on CUDA): its gradient is 0, float64's is not.
        return
    got = grads_of(y, [xb, wb, bb], g.to(torch.bfloat16))
    want = grads_of(ref, [xd, wd, bd], g.to(torch.bfloat16).double())
    assert sum(assert_bf16_close(a, r) for a, r in zip(got, want) if r is not None) > 0


def test_depthwise_empty_batch():
    x = torch.randn(0, 4, 5, 5, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    y = depthwise_conv3x3(x, w, None, activation="leaky_relu")
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    y.sum().backward()
    assert w.grad.dtype == torch.bfloat16 and not w.grad.any()


def test_float16_on_cpu_refused_naming_dtype_and_device():
    x = torch.randn(1, 4, 5, 5, dtype=torch.float16)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"Half on cpu"):
        depthwise_conv3x3(x, w)


def test_depthwise_mixed_dtypes_refused():
    with pytest.raises(TypeError, match=r"weight dtype must match x"):
        depthwise_conv3x3(torch.randn(1, 4, 5, 5, dtype=torch.bfloat16), torch.randn(4, 1, 3, 3))


def test_depthwise_opcheck():
    x = torch.randn(2, 6, 5, 7, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(6, dtype=torch.bfloat16, requires_grad=True)
    torch.library.opcheck(torch.ops.mesrgan.depthwise_conv3x3.default, (x, w, b, "leaky_relu", 0.2))
    torch.library.opcheck(torch.ops.mesrgan.depthwise_conv3x3.default,
                          (x.detach().contiguous(memory_format=torch.channels_last), w, None, "relu", 0.2))


ISA_SCRIPT = r"""
import os, sys, torch
import mesrgan.ops as ops
torch.manual_seed(0)
x = torch.randn(2, 13, 9, 21).to(torch.bfloat16)
w = torch.randn(13, 1, 3, 3).to(torch.bfloat16)
out = {"convert": torch.ops.mesrgan._cpu_bf16_convert()}
for layout in ("nchw", "nhwc"):
    xi = x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x
    xi = xi.clone().requires_grad_()
    wi = w.clone().requires_grad_()
    y = ops.depthwise_conv3x3(xi, wi, None, activation="leaky_relu")
    y.backward(torch.randn(y.shape).to(torch.bfloat16))
    out[layout] = [y.detach().contiguous(), xi.grad.contiguous(), wi.grad]
out.update(ISA_EXTRA())
torch.save(out, sys.argv[1])
"""


def run_forced(tmp_path, script, env_extra, name):
    path = tmp_path / f"{name}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env)
    return torch.load(path)


def test_isa_paths_agree(tmp_path):
    script = ISA_SCRIPT.replace("ISA_EXTRA()", "{}")
    results = {isa: run_forced(tmp_path, script, {"MESRGAN_CPU_ISA": isa}, isa) for isa in ("base", "avx2", "avx512")}
    assert results["base"]["convert"] == "base"
    for isa in ("avx2", "avx512"):
        for layout in ("nchw", "nhwc"):
            for a, b in zip(results[isa][layout], results["base"][layout]):
                # Float32 sums in another order, then the same rounding: at most one bfloat16 step apart.
                torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-2)
