"""bfloat16 on the CPU: both ops' kernels (float32 inside, bfloat16 in memory) and torch.autocast.

Results are compared with float64 computed from the same bfloat16 values, so the error measured is
the kernels' own (rounding of the outputs and of the intermediate gradients to bfloat16, float32
accumulation): about 2^-9 of the result's scale. Each check also asserts the error is not zero, so
that a float64 path taken by mistake would show.
"""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mesrgan.models import build_generator
from mesrgan.models.blocks import BottleneckResidualBlock, DenseBlock
from mesrgan.ops import DepthwiseConv3x3, bottleneck_block, depthwise_conv3x3
from mesrgan.ops.bottleneck import bottleneck_block_reference, fused_bf16_training_wins
from mesrgan.ops.depthwise import _has_kernel, kernel_dtype

# Largest error seen in these tests, relative to the reference's largest magnitude, was 1.1e-2 (a
# gradient: two roundings to bfloat16 in a row, then a sum that cancels); most are 2e-3 to 5e-3.
# 3e-2 leaves a margin of about 3 over the worst.
TOL = 3e-2


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
import sys, torch
import mesrgan.ops as ops
torch.manual_seed(0)
x = torch.randn(2, 13, 9, 21).to(torch.bfloat16)
w = torch.randn(13, 1, 3, 3).to(torch.bfloat16)
out = {"convert": torch.ops.mesrgan._cpu_bf16_convert(), "gemm": torch.ops.mesrgan._cpu_gemm(),
       "bf16_gemm": torch.ops.mesrgan._cpu_bf16_gemm()}
for layout in ("nchw", "nhwc"):
    xi = x.contiguous(memory_format=torch.channels_last) if layout == "nhwc" else x
    xi = xi.clone().requires_grad_()
    wi = w.clone().requires_grad_()
    y = ops.depthwise_conv3x3(xi, wi, None, activation="leaky_relu")
    y.backward(torch.randn(y.shape).to(torch.bfloat16))
    out[layout] = [y.detach().contiguous(), xi.grad.contiguous(), wi.grad]
xb = (torch.randn(2, 13, 9, 21) * 0.5).to(torch.bfloat16).requires_grad_()
params = [(torch.randn(s) * 0.3).to(torch.bfloat16).requires_grad_()
          for s in ((26, 13, 1, 1), (26,), (26, 1, 3, 3), (26,), (13, 26, 1, 1), (13,))]
y = ops.bottleneck_block(xb, *params, skip=True)
y.backward(torch.randn(y.shape).to(torch.bfloat16))
out["block"] = [y.detach().contiguous(), xb.grad.contiguous()] + [p.grad for p in params]
buf = torch.randn(2, 20, 9, 21).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
gbuf = torch.randn(2, 20, 9, 21).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
gy = torch.randn(2, 7, 9, 21).to(torch.bfloat16)
w = [params[0], params[1], params[2], params[3], (torch.randn(7, 26, 1, 1) * 0.3).to(torch.bfloat16)]
grads = torch.ops.mesrgan._bottleneck_block_backward_into(gy, buf[:, :13], *w, False, 0.2, [True] * 7,
                                                          gbuf[:, :13], True)
