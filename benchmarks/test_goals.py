"""The whole-network speed goals on CPU, each ratio timed side by side.

Ids read ``goal-<pass>-cpu-<precision>-lr<lr>-b<batch>``; pass, lr and batch mean what they mean in
test_models.py (``fwd``: forward under no_grad in eval mode; ``train``: zero_grad + forward + L1 +
backward + Adam step), with NCHW inputs as a user passes them. Precision ``fp32``, or ``bf16``: the
same float32 model and input under ``torch.autocast("cpu", torch.bfloat16)`` (float32 master weights
for training), every contender alike, as users of recent CPUs run these networks. onnxruntime runs
its float32 graph in both (its CPU provider has no bfloat16 convolutions); OpenVINO runs the same
ONNX file with its inference precision set to f32 or bf16.

Why a second suite: test_models.py times each network on its own, minutes after the one it is
compared with. On a shared machine a slow spell then lands in one figure and not the other, and a
ratio of two such figures was seen to move by up to 1.7× between runs of the same code. Here the
networks one goal compares are timed in alternating blocks: ROUNDS rounds, each running every
contender CALLS times in turn. The first call of a block re-warms the caches and the allocator after
the other networks ran, so it is not counted; a contender's figure is the median of the rest, over
all rounds. A slow spell then reaches every contender alike.

The goals (ratios of those medians; none is asserted, RESULTS.md reports how far each one is):

* forward, LR 32 batch 16 and LR 128 batch 1: MESRGAN-paper ≤ 1.0 × ESRGAN-paper, lite (MESRGAN-paper
  with ``hidden_width="output"``) ≤ 0.55 ×, and our MESRGAN-paper forward at least as fast as
  onnxruntime's on the same network (onnxruntime ÷ ours ≥ 1);
* training step, LR 32 batch 4 and 16: MESRGAN-paper ≤ 1.1 × ESRGAN-paper, lite ≤ 0.55 ×, and
  MESRGAN-paper with our kernels ≥ 1.5 × faster than with ``impl="torch"``.

The pytest-benchmark figure of a case is the wall time of its whole measurement; the numbers that
matter are in ``extra_info`` (``contenders_ms``, ``goals``), which ``python -m benchmarks.report``
turns into the goals table. CPU only: the goals are CPU goals.
"""
import importlib
import statistics
import time

import pytest
import torch

from benchmarks._common import env_info
from benchmarks._networks import SCALE, build, check_model, onnx_session, openvino_session

ROUNDS = 4
CALLS = 3  # per block; the first is the block's warm-up
SIZES = [("fwd", 32, 16), ("fwd", 128, 1), ("train", 32, 4), ("train", 32, 16)]
PRECISIONS = ("fp32", "bf16")
CASES = [(p, prec, lr, b) for prec in PRECISIONS for p, lr, b in SIZES]
ESRGAN, MESRGAN, LITE = "esrgan-paper", "mesrgan-paper", "mesrgan-paper-out"
# pass -> [(contender label, model key, impl)]; the last is the peer our MESRGAN-paper is held against.
CONTENDERS = {
    "fwd": [(ESRGAN, ESRGAN, "torch"), (MESRGAN, MESRGAN, "auto"), ("lite", LITE, "auto"),
            ("onnxruntime", MESRGAN, "onnxruntime"), ("openvino", MESRGAN, "openvino")],
    "train": [(ESRGAN, ESRGAN, "torch"), (MESRGAN, MESRGAN, "auto"), ("lite", LITE, "auto"),
              ("impl=torch", MESRGAN, "torch")],
}
# pass -> [(goal, numerator label, denominator label, comparison, target)]
GOALS = {
    "fwd": [("mesrgan-paper ÷ esrgan-paper", MESRGAN, ESRGAN, "<=", 1.0),
            ("lite ÷ esrgan-paper", "lite", ESRGAN, "<=", 0.55),
            ("onnxruntime ÷ mesrgan-paper", "onnxruntime", MESRGAN, ">=", 1.0),
            ("openvino ÷ mesrgan-paper", "openvino", MESRGAN, ">=", 1.0)],
    "train": [("mesrgan-paper ÷ esrgan-paper", MESRGAN, ESRGAN, "<=", 1.1),
              ("lite ÷ esrgan-paper", "lite", ESRGAN, "<=", 0.55),
              ("impl=torch ÷ mesrgan-paper", "impl=torch", MESRGAN, ">=", 1.5)],
}


