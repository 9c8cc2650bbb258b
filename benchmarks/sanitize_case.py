"""A small forward + backward of every CUDA kernel of depthwise_conv3x3, for compute-sanitizer.

    PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck python -m benchmarks.sanitize_case
    compute-sanitizer --tool racecheck python -m benchmarks.sanitize_case

Covers float32 / float16 / bfloat16, NCHW and channels_last, each activation, shapes with partial
tiles (H, W not multiples of the tile sizes), channel counts on and off the vector width, a storage
offset from slicing, N = 0, and the weight gradient in atomic and in deterministic mode. Kept small
because every access is instrumented. PYTORCH_NO_CUDA_MEMORY_CACHING=1 gives every tensor its own
cudaMalloc, so that memcheck sees a read past a tensor's end instead of landing in a pooled block.

Exits 1 if a result differs from PyTorch's float32 reference, 2 without CUDA; prints one line per case.
``python -m benchmarks.sanitize_case cpu`` runs the float32 cases on the CPU kernels instead.

``python -m benchmarks.sanitize_case triton`` runs the Triton fused bottleneck block instead (``triton-cpu``:
the same on CPU tensors, under ``TRITON_INTERPRET=1``)
(mesrgan.ops.triton_bottleneck): forward and all seven gradients in float32 and bfloat16, on shapes
over several tiles with partial ones, channel counts off the block sizes, with and without biases and
skip, N = 0. racecheck sees shared memory only: the kernels' per-program scratch is global memory,
where a missing barrier shows as a wrong result (checked here and by tests/test_triton_bottleneck.py),
not as a racecheck report.
"""
import sys
import zlib

import torch

import mesrgan  # noqa: F401  (loads the op)
from mesrgan.ops import depthwise_conv3x3, depthwise_conv3x3_reference

TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}
SHAPES = [(2, 5, 37, 70), (1, 16, 33, 9), (3, 8, 1, 3)]
ACTIVATIONS = ("none", "leaky_relu", "relu6")


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def case(device, shape, dtype, layout, act, deterministic, offset=False):
    g = torch.Generator().manual_seed(zlib.crc32(repr((shape, str(dtype), layout, act)).encode()))
    N, C, H, W = shape
    base = torch.randn(N, C, H, W + (1 if offset else 0), generator=g)
    x32 = base[..., 1:] if offset else base
    w32 = torch.randn(C, 1, 3, 3, generator=g) / 3
    b32 = torch.randn(C, generator=g) / 10
    dy32 = torch.randn(N, C, H, W, generator=g)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    x = base.to(device, dtype)
    x = x[..., 1:] if offset else x
    if layout == "channels_last":
        x = x.contiguous(memory_format=fmt)
    x.requires_grad_(True)
    w = w32.to(device, dtype).requires_grad_(True)
    b = b32.to(device, dtype).requires_grad_(True)
    dy = dy32.to(device, dtype).contiguous(memory_format=fmt)

    torch.use_deterministic_algorithms(deterministic)
    try:
        y = depthwise_conv3x3(x, w, b, activation=act)
        outs = (y,) + torch.autograd.grad(y, (x, w, b), dy)
    finally:
        torch.use_deterministic_algorithms(False)
    if device == "cuda":
        torch.cuda.synchronize()

    # Reference: float32 on the CPU from the same (dtype-rounded) values.
    xr, wr, br = (t.detach().float().cpu().requires_grad_(True) for t in (x, w, b))
    yr = depthwise_conv3x3_reference(xr, wr, br, activation=act)
    refs = (yr,) + torch.autograd.grad(yr, (xr, wr, br), dy.float().cpu())
    errs = [rel(o.cpu(), r) for o, r in zip(outs, refs)] if N else [0.0]
    tol = TOL[dtype] * 4
    ok = all(e <= tol for e in errs)
    print(f"{'ok  ' if ok else 'FAIL'} {shape} {str(dtype):15} {layout:13} {act:10} det={int(deterministic)} "
          f"offset={int(offset)} rel_err max {max(errs):.2e} (tol {tol:.0e})", flush=True)
    return ok


