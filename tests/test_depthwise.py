"""Tests of torch.ops.mesrgan.depthwise_conv3x3 against F.conv2d(groups=C) + activation."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mesrgan
from mesrgan.ops import ACTIVATIONS, DepthwiseConv3x3, depthwise_conv3x3, depthwise_conv3x3_reference

CUDA = pytest.mark.cuda
OP = torch.ops.mesrgan.depthwise_conv3x3
OP_BWD_W = torch.ops.mesrgan.depthwise_conv3x3_backward_weight
OP_ACT_BWD = torch.ops.mesrgan.depthwise_conv3x3_activation_backward

SHAPES = [
    (2, 3, 5, 7),
    (1, 1, 1, 1),
    (0, 4, 6, 6),
    (2, 1, 9, 13),
    (1, 5, 1, 11),
    (3, 6, 10, 1),
    (2, 8, 3, 3),
    (2, 13, 17, 19),  # C not a multiple of the vector width
    (1, 3, 4, 10),  # W at the edges of the CPU kernels' in-place / padded paths (vector width + 2)
    (1, 2, 3, 11),
    (1, 9, 5, 6),
    (1, 40, 16, 33),
    (1, 384, 6, 5),  # large C
]


def make(shape, dtype=torch.float64, device="cpu", layout="nchw", bias=True, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)
    w = torch.randn(shape[1], 1, 3, 3, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    b = torch.randn(shape[1], generator=g, dtype=torch.float64).to(device=device, dtype=dtype) if bias else None
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # neither NCHW- nor NHWC-contiguous
        big = torch.randn(shape[0], shape[1], shape[2], 2 * shape[3] + 1, generator=g, dtype=torch.float64)
        big = big.to(device=device, dtype=dtype)
        x = big[..., 1::2]
        assert not x.is_contiguous() or x.numel() <= 1
    return x, w, b


def reference(x, w, b, activation="none", slope=0.2):
    """float64 reference, computed on the CPU."""
    b64 = None if b is None else b.detach().double().cpu()
    return depthwise_conv3x3_reference(x.detach().double().cpu(), w.detach().double().cpu(), b64,
                                       activation=activation, negative_slope=slope)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_matches_conv2d_float64(shape, layout, activation):
    x, w, b = make(shape, layout=layout, scale=3.0)
    y = depthwise_conv3x3(x, w, b, activation=activation, negative_slope=0.1)
    ref = reference(x, w, b, activation, 0.1)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(2, 13, 17, 19), (4, 64, 32, 32), (1, 7, 2, 40)])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_float32(shape, layout, bias):
    x, w, b = make(shape, dtype=torch.float32, layout=layout, bias=bias)
    y = depthwise_conv3x3(x, w, b, activation="leaky_relu")
    torch.testing.assert_close(y.double(), reference(x, w, b, "leaky_relu"), rtol=1e-5, atol=1e-5)


def test_output_keeps_memory_format():
    x, w, b = make((2, 8, 5, 6), layout="channels_last")
    assert depthwise_conv3x3(x, w, b).is_contiguous(memory_format=torch.channels_last)
    x, w, b = make((2, 8, 5, 6))
    assert depthwise_conv3x3(x, w, b).is_contiguous()
    # channels_last tensor sliced along C: not contiguous either way, still given back as channels_last
    x, w, b = make((2, 16, 5, 6), layout="channels_last")
    xs = x[:, 4:12]
    ys = depthwise_conv3x3(xs, w[4:12], b[4:12])
    assert ys.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ys, reference(xs, w[4:12], b[4:12]), rtol=1e-12, atol=1e-12)


def test_storage_offset_and_expanded_weight():
    x, w, b = make((3, 6, 8, 9))
    xs = x[1:]  # non-zero storage offset
    wt = w[:1].expand(6, 1, 3, 3)  # stride-0 weight
    torch.testing.assert_close(depthwise_conv3x3(xs, wt, b), reference(xs, wt, b), rtol=1e-12, atol=1e-12)


def test_nan_spreads_exactly_to_neighbours():
    x, w, b = make((1, 2, 7, 8))
    x[0, 1, 3, 4] = float("nan")
    for layout in ("nchw", "channels_last"):
        xi = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        for activation in ACTIVATIONS:
            y = depthwise_conv3x3(xi, w, b, activation=activation)
            expected = torch.zeros_like(y, dtype=torch.bool)
            expected[0, 1, 2:5, 3:6] = True
            assert torch.equal(torch.isnan(y), expected), (layout, activation)


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradcheck(layout, activation):
    x, w, b = make((2, 3, 5, 6), layout=layout, scale=2.0)
    inputs = [t.detach().requires_grad_() for t in (x, w, b)]

    def f(x, w, b):
        return depthwise_conv3x3(x, w, b, activation=activation, negative_slope=0.3)

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


@pytest.mark.parametrize("need", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)])
def test_backward_computes_only_what_is_needed(need):
    x, w, b = make((2, 4, 6, 5))
    x, w, b = (t.detach().requires_grad_(n) for t, n in zip((x, w, b), need))
    gy = torch.randn(x.shape, dtype=x.dtype)
    depthwise_conv3x3(x, w, b, activation="relu").backward(gy)
    xr, wr, br = (t.detach().requires_grad_(n) for t, n in zip((x, w, b), need))
    depthwise_conv3x3_reference(xr, wr, br, activation="relu").backward(gy)
    for t, r, n in zip((x, w, b), (xr, wr, br), need):
        if n:
            torch.testing.assert_close(t.grad, r.grad, rtol=1e-10, atol=1e-10)
        else:
            assert t.grad is None


@pytest.mark.parametrize("need, convs, reductions", [((True, False, False), 1, 0), ((False, True, False), 0, 1),
                                                     ((False, False, True), 0, 0), ((True, True, True), 1, 1)])
def test_backward_runs_only_the_kernels_it_needs(need, convs, reductions):
    """grad_input costs one conv, grad_weight (with grad_bias) one reduction, grad_bias alone a sum:
    counted in the profiler over the backward alone."""
    x, w, b = make((2, 4, 6, 5))
    x, w, b = (t.detach().requires_grad_(n) for t, n in zip((x, w, b), need))
    y = depthwise_conv3x3(x, w, b, activation="relu")
    with torch.profiler.profile() as prof:
        y.backward(torch.randn(x.shape, dtype=x.dtype))
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("mesrgan::depthwise_conv3x3", 0) == convs
    assert calls.get("mesrgan::depthwise_conv3x3_backward_weight", 0) == reductions
    assert calls.get("mesrgan::depthwise_conv3x3_activation_backward", 0) == 1


@pytest.mark.parametrize("kwargs", [{}, {"activation": "none"}, {"negative_slope": 0.2}, {"activation": "relu"}])
def test_backward_with_default_arguments(kwargs):
    # bias=None and the defaults left out: the recorded call then has fewer arguments.
    x, w, _ = make((2, 4, 6, 5))
    x.requires_grad_(); w.requires_grad_()
    depthwise_conv3x3(x, w, **kwargs).square().sum().backward()
    xr, wr = (t.detach().requires_grad_() for t in (x, w))
    depthwise_conv3x3_reference(xr, wr, **kwargs).square().sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-10, atol=1e-10)
    xo = x.detach().requires_grad_()  # input gradient only
    depthwise_conv3x3(xo, w.detach(), **kwargs).sum().backward()
    assert xo.grad is not None


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backward_float32_large(layout):
    x, w, b = make((3, 24, 37, 45), dtype=torch.float32, layout=layout)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    gy = torch.randn(x.shape).contiguous(memory_format=fmt)
    x.requires_grad_(); w.requires_grad_(); b.requires_grad_()
    depthwise_conv3x3(x, w, b, activation="leaky_relu").backward(gy)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    depthwise_conv3x3_reference(xr, wr, br, activation="leaky_relu").backward(gy.double())
    torch.testing.assert_close(x.grad.double(), xr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad.double(), wr.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.grad.double(), br.grad, rtol=1e-4, atol=1e-3)


def test_backward_weight_mixed_layouts():
    x, _, _ = make((2, 9, 7, 6))
    g = torch.randn(x.shape, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    gw, gb = OP_BWD_W(x, g, True)
    gw2, gb2 = OP_BWD_W(x.contiguous(memory_format=torch.channels_last), g.contiguous(), True)
    torch.testing.assert_close(gw, gw2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gb, gb2, rtol=1e-12, atol=1e-12)
    assert OP_BWD_W(x, g, False)[1].numel() == 0


def test_empty_batch_gradients():
    x, w, b = make((0, 4, 5, 5))
    x.requires_grad_(); w.requires_grad_(); b.requires_grad_()
    y = depthwise_conv3x3(x, w, b)
    assert y.shape == (0, 4, 5, 5)
    y.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck(layout):
    x, w, b = make((2, 5, 6, 7), layout=layout)
    torch.library.opcheck(OP, (x, w, b, "leaky_relu", 0.2))
    torch.library.opcheck(OP, (x.requires_grad_(), w.requires_grad_(), None, "relu6", 0.0))
    torch.library.opcheck(OP_BWD_W, (x.detach(), torch.randn_like(x), True))
    y = depthwise_conv3x3(x.detach(), w.detach(), None, activation="leaky_relu")
    torch.library.opcheck(OP_ACT_BWD, (torch.randn_like(x).requires_grad_(), y, "leaky_relu", 0.2))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_matches_autograd(activation):
    z = torch.randn(2, 3, 5, 6, dtype=torch.float64) * 8  # reaches both relu6 bounds
    z[0, 0, 0, :3] = torch.tensor([0.0, 6.0, -0.0], dtype=torch.float64)  # the kinks themselves
    zr = z.clone().requires_grad_()
    from mesrgan.ops.depthwise import _activate
    y = _activate(zr, activation, 0.3)
    g = torch.randn_like(z)
    g[1, 2, 3, :4] = float("nan")  # NaN gradients: kept where the slope is non-zero, 0 where it is 0
    (expected,) = torch.autograd.grad(y, zr, g)
    torch.testing.assert_close(OP_ACT_BWD(g, y.detach(), activation, 0.3), expected, rtol=0, atol=0, equal_nan=True)


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    m = nn.Sequential(nn.Conv2d(4, 8, 1), DepthwiseConv3x3(8, activation="leaky_relu", impl="mesrgan"),
                      nn.Conv2d(8, 4, 1)).double()
    x = torch.randn(2, 4, 9, 10, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y_eager = m(x)
    torch.testing.assert_close(y, y_eager)
    (g_c,) = torch.autograd.grad(y.square().sum(), x)
    (g_e,) = torch.autograd.grad(y_eager.square().sum(), x)
    torch.testing.assert_close(g_c, g_e)


def test_torch_compile_inductor():
    torch._dynamo.reset()
    x, w, b = make((2, 6, 8, 8), dtype=torch.float32)

    def f(x, w, b):
        return torch.sigmoid(depthwise_conv3x3(x * 2, w, b, activation="relu"))

    y = torch.compile(f, fullgraph=True)(x, w, b)
    torch.testing.assert_close(y, f(x, w, b))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_weight_grad_deterministic(layout):
    x, _, _ = make((4, 16, 33, 29), dtype=torch.float32, layout=layout)
    g = torch.randn(x.shape).contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                        else torch.contiguous_format)
    prev = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    try:
        first = OP_BWD_W(x, g, True)
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            again = OP_BWD_W(x, g, True)
            assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(prev)


def test_baseline_isa_kernels_agree():
    """The AVX2 and baseline builds of the CPU kernels give the same results (run in a subprocess,
    since the choice is made once per process)."""
    code = (
        "import torch, mesrgan\n"
        "g = torch.Generator().manual_seed(1)\n"
        "for cl in (False, True):\n"
        "    x = torch.randn(2, 19, 11, 13, generator=g, dtype=torch.float64)\n"
        "    if cl: x = x.contiguous(memory_format=torch.channels_last)\n"
        "    w = torch.randn(19, 1, 3, 3, generator=g, dtype=torch.float64)\n"
        "    y = mesrgan.ops.depthwise_conv3x3(x, w, activation='relu6')\n"
        "    r = mesrgan.ops.depthwise_conv3x3_reference(x, w, activation='relu6')\n"
        "    assert (y - r).abs().max() < 1e-12\n"
        "    gw, gb = torch.ops.mesrgan.depthwise_conv3x3_backward_weight(x, r, True)\n"
        "    xr = x.clone().requires_grad_(); wr = w.clone().requires_grad_()\n"
        "    torch.nn.functional.conv2d(xr, wr, padding=1, groups=19).backward(r)\n"
        "    assert (gw - wr.grad).abs().max() < 1e-9\n"
        "print('ok')\n")
    env = dict(os.environ, MESRGAN_CPU_ISA="base")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


# ---------------------------------------------------------------- bad input

def test_errors_name_the_argument():
    x, w, b = make((2, 4, 5, 5))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        depthwise_conv3x3(x[0], w, b)
    with pytest.raises(ValueError, match=r"weight must have shape \(C, 1, 3, 3\) = \(4, 1, 3, 3\)"):
        depthwise_conv3x3(x, w[:, :, :2], b)
    with pytest.raises(ValueError, match=r"weight must have shape"):
        depthwise_conv3x3(x, torch.randn(3, 1, 3, 3, dtype=x.dtype), b)
    with pytest.raises(ValueError, match=r"bias must have shape \(C,\) = \(4,\)"):
        depthwise_conv3x3(x, w, b[:3])
    with pytest.raises(TypeError, match=r"x must be float32, float64 or bfloat16 on CPU, got Long"):
        depthwise_conv3x3(x.long(), w.long())
    with pytest.raises(TypeError, match=r"weight dtype must match x"):
        depthwise_conv3x3(x, w.float(), b)
    with pytest.raises(TypeError, match=r"bias dtype must match x"):
        depthwise_conv3x3(x, w, b.float())
    with pytest.raises(ValueError, match=r"activation must be one of .* got 'gelu'"):
        depthwise_conv3x3(x, w, b, activation="gelu")
    with pytest.raises(TypeError, match=r"activation must be a str"):
        depthwise_conv3x3(x, w, b, activation=None)
    with pytest.raises(ValueError, match=r"negative_slope must be >= 0"):
        depthwise_conv3x3(x, w, b, activation="leaky_relu", negative_slope=-0.1)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        depthwise_conv3x3(x.numpy(), w, b)
    with pytest.raises(ValueError, match=r"activation must be one of"):  # the op itself checks too
        OP(x, w, b, "swish", 0.2)
    with pytest.raises(ValueError, match=r"grad_out must have x's shape"):
        OP_BWD_W(x, x[:1], True)
    with pytest.raises(ValueError, match=r"grad_out must have out's shape"):
        OP_ACT_BWD(x[:1], x, "relu", 0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device type")
def test_error_mixed_devices():
    x, w, b = make((2, 4, 5, 5), dtype=torch.float32)
    with pytest.raises(RuntimeError, match=r"weight must be on x's device"):
        depthwise_conv3x3(x.cuda(), w, b.cuda())


# ---------------------------------------------------------------- CPU runtime

def test_cpu_kernels_are_built_parallel_like_torch():
    """at::parallel_for runs on one thread unless the extension is compiled with OpenMP."""
    assert torch.ops.mesrgan._cpu_parallel() == torch._C.has_openmp


def test_cpu_output_cache_recycles_large_outputs_and_writes_every_element():
    """A large output's block comes back for the next output of that size; a recycled (dirty)
    block is fully overwritten; layouts and activations stay right; clearing frees the idle blocks."""
    g = torch.Generator().manual_seed(3)
    mesrgan.ops.empty_cpu_cache()
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 48, 120, 104, generator=g).contiguous(memory_format=fmt)  # 4.6 MiB
        w = torch.randn(48, 1, 3, 3, generator=g)
        b = torch.randn(48, generator=g)
        y = depthwise_conv3x3(x, w, b)
        y.fill_(float("nan"))  # the block goes back to the cache dirty
        del y
        hits = mesrgan.ops.cpu_cache_info()["hits"]
        for act in ("none", "leaky_relu"):
            y = depthwise_conv3x3(x, w, b, activation=act)
            assert y.is_contiguous(memory_format=fmt)
            torch.testing.assert_close(y, depthwise_conv3x3_reference(x, w, b, activation=act), rtol=1e-5, atol=1e-5)
            y.fill_(float("nan"))
            del y
        info = mesrgan.ops.cpu_cache_info()
        assert info["hits"] == hits + 2 and info["idle_blocks"] >= 1 and 0 < info["idle_bytes"] <= info["limit_bytes"]
    mesrgan.ops.empty_cpu_cache()
    info = mesrgan.ops.cpu_cache_info()
    assert info["idle_bytes"] == 0 and info["idle_blocks"] == 0


def test_cpu_output_cache_in_a_forked_child():
    """A forked child (a DataLoader worker, say) uses the cache it inherits, lock reset, results right.
    Like a DataLoader worker it runs on one thread: GNU OpenMP cannot start threads in a child forked
    after the parent used them (torch's own ops hang there too)."""
    code = ("import os, torch, mesrgan\n"
            "x = torch.randn(1, 64, 160, 160); w = torch.randn(64, 1, 3, 3)\n"
            "y = mesrgan.ops.depthwise_conv3x3(x, w); del y\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    torch.set_num_threads(1)\n"
            "    y = mesrgan.ops.depthwise_conv3x3(x, w, activation='relu')\n"
            "    ref = mesrgan.ops.depthwise_conv3x3_reference(x, w, activation='relu')\n"
            "    hit = mesrgan.ops.cpu_cache_info()['hits'] >= 1\n"
            "    os._exit(0 if hit and torch.allclose(y, ref, rtol=1e-5, atol=1e-5) else 3)\n"
            "_, status = os.waitpid(pid, 0)\n"
            "print('child exit', os.waitstatus_to_exitcode(status))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "child exit 0" in out.stdout, out.stdout + out.stderr


def test_cpu_output_cache_keeps_the_newest_blocks_under_its_limit():
    """Over MESRGAN_CPU_CACHE_MB the oldest idle blocks are freed first, so the cache follows
    changing sizes: an 8 MiB limit keeps the 8 MiB block of the second size, not the first's 6 MiB."""
    code = ("import torch, mesrgan\n"
            "from mesrgan.ops import depthwise_conv3x3, cpu_cache_info\n"
            "w = torch.randn(64, 1, 3, 3)\n"
            "a = torch.randn(1, 64, 140, 134)\n"  # 4.6 MiB -> a 6 MiB block
            "b = torch.randn(1, 64, 160, 160)\n"  # 6.25 MiB -> an 8 MiB block
            "y = depthwise_conv3x3(a, w); z = depthwise_conv3x3(b, w); del y; del z\n"
            "i = cpu_cache_info(); print(i['idle_blocks'], i['idle_bytes'] >> 20)\n"
            "z = depthwise_conv3x3(b, w); i = cpu_cache_info(); print(i['hits'], i['idle_blocks'])\n")
    env = dict(os.environ, MESRGAN_CPU_CACHE_MB="8")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "8", "1", "0"], out.stdout


@pytest.mark.parametrize("value, ok", [("0", True), ("lots", False), ("-5", False)])
def test_cpu_output_cache_setting(value, ok):
    code = ("import torch, mesrgan\n"
            "x = torch.randn(1, 64, 160, 160)\n"
            "y = mesrgan.ops.depthwise_conv3x3(x, torch.randn(64, 1, 3, 3)); del y\n"
            "print(torch.ops.mesrgan._cpu_cache_info())\n")
    env = dict(os.environ, MESRGAN_CPU_CACHE_MB=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if ok:  # 0: off, nothing cached
        assert out.returncode == 0 and out.stdout.strip() == "[0, 0, 0, 0, 0]", out.stderr
    else:
        assert out.returncode != 0 and "MESRGAN_CPU_CACHE_MB must be a whole number of MiB >= 0" in out.stderr


def test_extension_built_for_another_torch_is_refused(monkeypatch):
    from mesrgan import _build_info, _ext
    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=r"built against torch 1.0.0, but torch .* is installed; rebuild"):
        _ext._load()


# ---------------------------------------------------------------- module

def test_module_state_dict_matches_conv2d():
    m = DepthwiseConv3x3(12, activation="relu")
    conv = nn.Conv2d(12, 12, 3, padding=1, groups=12)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in conv.state_dict().items()}
    m.load_state_dict(conv.state_dict())
    x = torch.randn(2, 12, 7, 9)
    torch.testing.assert_close(m(x), F.relu(conv(x)), rtol=1e-5, atol=1e-5)
    assert DepthwiseConv3x3(3, bias=False).bias is None


