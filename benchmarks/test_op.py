"""Op level: ``mesrgan.ops.depthwise_conv3x3`` against PyTorch's ``F.conv2d(groups=C)``.

Ids read ``op-<pass>-<device>-<dtype>-<layout>-<impl>-<N>x<C>x<H>x<W>-<activation>-<cudnn>``:

* pass: ``fwd`` (forward) or ``fwdbwd`` (forward, then the gradients of x, weight and bias);
* impl: ``torch`` = ``F.conv2d(x, w, b, padding=1, groups=C)`` then the activation (two passes when
  there is one), ``mesrgan`` = our op with the activation fused;
* cudnn: ``cudnn-off`` / ``cudnn-on`` is ``torch.backends.cudnn.benchmark`` (the autotuner) during the
  benchmark; ``cudnn-na`` for our op, which never calls cuDNN, and on CPU.

Shapes are those of the depthwise conv inside MESRGAN's bottleneck blocks: a dense block's convs take
64, 96, 128, 160, 192 channels and give 32, 32, 32, 32, 64, and the hidden width is t = 2 times the
input (the paper's code: 128 … 384 channels) or times the output (64, 128 channels). Each at the
training size (batch 16, LR 32×32) and at inference on a 128×128 LR image (batch 1); plus the shape
of the CPU speed targets, (16, 128, 64, 64), and one large tensor (16, 128, 128, 128), also with the
fused LeakyReLU 0.2 the model uses.

extra_info:
  bytes     bytes the pass must move at least: fwd reads x once and writes y once (2 tensors);
            fwdbwd adds reading dy and x and writing dx (5 tensors). Weight, bias and the
            activation's mask are not counted.
  gbps      bytes / time; on CUDA time = device time (CUDA events over back-to-back calls),
            on CPU the benchmark's median.
  copy_gbps a copy of x into another tensor of the same shape, dtype and layout, measured the same
            way in the same run (counting read + write); copy_frac = gbps / copy_gbps.
  rel_err   ‖out − ref‖ / ‖ref‖ against PyTorch's float32 result on the same values, checked once
            before timing (for fwdbwd: the worst of y, dx, dw, db); our op must pass, PyTorch's
            own error in half types is recorded only.
Every call rotates through several input sets adding up to >= 256 MiB (cold caches). The CPU default
takes at most 20 rounds per benchmark (--bench-full: as many as --benchmark-max-time allows).
"""
import functools

import pytest
import torch

from benchmarks._common import (REL_TOL, check_close, device_time, dtype_name, env_info, exact_fp32,
                                input_sets, rel_error, run_benchmark, shape_name)

HIDDEN_INPUT = {2 * c: f"2x{c} (t x input)" for c in (64, 96, 128, 160, 192)}
HIDDEN_OUTPUT = {2 * c: f"2x{c} (t x output)" for c in (32, 64)}
CHANNELS = sorted(set(HIDDEN_INPUT) | set(HIDDEN_OUTPUT))
BIG = (16, 128, 128, 128)
TARGET = (16, 128, 64, 64)  # the shape of the CPU speed targets (issue 2)
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}
DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.bfloat16, torch.float16)}
CPU_DEFAULT_MAX_ROUNDS = 20  # keeps the CPU default suite under 10 minutes on 2 cores


def _role(shape):
    if shape == BIG:
        return "large tensor"
    if shape == TARGET:
        return "speed-target shape"
    c = shape[1]
    where = "train LR 32x32, batch 16" if shape[0] == 16 else "inference LR 128x128, batch 1"
    widths = " / ".join(d[c] for d in (HIDDEN_INPUT, HIDDEN_OUTPUT) if c in d)
    return f"MESRGAN hidden {widths}, {where}"


def _shapes():
    shapes = [(16, c, 32, 32) for c in CHANNELS] + [(1, c, 128, 128) for c in CHANNELS]
    return [(s, "none") for s in shapes] + [(TARGET, "none"), (BIG, "none"), (BIG, "leaky_relu")]


def _cases(settings):
    cases = []
    for device in settings.devices:
        for shape, act in _shapes():
            for dtype in DTYPES[device]:
                for pass_ in ("fwd", "fwdbwd"):
                    for layout in LAYOUTS:
                        for impl in ("torch", "mesrgan"):
                            tunes = ("off", "on") if device == "cuda" and impl == "torch" else ("na",)
                            for tune in tunes:
                                cases.append((pass_, device, dtype, layout, impl, shape, act, tune))
    return cases


def _case_id(case):
    pass_, device, dtype, layout, impl, shape, act, tune = case
    return f"op-{pass_}-{device}-{dtype_name(dtype)}-{layout}-{impl}-{shape_name(shape)}-{act}-cudnn-{tune}"


def pytest_generate_tests(metafunc):
    if "op_case" in metafunc.fixturenames:
        cases = _cases(metafunc.config._mesrgan_bench_settings)
        metafunc.parametrize("op_case", cases, ids=[_case_id(c) for c in cases])


def _make_inputs(shape, dtype, device, layout):
    """x, weight, bias, dy; values drawn in float32 on ``device`` from a fixed seed, so every layout
    and impl of a shape gets the same values."""
    g = torch.Generator(device=device).manual_seed(0)
    C = shape[1]
    x = torch.randn(shape, generator=g, device=device)
    w = torch.randn(C, 1, 3, 3, generator=g, device=device) / 3
    b = torch.randn(C, generator=g, device=device) / 10
    dy = torch.randn(shape, generator=g, device=device)
    fmt = LAYOUTS[layout]
    return (x.to(dtype=dtype, memory_format=fmt), w.to(dtype=dtype), b.to(dtype=dtype),
            dy.to(dtype=dtype, memory_format=fmt))