def _step(pass_, key, impl, lr, batch, precision="fp32"):
    """One call of a contender, as a user makes it (``impl="auto"``: what a user gets by default)."""
    g = torch.Generator().manual_seed(2)
    x = torch.rand(batch, 3, lr, lr, generator=g)
    if impl == "onnxruntime":
        run, x_np = onnx_session(key), x.numpy()
        return lambda: run(x_np)
    if impl == "openvino":
        run, x_np = openvino_session(key, precision), x.numpy()
        return lambda: run(x_np)
    model = build(key, impl, "cpu", train=pass_ == "train")
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")
    if pass_ == "fwd":
        def forward():
            with torch.no_grad(), autocast:
                model(x)
        return forward
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    hr = torch.rand(batch, 3, lr * SCALE, lr * SCALE, generator=g)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.l1_loss(model(x), hr)
        loss.backward()
        opt.step()
    return train_step


def time_side_by_side(steps, rounds=ROUNDS, calls=CALLS, clock=time.perf_counter):
    """{label: median seconds} of ``steps`` ({label: fn}) run in alternating blocks of ``calls``
    calls, ``rounds`` times; the first call of each block is not counted."""
    times = {label: [] for label in steps}
    for _ in range(rounds):
        for label, fn in steps.items():
            for k in range(calls):
                t0 = clock()
                fn()
                if k:
                    times[label].append(clock() - t0)
    return {label: statistics.median(ts) for label, ts in times.items()}


def goal_rows(pass_, medians):
    """The goals of ``pass_`` that ``medians`` ({label: seconds}) can answer, with their ratios."""
    rows = []
    for name, num, den, cmp, target in GOALS[pass_]:
        if num in medians and den in medians:
            r = medians[num] / medians[den]
            rows.append({"goal": name, "ratio": r, "cmp": cmp, "target": target,
                         "met": r <= target if cmp == "<=" else r >= target})
    return rows


@pytest.mark.parametrize("case", CASES, ids=[f"goal-{p}-cpu-{prec}-lr{lr}-b{b}" for p, prec, lr, b in CASES])
def test_goal(benchmark, bench_settings, case):
    if "cpu" not in bench_settings.devices:
        pytest.skip("the goals are CPU goals (--bench-device cpu or all runs them)")
    pass_, precision, lr, batch = case
    benchmark.group = "goals cpu"
    for key in (MESRGAN, LITE):
        check_model(key, "cpu")  # our impl equals PyTorch's on these weights before anything is timed
    steps = {}
    for label, key, impl in CONTENDERS[pass_]:
        if impl in ("onnxruntime", "openvino"):
            try:
                importlib.import_module(impl)
            except ImportError:
                continue  # the goal against it is left out of the table
        steps[label] = _step(pass_, key, impl, lr, batch, precision)
    for fn in steps.values():
        fn()  # one-time costs (weight packing, the ONNX session's first run) stay out

    medians = {}
    benchmark.pedantic(lambda: medians.update(time_side_by_side(steps)), rounds=1, iterations=1)
    benchmark.extra_info.update(env_info("cpu"))
    benchmark.extra_info.update(
        kind="goal", pass_=pass_, precision=precision, lr=lr, batch=batch, rounds=ROUNDS, calls=CALLS,
        contenders_ms={label: s * 1e3 for label, s in medians.items()}, goals=goal_rows(pass_, medians),
        input=f"random LR {batch}x3x{lr}x{lr} fp32, NCHW" + (", no_grad, eval" if pass_ == "fwd" else
                                                             ", train mode, L1 to random HR, Adam lr 1e-4")
        + (", torch.autocast cpu bfloat16" if precision == "bf16" else ""))