def test_module_impls_agree():
    m = DepthwiseConv3x3(6, activation="leaky_relu", negative_slope=0.1, impl="mesrgan").double()
    t = DepthwiseConv3x3(6, activation="leaky_relu", negative_slope=0.1, impl="torch").double()
    t.load_state_dict(m.state_dict())
    x = torch.randn(3, 6, 10, 11, dtype=torch.float64)
    torch.testing.assert_close(m(x), t(x), rtol=1e-12, atol=1e-12)


def test_module_impl_auto_uses_compiled_op(monkeypatch):
    calls = []
    real = mesrgan.ops.depthwise._op

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(mesrgan.ops.depthwise, "_op", spy)
    DepthwiseConv3x3(4)(torch.randn(1, 4, 5, 5))
    assert calls == [(1, 4, 5, 5)]
    calls.clear()
    DepthwiseConv3x3(4, impl="torch")(torch.randn(1, 4, 5, 5))
    assert calls == []
    # bfloat16 has a CPU kernel; float16 has none: "auto" falls back to PyTorch, "mesrgan" refuses clearly.
    with torch.no_grad():
        DepthwiseConv3x3(4, dtype=torch.bfloat16)(torch.randn(1, 4, 5, 5, dtype=torch.bfloat16))
    assert calls == [(1, 4, 5, 5)]
    calls.clear()
    # ... but a bfloat16 call that will be differentiated takes PyTorch's path (auto_picks_ours)
    DepthwiseConv3x3(4, dtype=torch.bfloat16)(torch.randn(1, 4, 5, 5, dtype=torch.bfloat16))
    assert calls == []
    DepthwiseConv3x3(4, dtype=torch.bfloat16, impl="mesrgan")(torch.randn(1, 4, 5, 5, dtype=torch.bfloat16))
    assert calls == [(1, 4, 5, 5)]
    calls.clear()
    DepthwiseConv3x3(4, dtype=torch.float16)(torch.randn(1, 4, 5, 5, dtype=torch.float16))
    assert calls == []
    with pytest.raises(TypeError, match=r"float32, float64 or bfloat16 on CPU, got Half on cpu"):
        DepthwiseConv3x3(4, impl="mesrgan", dtype=torch.float16)(torch.randn(1, 4, 5, 5, dtype=torch.float16))


