"""Tests of torch.ops.mesrgan.bottleneck_block (the fused bottleneck block) against the unfused
PyTorch path (three F.conv2d calls and two LeakyReLUs), and of the networks that use it."""
import random

import pytest
import torch
import torch.nn.functional as F

from mesrgan.models import build_generator
from mesrgan.models.blocks import BottleneckResidualBlock
from mesrgan.ops import bottleneck_block, bottleneck_block_reference
from mesrgan.ops.bottleneck import _cpu_has_amx, fused_bf16_training_wins

OP = torch.ops.mesrgan.bottleneck_block
OP_BWD = torch.ops.mesrgan.bottleneck_block_backward
PARAM_NAMES = ("expand_weight", "expand_bias", "dw_weight", "dw_bias", "project_weight", "project_bias")


def make(n, c_in, h, w, hidden, c_out, *, dtype=torch.float64, layout="nchw", bias=True, seed=0):
    """x and the six parameters, random normal, scaled so that activations stay of order one."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x = rnd(n, c_in, h, w)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":  # neither NCHW- nor NHWC-contiguous
        x = rnd(n, c_in, h, 2 * w + 1)[..., 1::2]
    params = [rnd(hidden, c_in, 1, 1, scale=c_in ** -0.5), rnd(hidden) if bias else None,
              rnd(hidden, 1, 3, 3, scale=1 / 3), rnd(hidden) if bias else None,
              rnd(c_out, hidden, 1, 1, scale=hidden ** -0.5), rnd(c_out) if bias else None]
    return x, params


def leaves(x, params):
    return [x.detach().clone().requires_grad_()] + [None if p is None else p.detach().clone().requires_grad_()
                                                    for p in params]


def random_cases(count, seed):
    """(n, c_in, h, w, hidden, c_out, skip): odd sizes, C_in 1..200, t 1..4, both hidden widths."""
    rng = random.Random(seed)
    cases = []
    for _ in range(count):
        c_in = rng.choice([1, 2, 3, 5, 7, 16, 31, 64, 97, 200])
        t = rng.randint(1, 4)
        skip = rng.random() < 0.5
        c_out = c_in if skip else rng.choice([1, 3, 8, 32, 65])
        hidden = t * (c_in if rng.random() < 0.5 else c_out)
        h, w = rng.choice([1, 2, 3, 5, 9, 17, 40]), rng.choice([1, 2, 3, 6, 11, 33])
        cases.append((rng.randint(1, 3), c_in, h, w, hidden, c_out, skip))
    return cases


@pytest.mark.parametrize("case", random_cases(24, seed=1), ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
def test_forward_equals_unfused_float64(case, layout):
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = make(n, c_in, h, w, hidden, c_out, layout=layout, seed=sum(case))
    y = bottleneck_block(x, *params, skip=skip, negative_slope=0.1)
    ref = bottleneck_block_reference(x, *params, skip=skip, negative_slope=0.1)
    assert y.shape == (n, c_out, h, w) and y.dtype == torch.float64
    torch.testing.assert_close(y, ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("case", random_cases(12, seed=2), ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("bias", [True, False])
def test_gradients_equal_unfused_float64(case, layout, bias):
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = make(n, c_in, h, w, hidden, c_out, layout=layout, bias=bias, seed=sum(case) + 7)
    ours, ref = leaves(x, params), leaves(x, params)
    y = bottleneck_block(*ours, skip=skip, negative_slope=0.2)
    yr = bottleneck_block_reference(*ref, skip=skip, negative_slope=0.2)
    gy = torch.randn_like(yr)
    y.backward(gy)
    yr.backward(gy)
    for name, a, b in zip(("x",) + PARAM_NAMES, ours, ref):
        if a is None:
            continue
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert ours[0].grad.is_contiguous(memory_format=fmt)  # x's own memory format


@pytest.mark.parametrize("shape", [(2, 3, 5, 4, 6, 3, True), (1, 4, 3, 7, 8, 2, False), (2, 2, 1, 1, 4, 2, True)])
def test_gradcheck(shape):
    n, c_in, h, w, hidden, c_out, skip = shape
    x, params = make(n, c_in, h, w, hidden, c_out, layout="channels_last", seed=3)
    inputs = leaves(x, params)
    assert torch.autograd.gradcheck(lambda *a: bottleneck_block(*a, skip=skip, negative_slope=0.3), inputs)


def test_larger_float32_gradients_match_unfused(one_thread):
    x, params = make(4, 64, 32, 32, 128, 32, dtype=torch.float32, layout="channels_last", seed=4)
    ours, ref = leaves(x, params), leaves(x, params)
    gy = torch.randn(4, 32, 32, 32)
    bottleneck_block(*ours).backward(gy)
    bottleneck_block_reference(*ref).backward(gy)
    for name, a, b in zip(("x",) + PARAM_NAMES, ours, ref):
        err = ((a.grad - b.grad).norm() / b.grad.norm()).item()
        assert err < 1e-5, f"grad of {name}: relative error {err:.2e}"


@pytest.mark.parametrize("case", random_cases(12, seed=5) + [(2, 192, 5, 7, 384, 64, False), (1, 64, 9, 6, 128, 64, True),
                                                         (1, 40, 5, 5, 48, 40, True), (1, 8, 13, 1, 16, 24, False)],
                         ids=str)
def test_float32_gemms_match_float64_reference(case, gemm):
    # Odd sizes put every GEMM through its edge tiles: rows left over from 6 and 12, columns from 16
    # and 32, K of 1.
    n, c_in, h, w, hidden, c_out, skip = case
    x, params = make(n, c_in, h, w, hidden, c_out, dtype=torch.float32, layout="channels_last", seed=sum(case))
    ours, ref = leaves(x, params), leaves(x.double(), [p.double() for p in params])
    y = bottleneck_block(*ours, skip=skip, negative_slope=0.2)
    yr = bottleneck_block_reference(*ref, skip=skip, negative_slope=0.2)
    gy = torch.randn(yr.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y.backward(gy.float())
    yr.backward(gy)
    for name, a, b in [("y", y, yr)] + [(f"grad of {nm}", t.grad, r.grad)
                                         for nm, t, r in zip(("x",) + PARAM_NAMES, ours, ref)]:
        err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert err < 2e-6, f"{name} with the {gemm} GEMM: relative error {err:.2e}"


def cpu_vendor():
    with open("/proc/cpuinfo") as f:
        return next((line.split(":")[1].strip() for line in f if line.startswith("vendor_id")), "")


def test_gemm_choice():
    isa = torch.ops.mesrgan._cpu_tile_isa()
    try:
        default = torch.ops.mesrgan._cpu_gemm("default")
        if isa == "avx2":
            assert default == "avx2"
        elif isa == "avx512":
            assert default == ("blas" if cpu_vendor() == "GenuineIntel" else "avx512")
        else:
            assert default == "blas"
        assert torch.ops.mesrgan._cpu_gemm("blas") == "blas"
        if isa in ("avx2", "avx512"):
            assert torch.ops.mesrgan._cpu_gemm("own") == isa
            assert torch.ops.mesrgan._cpu_gemm("avx2") == "avx2"
        with pytest.raises(ValueError, match="which must be 'own', 'avx2', 'avx512', 'blas' or 'default'"):
            torch.ops.mesrgan._cpu_gemm("fast")
    finally:
        torch.ops.mesrgan._cpu_gemm("default")


@pytest.mark.parametrize("mask", [(True, False, False, False, False, False, False),
                                  (False, True, False, False, False, False, False),
                                  (False, False, False, True, True, False, False),
                                  (False, False, False, False, False, True, True),
                                  (True, True, True, True, True, True, True)])
def test_only_needed_gradients(mask):
    x, params = make(2, 5, 6, 7, 10, 5, seed=5)
    ours = leaves(x, params)
    for t, need in zip(ours, mask):
        t.requires_grad_(need)
    ref = leaves(x, params)
    bottleneck_block(*ours, skip=True).sum().backward()
    bottleneck_block_reference(*ref, skip=True).sum().backward()
    for a, b, need in zip(ours, ref, mask):
        if need:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
        else:
            assert a.grad is None


def test_empty_batch():
    x, params = make(0, 4, 5, 6, 8, 3, layout="channels_last")
    ours = leaves(x, params)
    y = bottleneck_block(*ours)
    assert y.shape == (0, 3, 5, 6)
    y.sum().backward()
    assert ours[0].grad.shape == x.shape
    for p in ours[1:]:
        assert torch.count_nonzero(p.grad) == 0


def test_backward_is_deterministic_across_thread_counts():
    x, params = make(3, 16, 19, 9, 32, 16, dtype=torch.float32, layout="channels_last", seed=6)
    gy = torch.randn(3, 16, 19, 9)
    old = torch.get_num_threads()
    grads = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            ours = leaves(x, params)
            bottleneck_block(*ours, skip=True).backward(gy)
            grads.append([t.grad for t in ours])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_double_backward_is_refused_clearly():
    x, params = make(1, 3, 4, 4, 6, 3)
    ours = leaves(x, params)
    y = bottleneck_block(*ours).sum()
    with pytest.raises(RuntimeError, match="double backward.*impl=\"torch\""):
        torch.autograd.grad(y, ours[0], create_graph=True)


def test_opcheck():
    x, params = make(2, 4, 5, 6, 8, 4, layout="channels_last", seed=8)
    torch.library.opcheck(OP, (x, *params, True, 0.2))
    torch.library.opcheck(OP, tuple(t for t in leaves(x, params)) + (False, 0.0))
    gy = torch.randn(2, 4, 5, 6, dtype=torch.float64)
    w1, b1, wd, bd, w2, _ = params
    torch.library.opcheck(OP_BWD, (gy, x, w1, b1, wd, bd, w2, True, 0.2, [True] * 7))
    torch.library.opcheck(OP_BWD, (gy, x, w1, None, wd, bd, w2, False, 0.2, [False, True, True, False, True, False,
                                                                              True]))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    block = BottleneckResidualBlock(6, 6, skip=True).double()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, block(x))
    y.sum().backward()
    assert block.expand.weight.grad is not None


@pytest.mark.parametrize("bad, match", [
    (lambda x, p: (x[0], *p), "x must be 4-D"),
    (lambda x, p: (x, p[0][:, :2], *p[1:]), "expand_weight must have shape"),
    (lambda x, p: (x, p[0], p[1][:3], *p[2:]), "expand_bias must have shape"),
    (lambda x, p: (x, *p[:2], p[2][:, :, :2], *p[3:]), "dw_weight must have shape"),
    (lambda x, p: (x, *p[:3], p[3][:1], *p[4:]), "dw_bias must have shape"),
    (lambda x, p: (x, *p[:4], p[4][:, :3], p[5]), "project_weight must have shape"),
    (lambda x, p: (x, *p[:5], p[5][:1]), "project_bias must have shape"),
    (lambda x, p: (x.float(), *p), "expand_weight dtype must match x"),
    (lambda x, p: (x.int(), *p), "x must be float32, float64 or bfloat16 on CPU, got Int on cpu"),
    (lambda x, p: (x, p[0].to("meta"), *p[1:]), "expand_weight must be on x's device"),
    (lambda x, p: (x, *p[:5], p[5].to("meta")), "project_bias must be on x's device"),
])
def test_errors_name_the_argument(bad, match):
    x, params = make(1, 4, 3, 3, 8, 4)
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        bottleneck_block(*bad(x, params))


def test_errors_for_skip_and_slope():
    x, params = make(1, 4, 3, 3, 8, 2)
    with pytest.raises(ValueError, match="skip needs C_in == C_out"):
        bottleneck_block(x, *params, skip=True)
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        bottleneck_block(x, *params, negative_slope=-0.1)
    with pytest.raises(TypeError, match="skip must be a bool"):
        bottleneck_block(x, *params, skip="yes")


def test_isa_paths_agree(tmp_path):
    """The baseline, AVX2 and (where the CPU has it) AVX-512 tile kernels give the same result."""
    import subprocess
    import sys
    script = ("import torch, mesrgan\n"
              "from mesrgan.ops import bottleneck_block\n"
              "g = torch.Generator().manual_seed(0)\n"
              "x = torch.randn(2, 70, 9, 13, generator=g).contiguous(memory_format=torch.channels_last)\n"
              "p = [torch.randn(140, 70, 1, 1, generator=g) * 0.1, torch.randn(140, generator=g),\n"
              "     torch.randn(140, 1, 3, 3, generator=g), torch.randn(140, generator=g),\n"
              "     torch.randn(70, 140, 1, 1, generator=g) * 0.1, torch.randn(70, generator=g)]\n"
              "x.requires_grad_(); [t.requires_grad_() for t in p]\n"
              "y = bottleneck_block(x, *p, skip=True); y.square().sum().backward()\n"
              f"torch.save([torch.ops.mesrgan._cpu_tile_isa(), y.detach(), x.grad] + [t.grad for t in p], "
              f"r'{tmp_path}/' + __import__('os').environ['MESRGAN_CPU_ISA'] + '.pt')\n")
    results = {}
    for isa in ("base", "avx2", "avx512"):
        env = {**__import__("os").environ, "MESRGAN_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", script], check=True, env=env)
        results[isa] = torch.load(tmp_path / f"{isa}.pt")
    assert results["base"][0] == "base"
    for isa in ("avx2", "avx512"):
        for a, b in zip(results[isa][1:], results["base"][1:]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# --- networks -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden_width", ["input", "output"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_generators_equal_with_auto_and_torch(hidden_width, layout, one_thread):
    x = torch.rand(2, 3, 9, 7, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    outs, grads = {}, {}
    for impl in ("auto", "torch"):
        torch.manual_seed(0)
        model = build_generator("mesrgan-paper", num_blocks=2, hidden_width=hidden_width, impl=impl).double()
        with torch.no_grad():  # non-zero biases, so that every bias gradient and add is exercised
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.01)
        y = model(x)
        F.l1_loss(y, torch.zeros_like(y) + 0.5).backward()
        outs[impl], grads[impl] = y, [p.grad for p in model.parameters()]
    assert outs["auto"].is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert outs["auto"].is_contiguous() == (layout == "nchw")
    torch.testing.assert_close(outs["auto"], outs["torch"], rtol=1e-10, atol=1e-12)
    for a, b in zip(grads["auto"], grads["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_block_uses_fused_op_only_where_it_has_a_kernel():
    block = BottleneckResidualBlock(4, 4)
    assert block.uses_fused(torch.randn(1, 4, 3, 3))
    with torch.no_grad():
        assert block.uses_fused(torch.randn(1, 4, 3, 3, dtype=torch.bfloat16))
    # bfloat16 to be differentiated: auto takes ours where its bfloat16 GEMMs are vdpbf16ps and the CPU
    # has no AMX (measured level or faster in training there), PyTorch's path elsewhere
    assert block.uses_fused(torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)) == fused_bf16_training_wins()
    assert fused_bf16_training_wins() == (torch.ops.mesrgan._cpu_bf16_gemm() == "avx512_bf16" and not _cpu_has_amx())
    assert BottleneckResidualBlock(4, 4, impl="mesrgan").uses_fused(torch.randn(1, 4, 3, 3, dtype=torch.bfloat16))
    assert not block.uses_fused(torch.randn(1, 4, 3, 3, dtype=torch.float16))
    assert not BottleneckResidualBlock(4, 4, impl="torch").uses_fused(torch.randn(1, 4, 3, 3))
    with pytest.raises(ValueError, match="impl must be one of"):
        BottleneckResidualBlock(4, 4, impl="fast")


def test_state_dict_is_the_same_for_every_impl():
    a = BottleneckResidualBlock(8, 4, impl="auto")
    b = BottleneckResidualBlock(8, 4, impl="torch")
    assert a.state_dict().keys() == b.state_dict().keys()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)
