"""The Triton fused bottleneck block (``impl="triton"``) in whole networks on CUDA, beside today's path.

Ids read ``triton-<pass>-cuda-<precision>-lr<lr>-b<batch>-<contender>``; pass, lr and batch as in
test_models.py (``fwd``: forward under no_grad in eval mode; ``train``: zero_grad + forward + L1 +
backward + Adam step). Precision ``fp32`` (TF32 where PyTorch allows it by default, for the
convolutions and our op alike: both follow ``torch.backends.cudnn.allow_tf32``) or ``bf16`` (the float32
model under ``torch.autocast("cuda", torch.bfloat16)``). Contenders: ESRGAN-paper, and MESRGAN-paper
and lite (MESRGAN-paper with ``hidden_width="output"``) each with ``impl="auto"`` (cuDNN 1x1
convolutions around our CUDA depthwise op) and ``impl="triton"``.

The sizes of the speed goals: forward at LR 128 batch 1 and 16, the training step at LR 32 batch 16.
Before any timing, once per network: the ``impl="triton"`` network's output and parameter gradients
against ``impl="torch"`` on the same weights (float32, TF32 off), and two untimed calls per case,
which compile the Triton kernels (and run cuDNN's autotuner where it is on). CUDA only: on a
machine without a GPU, or without Triton, every case skips. ``python -m benchmarks.report`` does
not tabulate these rows yet (``extra_info.kind`` is ``"triton"``); the pytest-benchmark table in the
log has them.
"""
import functools

import pytest
import torch

from benchmarks._common import check_close, env_info, exact_fp32, run_benchmark
from benchmarks._networks import MODEL_TOL, SCALE, build

SIZES = [("fwd", 128, 1), ("fwd", 128, 16), ("train", 32, 16)]
PRECISIONS = ("fp32", "bf16")
# contender label -> (model key, impl)
CONTENDERS = {
    "esrgan-paper": ("esrgan-paper", "torch"),
    "mesrgan-paper-auto": ("mesrgan-paper", "auto"),
    "mesrgan-paper-triton": ("mesrgan-paper", "triton"),
    "lite-auto": ("mesrgan-paper-out", "auto"),
    "lite-triton": ("mesrgan-paper-out", "triton"),
}
CASES = [(p, prec, lr, b, c) for prec in PRECISIONS for p, lr, b in SIZES for c in CONTENDERS]


def _case_id(case):
    pass_, precision, lr, batch, contender = case
    return f"triton-{pass_}-cuda-{precision}-lr{lr}-b{batch}-{contender}"


def _skip_reason(settings):
    if "cuda" not in settings.devices or not torch.cuda.is_available():
        return "the Triton block's benchmarks are CUDA only"
    from mesrgan.ops import triton_bottleneck as tb
    if not tb.triton_available():
        return "triton is not installed"
    return None


@functools.lru_cache(maxsize=None)
def _check(key):
    """impl="triton" vs impl="torch" on the same weights, float32 without TF32: output and gradients."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 20, generator=g).cuda()
    hr = torch.rand(2, 3, 24 * SCALE, 20 * SCALE, generator=g).cuda()
    outs, grads = {}, {}
    with exact_fp32():
        for impl in ("torch", "triton"):
            model = build(key, impl, "cuda", train=True)
            torch.nn.functional.l1_loss(model(x), hr).backward()
            grads[impl] = torch.cat([p.grad.flatten() for p in model.parameters()])
            model.eval()
            with torch.no_grad():
                outs[impl] = model(x)
    err = check_close(f"{key} output, triton vs torch impl", outs["triton"], outs["torch"], MODEL_TOL)
    return max(err, check_close(f"{key} gradients, triton vs torch impl", grads["triton"], grads["torch"], MODEL_TOL))


def _step(pass_, key, impl, lr, batch, precision):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(batch, 3, lr, lr, generator=g).cuda()
    model = build(key, impl, "cuda", train=pass_ == "train")

    def autocast():
        return torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16")

    if pass_ == "fwd":
        def forward():
            with torch.no_grad(), autocast():
                model(x)
        return forward
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    hr = torch.rand(batch, 3, lr * SCALE, lr * SCALE, generator=g).cuda()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = torch.nn.functional.l1_loss(model(x).float(), hr)
        loss.backward()
        opt.step()
    return train_step


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_triton_network(benchmark, bench_settings, case):
    reason = _skip_reason(bench_settings)
    if reason:
        pytest.skip(reason)
    pass_, precision, lr, batch, contender = case
    key, impl = CONTENDERS[contender]
    benchmark.group = f"triton {pass_} cuda {precision} lr{lr} b{batch}"
    err = _check(key) if impl == "triton" else None
    try:
        step = _step(pass_, key, impl, lr, batch, precision)
        # Two untimed calls first: Triton compiles its kernels for these shapes, cuDNN picks its algorithms.
        run_benchmark(benchmark, step, device="cuda", settings=bench_settings, warmup=2)
    finally:
        torch.cuda.empty_cache()
    benchmark.extra_info.update(env_info("cuda"))
    benchmark.extra_info.update(kind="triton", pass_=pass_, precision=precision, model=key, impl=impl,
                                contender=contender, lr=lr, batch=batch, hr=lr * SCALE, check_rel_err=err)