def test_module_bad_arguments():
    with pytest.raises(ValueError, match=r"impl must be one of"):
        DepthwiseConv3x3(4, impl="cudnn")
    with pytest.raises(ValueError, match=r"channels must be a positive int"):
        DepthwiseConv3x3(0)
    with pytest.raises(ValueError, match=r"activation must be one of"):
        DepthwiseConv3x3(4, activation="tanh")


# ---------------------------------------------------------------- CUDA

TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 2e-2)}
CUDA_SHAPES = [(2, 3, 5, 7), (1, 1, 1, 1), (0, 4, 6, 6), (2, 8, 1, 33), (2, 8, 3, 3), (2, 13, 17, 19),
               (3, 64, 32, 32), (1, 20, 70, 130), (2, 384, 9, 7)]


@CUDA
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("shape", CUDA_SHAPES)
def test_cuda_forward(dtype, layout, shape):
    x, w, b = make(shape, dtype=dtype, device="cuda", layout=layout)
    for activation in ACTIVATIONS:
        y = depthwise_conv3x3(x, w, b, activation=activation)
        assert y.dtype == dtype and y.shape == x.shape
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)
        rtol, atol = TOL[dtype]
        torch.testing.assert_close(y.double().cpu(), reference(x, w, b, activation), rtol=rtol, atol=atol * 3)