@functools.lru_cache(maxsize=1)
def _reference(shape, dtype, device, act, backward):
    """PyTorch's float32 results (TF32 off) on set 0's values as rounded to ``dtype``.

    Cached: the layouts and impls of one shape run one after the other and share it. float32, not
    float64: PyTorch's float64 depthwise backward on CPU takes tens of seconds for the large tensor,
    and a float32 reference is far more accurate than the tolerances of the half types.
    """
    from mesrgan.ops import depthwise_conv3x3_reference
    x, w, b, dy = (t.float().requires_grad_(backward) if i < 3 else t.float()
                   for i, t in enumerate(_make_inputs(shape, dtype, device, "nchw")))
    with exact_fp32(), torch.enable_grad():
        y = depthwise_conv3x3_reference(x, w, b, activation=act)
        if not backward:
            return (y.detach(),)
        return (y.detach(),) + torch.autograd.grad(y, (x, w, b), dy)


_copy_cache = {}


def _copy_gbps(shape, dtype, device, layout, n_sets):
    key = (shape, dtype, device, layout)
    if key not in _copy_cache:
        srcs = [torch.randn(shape, device=device).to(dtype=dtype, memory_format=LAYOUTS[layout])
                for _ in range(n_sets)]
        dst = torch.empty_like(srcs[0])
        t = device_time([functools.partial(dst.copy_, s) for s in srcs], device)
        _copy_cache[key] = 2 * dst.numel() * dst.element_size() / t / 1e9
    return _copy_cache[key]


def test_op(benchmark, bench_settings, op_case):
    from mesrgan.ops import depthwise_conv3x3, depthwise_conv3x3_reference

    pass_, device, dtype, layout, impl, shape, act, tune = op_case
    backward = pass_ == "fwdbwd"
    fn = depthwise_conv3x3 if impl == "mesrgan" else depthwise_conv3x3_reference
    benchmark.group = f"op {pass_} {device} {dtype_name(dtype)} {layout} {shape_name(shape)} {act}"

    numel = torch.Size(shape).numel()
    itemsize = torch.empty((), dtype=dtype).element_size()
    n_sets = input_sets((5 if backward else 2) * numel * itemsize)
    # The extra sets are copies: what keeps the caches cold is other addresses, not other values.
    first = _make_inputs(shape, dtype, device, layout)
    sets = [first] + [tuple(t.clone() for t in first) for _ in range(n_sets - 1)]
    if backward:
        for x, w, b, _ in sets:
            for t in (x, w, b):
                t.requires_grad_(True)

    def call(x, w, b, dy):
        y = fn(x, w, b, activation=act)
        if backward:
            return (y,) + torch.autograd.grad(y, (x, w, b), dy)
        return (y,)

    # Correctness once, outside the timed region: a wrong-but-fast kernel must not pass.
    with torch.no_grad() if not backward else torch.enable_grad():
        outs = call(*sets[0])
    refs = _reference(shape, dtype, device, act, backward)
    tol = REL_TOL[dtype] * (4 if backward else 1)
    if backward and act != "none":
        # Where the pre-activation is within rounding of 0 (a few of 33 M elements), our float32 and
        # PyTorch's take opposite sides of the kink: that element's gradient differs by
        # (1 - slope) * dy, moving the norm-relative error of dx by ~1e-4 each. A wrong mask
        # anywhere else gives errors of order 1, far above this bound.
        tol = max(tol, 2e-3)
    if impl == "mesrgan":
        assert outs[0].shape == shape and outs[0].dtype == dtype
        if layout == "channels_last":
            assert outs[0].is_contiguous(memory_format=torch.channels_last), "channels_last in, channels_last out"
        err = max(check_close(f"{impl} {n}", o, r, tol) for n, o, r in zip(("y", "dx", "dw", "db"), outs, refs))
    else:  # PyTorch's own accuracy is recorded, not judged
        err = max(rel_error(o, r) for o, r in zip(outs, refs))
    del outs

    calls = [functools.partial(call, *s) for s in sets]
    state = {"i": 0}

    def rotating():
        state["i"] += 1
        return calls[state["i"] % len(calls)]()

    ctx = torch.no_grad() if not backward else torch.enable_grad()
    tune_flag = {"on": True, "off": False}.get(tune)
    old_tune = torch.backends.cudnn.benchmark
    try:
        if tune_flag is not None:
            torch.backends.cudnn.benchmark = tune_flag
        with ctx:
            max_rounds = None if bench_settings.is_full(device) else CPU_DEFAULT_MAX_ROUNDS
            median = run_benchmark(benchmark, rotating, device=device, settings=bench_settings, warmup=2,
                                   max_rounds=max_rounds)
            t = device_time(calls, device) if device == "cuda" else median
    finally:
        torch.backends.cudnn.benchmark = old_tune

    nbytes = (5 if backward else 2) * numel * itemsize
    gbps = nbytes / t / 1e9
    copy_gbps = _copy_gbps(shape, dtype, device, layout, n_sets)
    benchmark.extra_info.update(env_info(device))
    benchmark.extra_info.update(
        kind="op", pass_=pass_, dtype=dtype_name(dtype), layout=layout, impl=impl, shape=list(shape),
        activation=act, cudnn_benchmark=tune, role=_role(shape), bytes=nbytes,
        bytes_counted="fwd: x read + y written; fwdbwd: + dy read, x read, dx written",
        time_s=t, time_source="cuda events" if device == "cuda" else "benchmark median",
        gbps=gbps, copy_gbps=copy_gbps, copy_frac=gbps / copy_gbps, input_sets=n_sets,
        rel_err=err, rel_tol=tol)