out["block_into"] = [gbuf.contiguous()] + list(grads)
torch.save(out, sys.argv[1])
"""


def run_forced(tmp_path, env_extra, name):
    path = tmp_path / f"{name}.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    subprocess.run([sys.executable, "-c", ISA_SCRIPT, str(path)], check=True, env=env)
    return torch.load(path)


def test_isa_and_gemm_paths_agree(tmp_path):
    runs = {isa: {"MESRGAN_CPU_ISA": isa} for isa in ("base", "avx2", "avx512")}
    runs.update({f"gemm-{g}": {"MESRGAN_CPU_GEMM": g} for g in ("avx2", "avx512", "blas")})
    results = {name: run_forced(tmp_path, env, name) for name, env in runs.items()}
    assert results["base"]["convert"] == "base"
    # The bfloat16 GEMM only where the conversions use AVX512_BF16 (never forced onto a CPU without it).
    for name in runs:
        assert (results[name]["bf16_gemm"] == "avx512_bf16") == (results[name]["convert"] == "avx512_bf16")
    assert results["base"]["bf16_gemm"] == results["avx2"]["bf16_gemm"] == "float32"
    for g in ("avx2", "avx512", "blas"):  # the CPU has all three here; otherwise the nearest one runs
        assert results[f"gemm-{g}"]["gemm"] in (g, "avx2", "blas")
    for name in runs:
        for key in ("nchw", "nhwc", "block", "block_into"):
            for a, b in zip(results[name][key], results["base"][key]):
                # Float32 sums in another order, then the same rounding: a bfloat16 step or so apart.
                torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2 * b.abs().max().item())


# --- the fused block ------------------------------------------------------------------------------

def block_inputs(n, c_in, h, w, hidden, c_out, layout, seed=0):
    """x and the six parameters in float64, scaled so that activations stay of order one."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    x = rnd(n, c_in, h, w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, [rnd(hidden, c_in, 1, 1, scale=c_in ** -0.5), rnd(hidden) * 0.1, rnd(hidden, 1, 3, 3, scale=1 / 3),
               rnd(hidden) * 0.1, rnd(c_out, hidden, 1, 1, scale=hidden ** -0.5), rnd(c_out) * 0.1]


BLOCK_CASES = [(2, 5, 7, 9, 10, 5, True), (1, 3, 1, 1, 7, 9, False), (1, 17, 13, 1, 34, 17, True),
               (2, 16, 12, 20, 48, 16, True), (1, 31, 9, 11, 62, 33, False)]


@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_block_forward_and_gradients(case, layout):
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = block_inputs(n, c_in, h, w, hidden, c_out, layout)
    xb, *pb = bf16_leaves(x, *params)
    xd, *pd = double_leaves(xb, *pb)
    y = bottleneck_block(xb, *pb, skip=skip)
    ref = bottleneck_block(xd, *pd, skip=skip)
    assert y.stride() == ref.stride()
    assert assert_bf16_close(y, ref.detach()) > 0
    g = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(torch.bfloat16)
    got = grads_of(y, [xb, *pb], g)
    want = grads_of(ref, [xd, *pd], g.double())
    errs = [assert_bf16_close(a, r) for a, r in zip(got, want)]
    assert sum(errs) > 0  # a 1x1 image's project-bias gradient is grad_out itself, exactly


# The forward converts band by band: x's rows are read as bfloat16 and the output rounded as it is
# stored. With the float32 GEMMs (CPUs without AVX512_BF16, or MESRGAN_CPU_ISA=avx2) the arithmetic in
# between is the float32 block's, so the result must be, bit for bit, the float32 block's on x's
# float32 values, rounded once: an independent check of the band bookkeeping (halo rows, chunk edges,
# pixel strides) at shapes whose bands do not divide H. With the bfloat16 GEMM (vdpbf16ps) the
# expand's and the depthwise's outputs are rounded to bfloat16 as they are stored, as PyTorch's
# bfloat16 convolutions round theirs: then within bfloat16 rounding of float64. Odd channel counts
# take the GEMM's odd-K step; widths 4 and 27 the bfloat16 depthwise's strips of 4 pixels with both
# ends in one strip, and with inner strips and pixels left over; hidden widths that are not a
# multiple of 32 its last, partial group of channels.
FORWARD_CASES = [(1, 3, 1, 1, 7, 9, False), (2, 5, 7, 9, 10, 5, True), (1, 17, 13, 1, 34, 17, True),
                 (3, 16, 37, 5, 48, 16, True), (2, 24, 70, 9, 48, 40, False), (1, 8, 300, 1, 16, 8, True),
                 (1, 8, 70, 16, 16, 8, True), (1, 16, 5, 4, 32, 16, False), (2, 12, 6, 27, 40, 12, True)]
BF16_GEMM = torch.ops.mesrgan._cpu_bf16_gemm() == "avx512_bf16"