@CUDA
@pytest.mark.parametrize("dtype", list(TOL))
def test_cuda_unaligned_storage_offset(dtype):
    x, w, b = make((3, 8, 12, 12), dtype=dtype, device="cuda", layout="channels_last")
    base = torch.randn(x.numel() + 1, device="cuda", dtype=dtype)
    xs = base[1:].view(3, 12, 12, 8).permute(0, 3, 1, 2)  # channels_last strides, misaligned pointer
    assert xs.is_contiguous(memory_format=torch.channels_last) and xs.data_ptr() % 16 != 0
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(depthwise_conv3x3(xs, w, b).double().cpu(), reference(xs, w, b), rtol=rtol,
                               atol=atol * 3)


@CUDA
@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_gradients(dtype, layout):
    x, w, b = make((3, 24, 19, 37), dtype=dtype, device="cuda", layout=layout)
    gy = torch.randn(x.shape, device="cuda", dtype=dtype)
    x.requires_grad_(); w.requires_grad_(); b.requires_grad_()
    depthwise_conv3x3(x, w, b, activation="leaky_relu").backward(gy)
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (x, w, b))
    depthwise_conv3x3_reference(xr, wr, br, activation="leaky_relu").backward(gy.double().cpu())
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(x.grad.double().cpu(), xr.grad, rtol=rtol, atol=atol * 5)
    # The weight gradient sums ~2e4 products: compare relative to its scale.
    for got, want in ((w.grad, wr.grad), (b.grad, br.grad)):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double().cpu(), want, rtol=rtol * 4, atol=atol * 4 * scale)


