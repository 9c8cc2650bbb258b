"""Tests of mesrgan.ops.dense (a dense block's layers over one buffer, no concatenation) against the
same layers run on torch.cat of the features through the unfused PyTorch path, and of the buffer ops
it is built on."""
import random

import pytest
import torch
import torch.nn.functional as F

from mesrgan.models import build_generator
from mesrgan.models.blocks import BottleneckResidualBlock, DenseBlock, conv3x3
from mesrgan.ops import bottleneck_block_reference
from mesrgan.ops.bottleneck import fused_bf16_training_wins
from mesrgan.ops.dense import dense_bottleneck_stack

OUT = torch.ops.mesrgan._bottleneck_block_out
BACKWARD_INTO = torch.ops.mesrgan._bottleneck_block_backward_into


def layer_params(c_in, c_out, hidden, g, dtype, bias=True):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return [rnd(hidden, c_in, 1, 1, scale=c_in ** -0.5), rnd(hidden) * 0.1 if bias else None,
            rnd(hidden, 1, 3, 3, scale=1 / 3), rnd(hidden) * 0.1 if bias else None,
            rnd(c_out, hidden, 1, 1, scale=hidden ** -0.5), rnd(c_out) * 0.1 if bias else None]


def make_stack(n, features, growth, h, w, *, layers=5, t=2, hidden_width="input", layout="nchw", bias=True,
               dtype=torch.float64, seed=0):
    """x and the layers of a dense block: layer k reads F + k·G channels and gives G (the last gives F)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, h, w, generator=g, dtype=torch.float64).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(n, features, h, 2 * w, generator=g, dtype=torch.float64).to(dtype)[..., ::2]
    stack = []
    for k in range(layers):
        c_in, c_out = features + k * growth, features if k == layers - 1 else growth
        hidden = t * (c_in if hidden_width == "input" else c_out)
        stack.append(layer_params(c_in, c_out, hidden, g, dtype, bias) + [c_in == c_out])
    return x, stack


def leaf_copies(x, stack):
    x = x.detach().clone().requires_grad_()
    return x, [[None if p is None else p.detach().clone().requires_grad_() for p in layer[:6]] + [layer[6]]
               for layer in stack]


def concatenating_reference(x, stack, res_scale, between_slope, negative_slope=0.2):
    feats = [x]
    for layer in stack[:-1]:
        y = bottleneck_block_reference(torch.cat(feats, 1), *layer[:6], skip=layer[6], negative_slope=negative_slope)
        feats.append(y if between_slope is None else F.leaky_relu(y, between_slope))
    last = stack[-1]
    return x + res_scale * bottleneck_block_reference(torch.cat(feats, 1), *last[:6], skip=last[6],
                                                      negative_slope=negative_slope)


def random_cases(count, seed):
    """(n, features, growth, h, w, layers, t, hidden_width): odd sizes, growth == features (every
    layer's skip possible only in a one-layer stack) and not."""
    rng = random.Random(seed)
    return [(rng.randint(1, 3), rng.choice([1, 3, 8, 17]), rng.choice([1, 2, 5, 16]), rng.choice([1, 2, 5, 13]),
             rng.choice([1, 3, 7, 10]), rng.randint(1, 5), rng.randint(1, 3), rng.choice(["input", "output"]))
            for _ in range(count)]


def all_grads(x, stack):
    return [("x", x.grad)] + [(f"layers[{k}][{i}]", p.grad) for k, layer in enumerate(stack)
                              for i, p in enumerate(layer[:6]) if p is not None]


@pytest.mark.parametrize("case", random_cases(16, seed=1), ids=str)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("between_slope", [None, 0.2])
def test_stack_equals_concatenating_reference_float64(case, layout, between_slope):
    n, features, growth, h, w, layers, t, hidden_width = case
    x, stack = make_stack(n, features, growth, h, w, layers=layers, t=t, hidden_width=hidden_width, layout=layout,
                          seed=sum(case[:6]))
    ours, ours_stack = leaf_copies(x, stack)
    ref, ref_stack = leaf_copies(x, stack)
    y = dense_bottleneck_stack(ours, ours_stack, res_scale=0.2, between_slope=between_slope, negative_slope=0.1)
    yr = concatenating_reference(ref, ref_stack, 0.2, between_slope, negative_slope=0.1)
    torch.testing.assert_close(y, yr, rtol=1e-11, atol=1e-11)
    assert y.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
    gy = torch.randn(yr.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y.backward(gy)
    yr.backward(gy)
    for (name, a), (_, b) in zip(all_grads(ours, ours_stack), all_grads(ref, ref_stack)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
    if layout != "strided":
        assert ours.grad.is_contiguous(memory_format=torch.channels_last if layout == "channels_last"
                                       else torch.contiguous_format)


def test_gradcheck():
    x, stack = make_stack(2, 3, 2, 4, 5, layers=3, layout="channels_last", seed=3)
    x, stack = leaf_copies(x, stack)
    flat = [p for layer in stack for p in layer[:6]]

    def run(x, *flat):
        layers = [tuple(flat[6 * k:6 * k + 6]) + (stack[k][6],) for k in range(len(stack))]
        return dense_bottleneck_stack(x, layers, res_scale=0.3, between_slope=0.2, negative_slope=0.2)

    assert torch.autograd.gradcheck(run, (x, *flat))


@pytest.mark.parametrize("shape", [(2, 64, 32, 9, 7), (1, 17, 5, 13, 3)], ids=str)
def test_float32_gemms_match_float64_reference(shape, gemm):
    # The GEMMs' stores into a channel slice (forward) and their accumulating stores into the gradient
    # buffer (backward), edge tiles included.
    x, stack = make_stack(*shape, dtype=torch.float32, layout="channels_last", seed=4)
    ours, ours_stack = leaf_copies(x, stack)
    ref, ref_stack = leaf_copies(x.double(), [[None if p is None else p.double() for p in layer[:6]] + [layer[6]]
                                              for layer in stack])
    y = dense_bottleneck_stack(ours, ours_stack, res_scale=0.2, between_slope=0.2)
    yr = concatenating_reference(ref, ref_stack, 0.2, 0.2)
    gy = torch.randn(yr.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    y.backward(gy.float())
    yr.backward(gy)
    for (name, a), (_, b) in [(("y", y), ("y", yr))] + list(zip(all_grads(ours, ours_stack),
                                                                  all_grads(ref, ref_stack))):
        err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
        assert err < 2e-6, f"{name} with the {gemm} GEMM: relative error {err:.2e}"


@pytest.mark.parametrize("needs", ["x", "first layer", "last layer", "middle projection bias", "none"])
def test_only_needed_gradients(needs):
    x, stack = make_stack(2, 4, 3, 5, 6, layers=4, seed=6)
    ours, ours_stack = leaf_copies(x, stack)
    ref, ref_stack = leaf_copies(x, stack)
    wanted = {"x": [ours], "first layer": ours_stack[0][:6], "last layer": ours_stack[-1][:6],
              "middle projection bias": [ours_stack[1][5]], "none": []}[needs]
    for t in [ours] + [p for layer in ours_stack for p in layer[:6]]:
        t.requires_grad_(any(t is w for w in wanted))
    y = dense_bottleneck_stack(ours, ours_stack, res_scale=0.2, between_slope=0.2)
    concatenating_reference(ref, ref_stack, 0.2, 0.2).sum().backward()
    if not wanted:
        assert not y.requires_grad
        return
    y.sum().backward()
    for (name, a), (_, b), t in zip(all_grads(ours, ours_stack), all_grads(ref, ref_stack),
                                    [ours] + [p for layer in ours_stack for p in layer[:6]]):
        if t.requires_grad:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"grad of {name}: {m}")
        else:
            assert a is None, f"{name} got a gradient it did not ask for"


def test_empty_batch():
    x, stack = make_stack(0, 4, 3, 5, 6, seed=7)
    ours, ours_stack = leaf_copies(x, stack)
    y = dense_bottleneck_stack(ours, ours_stack, res_scale=0.2)
    assert y.shape == (0, 4, 5, 6)
    y.sum().backward()
    assert ours.grad.shape == x.shape
    assert all(torch.count_nonzero(p.grad) == 0 for layer in ours_stack for p in layer[:6])


def test_without_biases():
    x, stack = make_stack(1, 5, 4, 6, 3, bias=False, seed=8)
    torch.testing.assert_close(dense_bottleneck_stack(x, stack, res_scale=0.5, between_slope=0.2),
                               concatenating_reference(x, stack, 0.5, 0.2), rtol=1e-11, atol=1e-11)


def test_double_backward_is_refused_clearly():
    x, stack = make_stack(1, 3, 2, 4, 4, layers=2, seed=9)
    ours, ours_stack = leaf_copies(x, stack)
    y = dense_bottleneck_stack(ours, ours_stack, res_scale=0.2).sum()
    with pytest.raises(RuntimeError, match="double backward.*impl=\"torch\""):
        torch.autograd.grad(y, ours, create_graph=True)


@pytest.mark.parametrize("bad, match", [
    (lambda x, s: (x[0], s), "x must be a 4-D tensor"),
    (lambda x, s: (x, []), "at least one layer"),
    (lambda x, s: (x, [s[0][:6]] + s[1:]), r"layers\[0\] must be \(expand_weight"),
    (lambda x, s: (x, [s[1]] + s[1:]), r"layers\[0\] expects 7 input channels, but it reads the 4"),
    (lambda x, s: (x, s[:-1]), "the last layer must give x's 4 channels, got 3"),
])
def test_errors_name_the_argument(bad, match):
    x, stack = make_stack(1, 4, 3, 3, 3, layers=3, seed=10)
    with pytest.raises(ValueError, match=match):
        dense_bottleneck_stack(*bad(x, stack), res_scale=0.2)


def test_slope_errors():
    x, stack = make_stack(1, 4, 3, 3, 3, layers=2, seed=10)
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        dense_bottleneck_stack(x, stack, res_scale=0.2, negative_slope=-0.1)
    with pytest.raises(ValueError, match="between_slope must be >= 0"):
        dense_bottleneck_stack(x, stack, res_scale=0.2, between_slope=-0.2)


# --- the buffer ops -------------------------------------------------------------------------------

def test_out_op_reads_and_writes_channel_slices():
    g = torch.Generator().manual_seed(11)
    buf = torch.randn(2, 13, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    before = buf.clone()
    params = layer_params(6, 4, 12, g, torch.float64)
    OUT(buf[:, :6], *params, False, 0.2, buf[:, 6:10])
    torch.testing.assert_close(buf[:, 6:10], bottleneck_block_reference(before[:, :6], *params, negative_slope=0.2),
                               rtol=1e-12, atol=1e-12)
    assert torch.equal(buf[:, :6], before[:, :6]) and torch.equal(buf[:, 10:], before[:, 10:])  # nothing else


@pytest.mark.parametrize("accumulate", [False, True])
def test_backward_into_writes_or_adds_into_a_slice(accumulate):
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 9, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    params = layer_params(6, 4, 12, g, torch.float64)
    gbuf = torch.randn(2, 9, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    before = gbuf.clone()
    gy = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
    grads = BACKWARD_INTO(gy, x[:, :6], *params[:5], False, 0.2, [True] * 7, gbuf[:, :6], accumulate)
    ref = [t.detach().clone().requires_grad_() for t in [x[:, :6]] + params]
    bottleneck_block_reference(*ref, negative_slope=0.2).backward(gy)
    expected = ref[0].grad + before[:, :6] if accumulate else ref[0].grad
    torch.testing.assert_close(gbuf[:, :6], expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(gbuf[:, 6:], before[:, 6:])
    for got, r in zip(grads, ref[1:]):
        torch.testing.assert_close(got, r.grad, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("bad_out, match", [
    (lambda buf: buf[:, 6:9], r"out must have shape \(2, 4, 5, 7\)"),
    (lambda buf: buf[:, 6:10].float(), "out must match x's dtype and device"),
    (lambda buf: torch.empty(2, 4, 5, 7, dtype=torch.float64), "out must be channels_last or a channel slice"),
])
def test_out_op_errors_name_the_argument(bad_out, match):
    g = torch.Generator().manual_seed(13)
    buf = torch.randn(2, 13, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    params = layer_params(6, 4, 12, g, torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        OUT(buf[:, :6], *params, False, 0.2, bad_out(buf))


def test_backward_into_errors_name_the_argument():
    g = torch.Generator().manual_seed(14)
    x = torch.randn(2, 6, 5, 7, generator=g, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    params = layer_params(6, 4, 12, g, torch.float64)
    gy = torch.randn(2, 4, 5, 7, generator=g, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"grad_out must have shape \(2, 4, 5, 7\)"):
        BACKWARD_INTO(gy[:, :3], x, *params[:5], False, 0.2, [True] * 7, torch.empty_like(x), False)
    with pytest.raises(ValueError, match="grad_x must have shape"):
        BACKWARD_INTO(gy, x, *params[:5], False, 0.2, [True] * 7, torch.empty_like(x)[:, :5], False)
    with pytest.raises(ValueError, match="grad_x must be channels_last"):
        BACKWARD_INTO(gy, x, *params[:5], False, 0.2, [True] * 7, torch.empty(2, 6, 5, 7, dtype=torch.float64), False)


# --- the models ---------------------------------------------------------------------------------

def bottleneck_dense_block(impl="auto", activation=True):
    torch.manual_seed(0)
    return DenseBlock(8, 4, layer=lambda c_in, c_out: BottleneckResidualBlock(c_in, c_out, impl=impl),
                      activation=activation).double()


def test_dense_block_uses_the_buffer_only_where_it_can():
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    assert bottleneck_dense_block().uses_buffer(x)
    assert not bottleneck_dense_block(impl="torch").uses_buffer(x)
    with torch.no_grad():
        assert bottleneck_dense_block().uses_buffer(x.to(torch.bfloat16))
    # to differentiate: ours where its bfloat16 GEMMs are vdpbf16ps, PyTorch's path elsewhere
    assert bottleneck_dense_block().uses_buffer(x.to(torch.bfloat16)) == fused_bf16_training_wins()
    assert bottleneck_dense_block(impl="mesrgan").uses_buffer(x.to(torch.bfloat16))
    assert not bottleneck_dense_block().uses_buffer(x.to(torch.float16))
    assert not DenseBlock(8, 4, layer=conv3x3).uses_buffer(x.float())
    mixed = bottleneck_dense_block()
    mixed.conv3.negative_slope = 0.1
    assert not mixed.uses_buffer(x)


@pytest.mark.parametrize("activation", [True, False])
def test_dense_block_equals_its_concatenating_path(activation):
    x = torch.randn(2, 8, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    buffered, concatenating = bottleneck_dense_block(activation=activation), bottleneck_dense_block(
        impl="torch", activation=activation)
    concatenating.load_state_dict(buffered.state_dict())
    torch.testing.assert_close(buffered(x), concatenating(x), rtol=1e-11, atol=1e-12)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace")
def test_traced_and_compiled_dense_blocks_concatenate():
    block = bottleneck_dense_block()
    x = torch.randn(1, 8, 5, 5, dtype=torch.float64)
    traced = torch.jit.trace(block, x, check_trace=False)
    assert "_bottleneck_block_out" not in str(traced.graph)
    torch.testing.assert_close(traced(x), block(x), rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), block(x), rtol=1e-12, atol=1e-12)


def test_generator_runs_the_buffer_in_every_dense_block(monkeypatch):
    import mesrgan.models.blocks as blocks
    calls = []
    real = blocks.dense_bottleneck_stack
    monkeypatch.setattr(blocks, "dense_bottleneck_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    for name, options, dense_blocks in [("mesrgan-paper", {}, 2), ("mesrgan", {"dense_blocks": 3}, 2 * 3)]:
        calls.clear()
        with torch.no_grad():
            build_generator(name, num_blocks=2, features=8, growth=4, **options)(torch.rand(1, 3, 8, 8))
        assert len(calls) == dense_blocks, name


def test_cpu_empty_nhwc_is_a_channels_last_buffer_like_its_input():
    like = torch.randn(3, 5, 7, 2, dtype=torch.float64)
    buf = torch.ops.mesrgan._cpu_empty_nhwc(like, 11)
    assert buf.shape == (3, 11, 7, 2) and buf.dtype == torch.float64 and buf.device == like.device
    assert buf.is_contiguous(memory_format=torch.channels_last)
    buf.fill_(2.5)  # writable end to end
    assert buf.sum().item() == 2.5 * buf.numel()
    assert torch.ops.mesrgan._cpu_empty_nhwc(like[:0], 4).shape == (0, 4, 7, 2)


@pytest.mark.parametrize("like, channels", [(torch.randn(2, 3, 4), 5), (torch.randn(1, 2, 3, 3), -1)])
def test_cpu_empty_nhwc_errors_name_the_argument(like, channels):
    with pytest.raises(ValueError, match="_cpu_empty_nhwc: like must be a 4-D CPU tensor and channels >= 0"):
        torch.ops.mesrgan._cpu_empty_nhwc(like, channels)