def rounded_float32_block(xb, pb, skip):
    return bottleneck_block(xb.float(), *[p.float() for p in pb], skip=skip).to(torch.bfloat16)


def assert_block_forward(y, xb, pb, skip):
    if BF16_GEMM:
        assert assert_bf16_close(y, bottleneck_block(xb.double(), *[p.double() for p in pb], skip=skip)) > 0
    else:
        assert torch.equal(y, rounded_float32_block(xb, pb, skip))


@pytest.mark.parametrize("case", FORWARD_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("threads", [1, 2])
def test_block_forward_band_by_band(case, layout, threads):
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = block_inputs(n, c_in, h, w, hidden, c_out, layout, seed=3)
    xb, pb = x.to(torch.bfloat16), [p.to(torch.bfloat16) for p in params]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the chunks per image follow the thread count
    try:
        y = bottleneck_block(xb, *pb, skip=skip)
        assert_block_forward(y, xb, pb, skip)
    finally:
        torch.set_num_threads(before)
    assert y.dtype == torch.bfloat16 and y.stride() == rounded_float32_block(xb, pb, skip).stride()


@pytest.mark.parametrize("case", [(2, 12, 6, 27, 40, 12, True), (1, 7, 5, 8, 9, 5, False)])
def test_block_forward_without_biases(case):
    # No bias anywhere: the epilogues and the depthwise start from zero instead of a bias vector.
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = block_inputs(n, c_in, h, w, hidden, c_out, "channels_last", seed=5)
    xb = x.to(torch.bfloat16)
    pb = [None if i in (1, 3, 5) else p.to(torch.bfloat16) for i, p in enumerate(params)]
    y = bottleneck_block(xb, *pb, skip=skip)
    if BF16_GEMM:
        ref = bottleneck_block(xb.double(), *[None if p is None else p.double() for p in pb], skip=skip)
        assert assert_bf16_close(y, ref) > 0
    else:
        assert torch.equal(y, bottleneck_block(xb.float(), *[None if p is None else p.float() for p in pb],
                                               skip=skip).to(torch.bfloat16))


def test_block_forward_out_into_a_channel_slice_in_bfloat16():
    # A dense block's layer writes its output into a slice of the block's buffer, reading its input
    # from the slice in front: both pixel strides are the buffer's, not the slices' channel counts.
    x, params = block_inputs(2, 6, 11, 7, 12, 5, "channels_last", seed=4)
    xb, pb = x.to(torch.bfloat16), [p.to(torch.bfloat16) for p in params]
    buf = torch.full((2, 14, 11, 7), 7.0, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    buf[:, :6] = xb
    torch.ops.mesrgan._bottleneck_block_out(buf[:, :6], *pb, False, 0.2, buf[:, 6:11])
    assert_block_forward(buf[:, 6:11], xb, pb, False)
    assert torch.equal(buf[:, 6:11], bottleneck_block(xb, *pb, skip=False))
    assert torch.equal(buf[:, :6], xb) and (buf[:, 11:] == 7).all()


def test_block_forward_empty_shapes():
    for n, h, w in [(0, 5, 5), (2, 0, 4), (2, 4, 0)]:
        x, params = block_inputs(n, 4, h, w, 8, 4, "channels_last")
        y = bottleneck_block(x.to(torch.bfloat16), *[p.to(torch.bfloat16) for p in params], skip=True)
        assert y.shape == (n, 4, h, w) and y.dtype == torch.bfloat16


EXACT_SCRIPT = r"""
import torch, tests.test_bf16_cpu as t
assert torch.ops.mesrgan._cpu_bf16_gemm() == "float32"
for case in t.FORWARD_CASES:
    for layout in ("nchw", "channels_last"):
        n, c_in, h, w, hidden, c_out, skip = case
        x, params = t.block_inputs(n, c_in, h, w, hidden, c_out, layout, seed=3)
        xb, pb = x.to(torch.bfloat16), [p.to(torch.bfloat16) for p in params]
        assert torch.equal(t.bottleneck_block(xb, *pb, skip=skip), t.rounded_float32_block(xb, pb, skip)), case
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_block_forward_float32_gemms_bit_exact(isa):
    # The float32-GEMM form of the bfloat16 forward, forced where the CPU would use the bfloat16 GEMM.
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MESRGAN_CPU_ISA": isa}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", EXACT_SCRIPT], check=True, env=env, cwd=root)


# --- the block's backward, band by band --------------------------------------------------------

BACKWARD = torch.ops.mesrgan.bottleneck_block_backward
BACKWARD_INTO = torch.ops.mesrgan._bottleneck_block_backward_into

# (n, c_in, h, w, hidden, c_out, skip, biases): W and H not multiples of the tiles, images of fewer
# rows than a band (1 x 1, 13 x 1), several bands and two chunks an image (70 x 16: bands of 8 rows),
# a band as tall as the image (300 x 1), odd channel counts (the bfloat16 GEMM's odd-K step), no biases.
BACKWARD_CASES = [(1, 3, 1, 1, 7, 9, False, True), (2, 5, 7, 9, 10, 5, True, True),
                  (1, 17, 13, 1, 34, 17, True, False), (3, 16, 37, 5, 48, 16, True, True),
                  (2, 24, 70, 9, 48, 40, False, False), (1, 8, 70, 16, 16, 8, True, True),
                  (1, 9, 300, 1, 18, 9, True, True)]


def backward_inputs(case, layout, seed=5):
    """x, the six parameters (biases None without them) and grad_out, in bfloat16."""
    n, c_in, h, w, hidden, c_out, skip, biases = case
    x, params = block_inputs(n, c_in, h, w, hidden, c_out, layout, seed=seed)
    if not biases:
        params[1] = params[3] = params[5] = None
    gy = torch.randn(n, c_out, h, w, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    if layout == "channels_last":
        gy = gy.contiguous(memory_format=torch.channels_last)
    return x.to(torch.bfloat16), [None if p is None else p.to(torch.bfloat16) for p in params], gy.to(torch.bfloat16)


def full_mask(pb):
    return [True, True, pb[1] is not None, True, pb[3] is not None, True, True]


def run_backward(xb, pb, gy, skip, mask):
    return BACKWARD(gy, xb, *pb[:5], skip, 0.2, mask)


def reference_grads(xb, pb, gy, skip):
    """float64 gradients of PyTorch's path at the same bfloat16 values (None for absent biases)."""
    leaves = double_leaves(xb, *pb)
    bottleneck_block_reference(*leaves, skip=skip).backward(gy.double())
    grads = [None if t is None else t.grad for t in leaves]
    grads[6] = gy.double().sum((0, 2, 3))  # the project bias's, asked for with or without the bias
    return grads


def with_threads(threads, fn):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("case", BACKWARD_CASES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_block_backward_band_by_band(case, layout):
    xb, pb, gy = backward_inputs(case, layout)
    skip = case[6]
    mask = full_mask(pb)
    got = {t: with_threads(t, lambda: run_backward(xb, pb, gy, skip, mask)) for t in (1, 2)}
    for a, b in zip(got[1], got[2]):  # fixed chunks and groups: the same bits whatever the thread count
        assert torch.equal(a, b)
    errs = []
    for g, want, asked in zip(got[2], reference_grads(xb, pb, gy, skip), mask):
        if not asked:
            assert g.numel() == 0
            continue
        assert g.shape == want.shape
        errs.append(assert_bf16_close(g, want))
    assert sum(errs) > 0
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert got[2][0].is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("mask", [[True] + [False] * 6, [False, True, True] + [False] * 4,
                                  [False] * 3 + [True, True, False, False], [False] * 5 + [True, True],
                                  [False] * 7, [True, False, True, False, True, False, True]])
def test_block_backward_output_mask_subsets(mask):
    # Each gradient is computed the same way whatever else is asked for: the same bits.
    xb, pb, gy = backward_inputs((2, 16, 37, 5, 48, 16, True, True), "channels_last")
    full = run_backward(xb, pb, gy, True, [True] * 7)
    part = run_backward(xb, pb, gy, True, mask)
    for asked, a, b in zip(mask, part, full):
        assert torch.equal(a, b) if asked else a.numel() == 0


def test_block_backward_empty_shapes():
    for n, h, w in [(0, 5, 5), (2, 0, 4), (2, 4, 0)]:
        xb, pb, gy = backward_inputs((n, 4, h, w, 8, 4, True, True), "channels_last")
        got = run_backward(xb, pb, gy, True, [True] * 7)
        assert got[0].shape == xb.shape
        for g, p in zip(got[1:], pb):
            assert g.dtype == torch.bfloat16 and g.shape == p.shape and not g.any()


@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_block_backward_into_a_channel_slice_in_bfloat16(accumulate, skip):
    # A dense block's layer reads x from a slice of the block's buffer and adds its gradient into the
    # same slice of the gradient buffer: pixels are the buffers' widths apart, the other channels stay.
    xb, pb, gy = backward_inputs((2, 6, 11, 7, 12, 6, skip, True), "channels_last", seed=7)
    buf = torch.full((2, 14, 11, 7), 3.0, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    buf[:, :6] = xb
    g = torch.Generator().manual_seed(8)
    gbuf = torch.randn(2, 14, 11, 7, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    before = gbuf.clone()
    grads = BACKWARD_INTO(gy, buf[:, :6], *pb[:5], skip, 0.2, [True] * 7, gbuf[:, :6], accumulate)
    want = reference_grads(xb, pb, gy, skip)
    expected = want[0] + before[:, :6].double() if accumulate else want[0]
    assert assert_bf16_close(gbuf[:, :6], expected) > 0
    assert torch.equal(gbuf[:, 6:], before[:, 6:])
    for got, w in zip(grads, want[1:]):
        assert_bf16_close(got, w)
    # The same gradients as the op that returns x's.
    full = run_backward(xb, pb, gy, skip, [True] * 7)
    assert all(torch.equal(a, b) for a, b in zip(grads, full[1:]))
    if not accumulate:
        assert torch.equal(gbuf[:, :6], full[0])


# With the float32 GEMMs (CPUs without AVX512_BF16, or MESRGAN_CPU_ISA=avx2 / base) the bfloat16
# backward's arithmetic is the float32 backward's on the widened values, in the same order: each
# gradient must be, bit for bit, the float32 backward's rounded once. An independent check of the band
# bookkeeping (halo rows, chunk edges, pixel strides, the accumulation into a buffer's slice).
BACKWARD_EXACT_SCRIPT = r"""
import torch, tests.test_bf16_cpu as t
assert torch.ops.mesrgan._cpu_bf16_gemm() == "float32"
f32 = lambda ts: [None if p is None else p.float() for p in ts]
for case in t.BACKWARD_CASES:
    for layout in ("nchw", "channels_last"):
        xb, pb, gy = t.backward_inputs(case, layout)
        mask = t.full_mask(pb)
        got = t.run_backward(xb, pb, gy, case[6], mask)
        want = t.run_backward(xb.float(), f32(pb), gy.float(), case[6], mask)
        assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(got, want)), (case, layout)
xb, pb, gy = t.backward_inputs((2, 6, 11, 7, 12, 6, True, True), "channels_last", seed=7)
buf = torch.randn(2, 14, 11, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
buf[:, :6] = xb
gbuf = torch.randn(2, 14, 11, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
gbuf_f = gbuf.float()
got = t.BACKWARD_INTO(gy, buf[:, :6], *pb[:5], True, 0.2, [True] * 7, gbuf[:, :6], True)
want = t.BACKWARD_INTO(gy.float(), buf.float()[:, :6], *f32(pb[:5]), True, 0.2, [True] * 7, gbuf_f[:, :6], True)
assert torch.equal(gbuf, gbuf_f.to(torch.bfloat16))
assert all(torch.equal(a, b.to(torch.bfloat16)) for a, b in zip(got, want))
"""


@pytest.mark.parametrize("isa", ["avx2", "base"])
def test_block_backward_float32_gemms_bit_exact(isa):
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MESRGAN_CPU_ISA": isa}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", BACKWARD_EXACT_SCRIPT], check=True, env=env, cwd=root)


def test_block_empty_batch_and_opcheck():
    x, params = block_inputs(0, 4, 5, 5, 8, 4, "nchw")
    xb, *pb = bf16_leaves(x, *params)
    y = bottleneck_block(xb, *pb, skip=True)
    assert y.shape == (0, 4, 5, 5) and y.dtype == torch.bfloat16
    y.sum().backward()
    assert pb[0].grad.dtype == torch.bfloat16 and not pb[0].grad.any()
    x, params = block_inputs(2, 6, 5, 7, 12, 6, "channels_last")
    xb, *pb = bf16_leaves(x, *params)
    torch.library.opcheck(torch.ops.mesrgan.bottleneck_block.default, (xb, *pb, True, 0.2))


def test_block_float16_and_mixed_dtypes_refused():
    x, params = block_inputs(1, 4, 5, 5, 8, 4, "nchw")
    with pytest.raises(TypeError, match=r"x must be float32, float64 or bfloat16 on CPU, got Half on cpu"):
        bottleneck_block(x.half(), *[p.half() for p in params])
    with pytest.raises(TypeError, match=r"expand_weight dtype must match x"):
        bottleneck_block(x.to(torch.bfloat16), *[p.float() for p in params])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_dense_buffer_path(layout):
    torch.manual_seed(0)
    # impl="mesrgan": our bfloat16 backward (auto leaves differentiated bfloat16 calls to PyTorch)
    block = DenseBlock(8, 4, layer=lambda c_in, c_out: BottleneckResidualBlock(c_in, c_out, impl="mesrgan"))
    x = torch.randn(2, 8, 9, 7)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    fast = copy.deepcopy(block).to(torch.bfloat16)
    ref = copy.deepcopy(fast).double()
    xb = x.to(torch.bfloat16).requires_grad_()
    xd = xb.detach().double().requires_grad_()
    assert fast.uses_buffer(xb)
    y, r = fast(xb), ref(xd)
    assert assert_bf16_close(y, r.detach()) > 0
    g = torch.randn(y.shape).to(torch.bfloat16)
    y.backward(g)
    r.backward(g.double())
    assert assert_bf16_close(xb.grad, xd.grad) > 0
    for a, b in zip(fast.parameters(), ref.parameters()):
        assert_bf16_close(a.grad, b.grad)


# --- torch.autocast -------------------------------------------------------------------------------

class MesrganCalls(TorchDispatchMode):
    """Records each mesrgan op that reaches the kernels, with the dtypes of its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "mesrgan":
            dtypes = {a.dtype for a in torch.utils._pytree.tree_leaves(args) if isinstance(a, torch.Tensor)}
            self.calls.append((func.__name__.split(".")[0], dtypes))
        return func(*args, **(kwargs or {}))


def tiny_model(impl="auto"):
    torch.manual_seed(0)
    return build_generator("mesrgan-paper", num_blocks=2, impl=impl)


def test_autocast_reaches_the_kernels_in_bfloat16():
    model = tiny_model().eval()
    x = torch.rand(2, 3, 12, 10)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", torch.bfloat16), MesrganCalls() as mode:
            y = model(x)
    names = {name for name, _ in mode.calls}
    assert "bottleneck_block" in names and "_bottleneck_block_out" in names
    assert all(dtypes == {torch.bfloat16} for _, dtypes in mode.calls)
    # Through the whole network each layer's rounding adds up: measured 4.4e-3 of the output's scale; 1.5e-2 allowed.
    assert y.dtype == torch.bfloat16
    assert 0 < (y.float() - ref).abs().max() <= 1.5e-2 * ref.abs().max()


def test_autocast_training_step_reaches_float32_parameters():
    model = tiny_model(impl="mesrgan")
    x = torch.rand(1, 3, 9, 11)
    with torch.autocast("cpu", torch.bfloat16), MesrganCalls() as mode:
        y = model(x)
        y.float().square().mean().backward()
    assert ("bottleneck_block_backward", {torch.bfloat16}) in mode.calls or \
        ("_bottleneck_block_backward_into", {torch.bfloat16}) in mode.calls
    for p in model.parameters():
        assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32


def test_auto_in_a_differentiated_bfloat16_step():
    """impl="auto" in bfloat16: our forward where nothing will be differentiated; in a training step
    ours where the block's bfloat16 GEMMs are vdpbf16ps on a CPU without AMX (measured level or faster
    there), PyTorch's path elsewhere; the same gradients either way."""
    auto, ours = tiny_model(), tiny_model(impl="mesrgan")
    x = torch.rand(1, 3, 9, 11)
    with torch.autocast("cpu", torch.bfloat16), MesrganCalls() as mode:
        with torch.no_grad():
            auto(x)
        assert any(name.startswith("bottleneck_block") or name.startswith("_bottleneck_block")
                   for name, _ in mode.calls)
        mode.calls.clear()
        auto(x).float().square().mean().backward()
        backward_calls = [name for name, _ in mode.calls if "backward" in name]
        assert bool(backward_calls) == fused_bf16_training_wins()
        if not fused_bf16_training_wins():
            assert mode.calls == []
        ours(x).float().square().mean().backward()
    for (name, a), b in zip(auto.named_parameters(), ours.parameters()):
        assert 0 < a.grad.abs().max()
        torch.testing.assert_close(a.grad, b.grad, rtol=0.1, atol=0.05 * b.grad.abs().max().item(), msg=name)


AUTO_WITHOUT_BF16_GEMM_SCRIPT = r"""
import torch
from mesrgan.models.blocks import BottleneckResidualBlock
from mesrgan.ops.bottleneck import fused_bf16_training_wins
assert torch.ops.mesrgan._cpu_bf16_gemm() == "float32" and not fused_bf16_training_wins()
block = BottleneckResidualBlock(4, 4)
x = torch.randn(1, 4, 5, 5, dtype=torch.bfloat16)
assert not block.to(torch.bfloat16).uses_fused(x)
with torch.no_grad():
    assert block.uses_fused(x)
"""


def test_auto_trains_bfloat16_on_pytorchs_path_without_the_bfloat16_gemm():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MESRGAN_CPU_ISA": "avx2"}
    subprocess.run([sys.executable, "-c", AUTO_WITHOUT_BF16_GEMM_SCRIPT], check=True, env=env)


def test_autocast_depthwise_module_and_gradients():
    m = DepthwiseConv3x3(6, activation="leaky_relu", impl="mesrgan")
    x = torch.randn(2, 6, 7, 5, requires_grad=True)
    with torch.autocast("cpu", torch.bfloat16), MesrganCalls() as mode:
        y = m(x)
    assert mode.calls == [("depthwise_conv3x3", {torch.bfloat16})]
    assert y.dtype == torch.bfloat16
    ref = depthwise_conv3x3(x.double(), m.weight.double(), m.bias.double(), activation="leaky_relu")
    assert_bf16_close(y, ref.detach())
    y.float().sum().backward()
    assert x.grad.dtype == m.weight.grad.dtype == m.bias.grad.dtype == torch.float32


def test_autocast_float16_on_cpu_falls_back_to_pytorch():
    block = BottleneckResidualBlock(4, 4)
    x = torch.randn(1, 4, 5, 5)
    with torch.autocast("cpu", torch.float16):
        assert not _has_kernel(x) and not block.uses_fused(x)
    assert _has_kernel(x) and block.uses_fused(x)
    with torch.autocast("cpu", torch.bfloat16):
        with torch.no_grad():
            assert _has_kernel(x) and block.uses_fused(x)
        # a call to differentiate: ours only where fused_bf16_training_wins (auto_picks_ours)
        assert block.uses_fused(x) == fused_bf16_training_wins()
        assert not _has_kernel(x.double()) or kernel_dtype(x.double()) == torch.float64


def test_compile_under_autocast():
    model = tiny_model().eval()
    x = torch.rand(1, 3, 8, 8)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        want = model(x)
        got = compiled(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2 * want.abs().max().item())