@CUDA
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_gradcheck_float32_double_backward(layout):
    # float64 has no CUDA kernel; check double backward against PyTorch's path in float32 instead.
    x, w, b = make((2, 4, 6, 7), dtype=torch.float32, device="cuda", layout=layout)
    ins = [t.detach().requires_grad_() for t in (x, w, b)]
    refs = [t.detach().requires_grad_() for t in (x, w, b)]
    y = depthwise_conv3x3(*ins, activation="relu")
    yr = depthwise_conv3x3_reference(*refs, activation="relu")
    g = torch.autograd.grad(y.square().sum(), ins, create_graph=True)
    gr = torch.autograd.grad(yr.square().sum(), refs, create_graph=True)
    h = torch.autograd.grad(sum(t.square().sum() for t in g), ins)
    hr = torch.autograd.grad(sum(t.square().sum() for t in gr), refs)
    for a, r in zip(h, hr):
        torch.testing.assert_close(a, r, rtol=1e-3, atol=1e-3)


@CUDA
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(TOL))
def test_cuda_weight_grad_bitwise_deterministic(layout, dtype):
    x, _, _ = make((8, 32, 64, 64), dtype=dtype, device="cuda", layout=layout)
    g = torch.randn(x.shape, device="cuda", dtype=dtype).contiguous(
        memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [OP_BWD_W(x, g, True) for _ in range(5)]
    finally:
        torch.use_deterministic_algorithms(prev)
    for gw, gb in runs[1:]:
        assert torch.equal(gw, runs[0][0]) and torch.equal(gb, runs[0][1])
    fast = OP_BWD_W(x, g, True)  # atomic mode: same values up to float rounding
    torch.testing.assert_close(fast[0].float(), runs[0][0].float(), rtol=1e-2, atol=1e-2)


@CUDA
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_matches_cpu(layout):
    x, w, b = make((4, 32, 23, 31), dtype=torch.float32, layout=layout)
    gy = torch.randn(x.shape)
    out = {}
    for dev in ("cpu", "cuda"):
        xi, wi, bi = (t.detach().to(dev).requires_grad_() for t in (x, w, b))
        y = depthwise_conv3x3(xi, wi, bi, activation="relu6")
        y.backward(gy.to(dev))
        out[dev] = [t.detach().cpu() for t in (y, xi.grad, wi.grad, bi.grad)]
    for a, c in zip(out["cpu"], out["cuda"]):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-4)


