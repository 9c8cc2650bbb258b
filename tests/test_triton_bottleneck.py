"""Tests of the Triton fused bottleneck block (mesrgan.ops.triton_bottleneck) against the unfused
float64 F.conv2d chain (bottleneck_block_reference), forward and all seven gradients.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: tests/conftest.py sets
TRITON_INTERPRET=1 before anything imports triton (triton.jit reads it at decoration time, and the
interpreter again on each run). With a GPU the same tests run on CUDA, compiled, without the interpreter; to
force the interpreter there too, run ``TRITON_INTERPRET=1 pytest tests/test_triton_bottleneck.py``.
The interpreter takes 0.1-1 s a launch: shapes are small, and the tiles under the interpreter
(TILES["interpret"]) are small too, so that these images still span several tiles.
"""
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton", reason="the triton package is not installed")

from mesrgan.models.blocks import BottleneckResidualBlock  # noqa: E402
from mesrgan.ops import bottleneck_block_reference  # noqa: E402
from mesrgan.ops import triton_bottleneck as tb  # noqa: E402

PARAM_NAMES = ("expand_weight", "expand_bias", "dw_weight", "dw_bias", "project_weight", "project_bias")


tb.kernels()
INTERPRETED = tb.interpreted()
DEVICE = "cpu" if INTERPRETED else "cuda"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("no GPU, and triton was imported without TRITON_INTERPRET=1", allow_module_level=True)
# On a GPU machine these tests need the GPU (the cuda marker puts them beside the other CUDA tests).
pytestmark = [pytest.mark.triton] + ([] if INTERPRETED else [pytest.mark.cuda])