TRITON_SHAPES = [  # (n, c_in, h, w, hidden, c_out, skip, bias)
    (2, 5, 19, 37, 10, 5, True, True),
    (1, 40, 9, 17, 80, 24, False, False),
    (0, 4, 5, 5, 8, 4, True, True),
]


def triton_case(shape, dtype, device):
    from mesrgan.ops import bottleneck_block_reference
    from mesrgan.ops.triton_bottleneck import bottleneck_block_triton
    n, c_in, h, w, hidden, c_out, skip, bias = shape
    g = torch.Generator().manual_seed(zlib.crc32(repr(shape).encode()))
    shapes = [(n, c_in, h, w), (hidden, c_in, 1, 1), (hidden,), (hidden, 1, 3, 3), (hidden,), (c_out, hidden, 1, 1),
              (c_out,)]
    scales = [1, c_in ** -0.5, 1, 1 / 3, 1, hidden ** -0.5, 1]
    ref = [torch.randn(*s, generator=g) * k for s, k in zip(shapes, scales)]
    if not bias:
        ref[2] = ref[4] = ref[6] = None
    ours = [None if t is None else t.to(device, dtype).requires_grad_(True) for t in ref]
    ref = [None if t is None else t.to(dtype).float().requires_grad_(True) for t in ref]  # same rounded values
    y = bottleneck_block_triton(*ours, skip=skip)
    dy = torch.randn(y.shape, generator=g)
    y.backward(dy.to(device, dtype))
    if device == "cuda":
        torch.cuda.synchronize()
    yr = bottleneck_block_reference(*ref, skip=skip)
    yr.backward(dy.to(dtype).float())
    pairs = [(y, yr)] + [(o.grad, r.grad) for o, r in zip(ours, ref) if o is not None]
    errs = [rel(o.cpu(), r) for o, r in pairs] if n else [0.0]
    tol = TOL[dtype] * 4 if dtype != torch.float32 else 3e-3  # float32: TF32 on CUDA (cuDNN's flag, on by default)
    ok = all(e <= tol for e in errs)
    print(f"{'ok  ' if ok else 'FAIL'} triton {shape} {str(dtype):15} rel_err max {max(errs):.2e} (tol {tol:.0e})",
          flush=True)
    return ok


def main_triton(device):
    if device == "cuda" and not torch.cuda.is_available():
        print("sanitize_case: no CUDA device", file=sys.stderr)
        return 2
    ok = True
    for dtype in (torch.float32, torch.bfloat16):
        for shape in TRITON_SHAPES:
            ok &= triton_case(shape, dtype, device)
    print("sanitize_case:", "all results match" if ok else "MISMATCH", flush=True)
    return 0 if ok else 1


def main(argv):
    if argv and argv[0] in ("triton", "triton-cpu"):  # triton-cpu: under TRITON_INTERPRET=1, to try it
        return main_triton("cpu" if argv[0] == "triton-cpu" else "cuda")
    device = argv[0] if argv else "cuda"  # "cpu" only to try the script without a GPU
    if device == "cuda" and not torch.cuda.is_available():
        print("sanitize_case: no CUDA device", file=sys.stderr)
        return 2
    ok = True
    dtypes = (torch.float32, torch.float16, torch.bfloat16) if device == "cuda" else (torch.float32,)
    for dtype in dtypes:
        for layout in ("nchw", "channels_last"):
            for i, shape in enumerate(SHAPES):
                act = ACTIVATIONS[i % len(ACTIVATIONS)]
                ok &= case(device, shape, dtype, layout, act, deterministic=(i == 1))
            ok &= case(device, (2, 6, 11, 13), dtype, layout, "none", deterministic=False, offset=True)
            ok &= case(device, (0, 4, 5, 5), dtype, layout, "leaky_relu", deterministic=False)
    print("sanitize_case:", "all results match" if ok else "MISMATCH", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