@CUDA
def test_cuda_past_2_31_elements():
    n = 2 ** 31 + 2 ** 20  # elements
    C, H, W = 8, 4096, n // (8 * 4096) + 1
    need = 2 * C * H * W * 2  # fp16 x and y
    free, _ = torch.cuda.mem_get_info()
    if free < need * 1.3:
        pytest.skip(f"needs {need / 2**30:.1f} GiB of free GPU memory")
    x = torch.randn(1, C, H, W, device="cuda", dtype=torch.float16)
    w = torch.randn(C, 1, 3, 3, device="cuda", dtype=torch.float16)
    y = depthwise_conv3x3(x, w)
    # Check the last rows (past 2^31 elements) against PyTorch on a slice with its halo.
    tail = x[:, :, -5:, :]
    ref = F.conv2d(tail.float(), w.float(), padding=1, groups=C)[:, :, 1:]
    torch.testing.assert_close(y[:, :, -4:, :].float(), ref, rtol=2e-3, atol=6e-3)
    del y
    xc = x.contiguous(memory_format=torch.channels_last)
    del x
    yc = depthwise_conv3x3(xc, w)
    torch.testing.assert_close(yc[:, :, -4:, :].float(), ref, rtol=2e-3, atol=6e-3)


@CUDA
def test_cuda_torch_compile():
    torch._dynamo.reset()
    x, w, b = make((2, 16, 20, 24), dtype=torch.float16, device="cuda", layout="channels_last")

    def f(x, w, b):
        return depthwise_conv3x3(x, w, b, activation="leaky_relu") * 2 + 1

    torch.testing.assert_close(torch.compile(f, fullgraph=True)(x, w, b), f(x, w, b))


@CUDA
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cuda_graph_capture_forward_backward(layout):
    x, w, b = make((4, 32, 16, 16), dtype=torch.float32, device="cuda", layout=layout)
    w.requires_grad_(); b.requires_grad_()
    static_x = x.clone().requires_grad_()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):  # warm up outside the capture
            depthwise_conv3x3(static_x, w, b, activation="relu").sum().backward()
    torch.cuda.current_stream().wait_stream(s)
    w.grad = b.grad = static_x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = depthwise_conv3x3(static_x, w, b, activation="relu")
        y.square().sum().backward()
    new_x = torch.randn_like(x)
    with torch.no_grad():
        static_x.copy_(new_x)
    graph.replay()
    torch.cuda.synchronize()
    xr, wr, br = (t.detach().double().cpu().requires_grad_() for t in (new_x, w, b))
    yr = depthwise_conv3x3_reference(xr, wr, br, activation="relu")
    yr.square().sum().backward()
    torch.testing.assert_close(y.double().cpu(), yr, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(static_x.grad.double().cpu(), xr.grad, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(w.grad.double().cpu(), wr.grad, rtol=1e-3, atol=1e-2)