# ‖ours − float64 reference‖ / ‖reference‖. float32 on the GPU uses TF32 (cuDNN's flag, on by default).
TOL = {torch.float32: 1e-5 if INTERPRETED else 3e-3, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.fixture
def device():
    return DEVICE


def make(n, c_in, h, w, hidden, c_out, *, dtype=torch.float32, bias=True, seed=0, device="cpu", layout="nchw"):
    """x and the six parameters, random normal, scaled so that activations stay of order one; rounded
    to dtype, so that the float64 reference sees the same values."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)

    x = rnd(n, c_in, h, w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # neither NCHW- nor NHWC-contiguous
        x = rnd(n, c_in, h, 2 * w)[..., ::2]
    params = [rnd(hidden, c_in, 1, 1, scale=c_in ** -0.5), rnd(hidden) if bias else None,
              rnd(hidden, 1, 3, 3, scale=1 / 3), rnd(hidden) if bias else None,
              rnd(c_out, hidden, 1, 1, scale=hidden ** -0.5), rnd(c_out) if bias else None]
    return x, params


def f64(ts):
    return [None if t is None else t.detach().double().cpu() for t in ts]


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def reference_grads(x, params, gy, skip, slope):
    """Float64 autograd of the unfused chain: the seven gradients (None for a missing bias)."""
    leaves = [None if t is None else t.requires_grad_() for t in f64([x] + params)]
    y = bottleneck_block_reference(*leaves, skip=skip, negative_slope=slope)
    y.backward(gy.double().cpu())
    return y.detach(), [None if t is None else t.grad for t in leaves] + \
        [y.new_zeros(0) if params[5] is None else None]


# (n, c_in, h, w, hidden, c_out, skip): odd sizes over several tiles (forward tile 6 x 14 and
# backward tile 4 x 12 under the interpreter), t of 1 to 4, hidden = t * C_in or t * C_out.
CASES = [
    (2, 1, 9, 13, 1, 1, True),         # C_in = hidden = C_out = 1
    (1, 3, 7, 17, 12, 3, True),        # t = 4
    (2, 24, 5, 6, 48, 24, False),      # t = 2 of C_in, one tile
    (1, 40, 10, 5, 40, 32, False),     # t = 1, C_out not C_in
    (1, 5, 1, 30, 15, 8, False),       # one row, three column tiles
    (1, 7, 13, 1, 21, 7, True),        # one column
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_float32_matches_float64(case, device):
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = make(n, c_in, h, w, hidden, c_out, seed=sum(case), device=device)
    y = tb.bottleneck_block_triton(x, *params, skip=skip, negative_slope=0.1)
    ref = bottleneck_block_reference(*f64([x] + params), skip=skip, negative_slope=0.1)
    assert y.shape == (n, c_out, h, w) and y.dtype == torch.float32 and y.device.type == device
    assert ref.abs().max() > 0.1  # not a trivially small output
    assert rel(y, ref) < TOL[torch.float32]


def test_forward_wide_no_bias_layouts(device):
    # C_in = 200 (several input-channel blocks), no biases; channels_last and strided x, output in x's format.
    x, params = make(1, 200, 3, 5, 200, 16, bias=False, seed=3, device=device, layout="channels_last")
    y = tb.bottleneck_block_triton(x, *params)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rel(y, bottleneck_block_reference(*f64([x] + params))) < TOL[torch.float32]
    xs, params = make(2, 6, 5, 9, 12, 6, bias=False, seed=4, device=device, layout="strided")
    y = tb.bottleneck_block_triton(xs, *params, skip=True)
    assert y.is_contiguous()
    assert rel(y, bottleneck_block_reference(*f64([xs] + params), skip=True)) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_forward_half_precision(dtype, device):
    x, params = make(2, 12, 9, 13, 24, 12, dtype=dtype, seed=5, device=device)
    y = tb.bottleneck_block_triton(x, *params, skip=True)
    assert y.dtype == dtype
    err = rel(y, bottleneck_block_reference(*f64([x] + params), skip=True))
    assert err < TOL[dtype]
    if INTERPRETED and dtype == torch.bfloat16:  # the upcast flag is what makes the interpreter right
        assert tb.forward_meta("interpret", dtype, 12, 12)["UPCAST"]


def test_empty_batch(device):
    x, params = make(0, 4, 5, 6, 8, 4, seed=6, device=device)
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    y = tb.bottleneck_block_triton(*leaves, skip=True)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert leaves[0].grad.shape == x.shape
    assert all(p.grad is not None and (p.grad == 0).all() for p in leaves[1:])


GRAD_CASES = [
    (2, 3, 9, 13, 6, 3, True, True),
    (1, 5, 6, 17, 20, 4, False, False),   # no biases, hidden over one chunk
    (1, 24, 5, 5, 48, 24, True, True),    # two hidden chunks
    (2, 1, 4, 3, 2, 2, False, True),
]


@pytest.mark.parametrize("case", GRAD_CASES, ids=str)
def test_gradients_float32_match_float64(case, device):
    n, c_in, h, w, hidden, c_out, skip, bias = case
    x, params = make(n, c_in, h, w, hidden, c_out, bias=bias, seed=sum(case), device=device,
                     layout="channels_last" if skip else "nchw")
    leaves = [x.requires_grad_()] + [None if p is None else p.requires_grad_() for p in params]
    y = tb.bottleneck_block_triton(*leaves, skip=skip, negative_slope=0.2)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y.backward(gy.to(device, torch.float32))
    _, ref = reference_grads(x, params, gy, skip, 0.2)
    for name, t, r in zip(("x",) + PARAM_NAMES, leaves, ref):
        if t is None:
            continue
        assert rel(t.grad, r) < TOL[torch.float32] * 2, f"grad of {name}"
    assert leaves[0].grad.is_contiguous(memory_format=torch.channels_last if skip else torch.contiguous_format)


def test_gradients_bfloat16(device):
    x, params = make(1, 8, 7, 9, 16, 8, dtype=torch.bfloat16, seed=8, device=device)
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    y = tb.bottleneck_block_triton(*leaves, skip=True)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(torch.bfloat16)
    y.backward(gy.to(device))
    _, ref = reference_grads(x, params, gy, True, 0.2)
    for name, t, r in zip(("x",) + PARAM_NAMES, leaves, ref):
        assert t.grad.dtype == torch.bfloat16
        assert rel(t.grad, r) < 2 * TOL[torch.bfloat16], f"grad of {name}"


@pytest.mark.parametrize("mask", [[True, False, False, False, False, False, False],
                                  [False, True, True, False, False, False, True],
                                  [False, False, False, True, True, True, False]], ids=str)
def test_output_mask_subsets(mask, device):
    skip = True
    x, params = make(1, 4, 6, 7, 8, 4, seed=10, device=device)
    gy = torch.randn(1, 4, 6, 7, generator=torch.Generator().manual_seed(11))
    grads = torch.ops.mesrgan.bottleneck_block_triton_backward(gy.to(device), x, *params[:5], skip, 0.2, mask)
    _, ref = reference_grads(x, params, gy, skip, 0.2)
    for name, m, g, r in zip(("x",) + PARAM_NAMES, mask, grads, ref):
        if m:
            assert g.shape == r.shape and rel(g, r) < 2 * TOL[torch.float32], f"grad of {name}"
        else:
            assert g.numel() == 0, f"grad of {name} was not asked for"


def test_opcheck(device):
    x, params = make(1, 2, 3, 4, 4, 2, seed=12, device=device)
    args = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    torch.library.opcheck(torch.ops.mesrgan.bottleneck_block_triton.default, (*args, True, 0.2))
    gy = torch.randn(1, 2, 3, 4, device=device)
    torch.library.opcheck(torch.ops.mesrgan.bottleneck_block_triton_backward.default,
                          (gy, x.detach(), *[p.detach() for p in params[:5]], True, 0.2, [True] * 7))


def test_gpu_tiles_under_the_interpreter(monkeypatch):
    """The CUDA tile shapes (larger grids, other channel blocks) on an image spanning several of them."""
    if not INTERPRETED:
        pytest.skip("runs the CUDA tiles in the interpreter")
    monkeypatch.setitem(tb.TILES, "interpret", {**tb.TILES["cuda"], "num_warps": 4})
    x, params = make(1, 40, 9, 17, 48, 20, seed=13)
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    y = tb.bottleneck_block_triton(*leaves)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    y.backward(gy.float())
    yr, ref = reference_grads(x, params, gy, False, 0.2)
    assert rel(y, yr) < TOL[torch.float32]
    for name, t, r in zip(("x",) + PARAM_NAMES, leaves, ref):
        assert rel(t.grad, r) < 2 * TOL[torch.float32], f"grad of {name}"


def test_block_impl_triton_equals_torch(device):
    torch.manual_seed(0)
    ours = BottleneckResidualBlock(6, 6, expansion=3, hidden_width="output", impl="triton").to(device)
    ref = BottleneckResidualBlock(6, 6, expansion=3, hidden_width="output", impl="torch").to(device)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 7, 9, device=device)
    xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, yr = ours(xo), ref(xr)
    assert rel(y, yr) < 2 * TOL[torch.float32]
    gy = torch.randn_like(y)
    y.backward(gy)
    yr.backward(gy)
    assert rel(xo.grad, xr.grad) < 2 * TOL[torch.float32]
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) < 2 * TOL[torch.float32], name


def test_auto_never_picks_triton(monkeypatch, device):
    import mesrgan.models.blocks as blocks

    def refuse(*args, **kwargs):
        raise AssertionError("impl='auto' ran the Triton op")

    monkeypatch.setattr(blocks, "bottleneck_block_triton", refuse)
    block = BottleneckResidualBlock(4, 4, impl="auto").to(device)
    assert block(torch.randn(1, 4, 5, 5, device=device)).shape == (1, 4, 5, 5)


def test_cpu_tensor_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(tb, "interpreted", lambda: False)
    x, params = make(1, 2, 3, 3, 4, 2)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU, or Triton's interpreter"):
        tb.bottleneck_block_triton(x, *params)


def test_argument_errors():
    x, params = make(1, 2, 3, 3, 4, 2)
    with pytest.raises(RuntimeError, match="skip needs C_in == C_out"):
        tb.bottleneck_block_triton(x, *params[:4], torch.randn(3, 4, 1, 1), None, skip=True)
    with pytest.raises(RuntimeError, match="dtype must be one of"):
        tb.bottleneck_block_triton(x.double(), *[p.double() for p in params])
    with pytest.raises(RuntimeError, match="dw_weight must have shape"):
        tb.bottleneck_block_triton(x, *params[:2], torch.randn(4, 1, 5, 5), *params[3:])
    with pytest.raises(TypeError, match="skip must be a bool"):
        tb.bottleneck_block_triton(x, *params, skip=1)


def test_without_triton_the_package_works_and_triton_impl_says_why():
    code = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch
from mesrgan.models import build_generator
from mesrgan.models.blocks import BottleneckResidualBlock
from mesrgan.ops import triton_bottleneck as tb
assert not tb.triton_available()
x = torch.randn(1, 4, 5, 5)
assert BottleneckResidualBlock(4, 4, impl="torch")(x).shape == (1, 4, 5, 5)
build_generator("mesrgan-paper", num_blocks=1, impl="triton")  # building needs no Triton
try:
    BottleneckResidualBlock(4, 4, impl="triton")(x)
except RuntimeError as e:
    assert "needs the triton package" in str(e), e
    print("clear error")
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "clear error" in out.stdout


def test_autocast_bfloat16_casts_like_the_compiled_op(device):
    # Inside torch.autocast, float32 arguments run in the region's dtype; gradients come back in float32.
    x, params = make(1, 6, 5, 7, 12, 6, seed=15, device=device)
    leaves = [x.requires_grad_()] + [p.requires_grad_() for p in params]
    with torch.autocast(device, torch.bfloat16):
        y = tb.bottleneck_block_triton(*leaves, skip=True)
    assert y.dtype == torch.bfloat16
    ref = bottleneck_block_reference(*f64([t.to(torch.bfloat16) for t in [x] + params]), skip=True)
    assert rel(y, ref) < TOL[torch.bfloat16]
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == torch.float32 for t in leaves)
