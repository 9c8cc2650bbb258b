"""Model level: the paper's Table I (forward time per batch) and a training step, torch vs mesrgan.

Ids read ``model-<pass>-<device>-float32-nchw-<model>-<impl>-b<batch>-lr<size>-cudnn-<tune>``:

* pass: ``fwd`` = forward under ``torch.no_grad()`` in eval mode, as the paper's Table I measured it
  (fp32, random LR input); ``train`` = zero_grad + forward + L1 loss against a random HR target +
  backward + ``Adam.step()``;
* model: ``srgan``, ``esrgan-paper`` and ``mesrgan-paper`` are the generators the MESRGAN authors ran
  (``mesrgan.models.build_generator``); ``mesrgan-paper-out`` is ``mesrgan-paper`` with
  ``hidden_width="output"`` (hidden width t × output channels instead of t × input);
  ``esrgan``, ``mesrgan``, ``mesrgan-out`` (the 23-RRDB skeleton) can be added with --bench-models;
* impl: ``torch`` = depthwise convs through ``F.conv2d(groups=C)`` (the paper's setting),
  ``mesrgan`` = through our ops (on CPU: the fused bottleneck block); ``onnxruntime`` = the same
  network and weights exported to ONNX and run by onnxruntime on the CPU (forward only, when
  onnxruntime is installed). SRGAN and ESRGAN have no depthwise conv: they run once, as ``torch``;
  ``mesrgan+compile`` / ``torch+compile`` (training step on CUDA only, esrgan-paper and mesrgan-paper,
  cuDNN autotuner on): the same step with the network wrapped in ``torch.compile(mode="reduce-overhead")``
  (CUDA graphs), as ``python -m mesrgan.train --compile`` runs it. CUDA only: inductor compiles the paper
  networks for many minutes on a small CPU. NOT YET RUN ON A GPU;
* lr: the LR input's side: 128 (the paper's Table I), 32 (the training crop: HR 128 / 4);
* cudnn: ``torch.backends.cudnn.benchmark`` (the autotuner) ``off`` / ``on`` on CUDA, ``na`` on CPU.

Sizes: CUDA and ``--bench-full`` run the paper's batches 1, 2, 4, 8, 16 at LR 128 and LR 32, and the
training step at batch 16 (the paper's), LR 32. The CPU default keeps the suite under 10 minutes on
2 cores: batches 1, 4, 16 at LR 32, batch 1 at LR 128, the training step at batches 4 and 16, at most 3 rounds
after one untimed call.

Correctness, once per model and device before any timing: the ``mesrgan`` model's output and
parameter gradients against the ``torch`` model's with the same weights (fp32, TF32 off) on a small
odd-sized batch; the op suite checks the op itself on every shape it times.
"""
import functools

import pytest
import torch

from benchmarks._common import dtype_name, env_info, run_benchmark
from benchmarks._networks import PRESETS, SCALE, build as _build, check_model as _check_model, \
    onnx_session as _onnx_session

BATCHES = (1, 2, 4, 8, 16)
# The same network exported to ONNX (through the plain-PyTorch decompositions of our ops) and run by
# onnxruntime's CPU provider with as many threads as torch: the deployed peer of our forward.
ONNX_IMPL = {"cpu": ("onnxruntime",), "cuda": ()}
CPU_DEFAULT_BATCHES = (1, 4, 16)
CPU_DEFAULT_MAX_ROUNDS = 3
# Training-step rows with torch.compile: the networks whose training time the issue compares.
COMPILED_TRAIN_MODELS = ("esrgan-paper", "mesrgan-paper")
COMPILED = "+compile"


def _sizes(settings, device):
    """[(pass, lr, batch)] to run on ``device``."""
    if settings.is_full(device):
        fwd = [(lr, b) for lr in (128, 32) for b in BATCHES]
        train = [(32, 16)]
    else:
        fwd = [(128, 1)] + [(32, b) for b in CPU_DEFAULT_BATCHES]
        train = [(32, 4), (32, 16)]
    return [("fwd", lr, b) for lr, b in fwd] + [("train", lr, b) for lr, b in train]


def _cases(settings):
    unknown = [m for m in settings.models if m not in PRESETS]
    if unknown:
        raise pytest.UsageError(f"--bench-models: unknown preset(s) {unknown}; known: {', '.join(PRESETS)}")
    cases = []
    # Model and impl outermost: each network is built once for all its sizes.
    for device in settings.devices:
        for key in settings.models:
            for impl in (("torch", "mesrgan") if PRESETS[key][2] else ("torch",)) + ONNX_IMPL[device]:
                for pass_, lr, batch in _sizes(settings, device):
                    if impl == "onnxruntime" and pass_ != "fwd":
                        continue
                    for tune in (("off", "on") if device == "cuda" else ("na",)):
                        cases.append((pass_, device, key, impl, lr, batch, tune))
            cases += _compiled_cases(settings, device, key)
    return cases


def _compiled_cases(settings, device, key):
    """The training step of ``key`` under torch.compile(mode="reduce-overhead"), on CUDA only."""
    if device != "cuda" or key not in COMPILED_TRAIN_MODELS:
        return []
    impl = ("mesrgan" if PRESETS[key][2] else "torch") + COMPILED
    return [("train", device, key, impl, lr, batch, "on")
            for pass_, lr, batch in _sizes(settings, device) if pass_ == "train"]


def _case_id(case):
    pass_, device, key, impl, lr, batch, tune = case
    return f"model-{pass_}-{device}-float32-nchw-{key}-{impl}-b{batch}-lr{lr}-cudnn-{tune}"


def pytest_generate_tests(metafunc):
    if "model_case" in metafunc.fixturenames:
        cases = _cases(metafunc.config._mesrgan_bench_settings)
        metafunc.parametrize("model_case", cases, ids=[_case_id(c) for c in cases])


@functools.lru_cache(maxsize=2)
def _eval_model(key, impl, device):
    return _build(key, impl, device)


@functools.lru_cache(maxsize=None)
def _model_info(key):
    """Parameters and MACs per LR image, counted on the meta device (None where counting fails)."""
    try:
        from mesrgan.models import count_macs
        with torch.device("meta"):
            model = _build(key, "torch", "meta")
        params = sum(p.numel() for p in model.parameters())
        macs = {lr: count_macs(model, (1, 3, lr, lr)) for lr in (32, 128)}
        return params, {lr: (m["total"], m.get("depthwise", 0)) for lr, m in macs.items()}
    except Exception:  # informative only; the benchmark does not depend on it
        return None, {}


def test_model(benchmark, bench_settings, model_case):
    pass_, device, key, impl, lr, batch, tune = model_case
    benchmark.group = f"model {pass_} {device} lr{lr} b{batch} cudnn-{tune}"
    try:
        import mesrgan.models  # noqa: F401
    except ImportError as e:
        pytest.skip(f"mesrgan.models is not importable: {e}")

    err = _check_model(key, device)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(batch, 3, lr, lr, generator=g).to(device)
    max_rounds = None if bench_settings.is_full(device) else CPU_DEFAULT_MAX_ROUNDS
    tune_flag = {"on": True, "off": False}.get(tune)
    old_tune = torch.backends.cudnn.benchmark
    try:
        if tune_flag is not None:
            torch.backends.cudnn.benchmark = tune_flag
        if impl == "onnxruntime":
            run = _onnx_session(key)
            x_np = x.numpy()

            def step():
                run(x_np)
        elif pass_ == "fwd":
            model = _eval_model(key, impl, device)

            def step():
                with torch.no_grad():
                    model(x)
        else:
            compiled = impl.endswith(COMPILED)
            model = _build(key, impl.removesuffix(COMPILED), device, train=True)
            opt = torch.optim.Adam(model.parameters(), lr=1e-4)
            hr = torch.rand(batch, 3, lr * SCALE, lr * SCALE, generator=g).to(device)
            net = torch.compile(model, mode="reduce-overhead") if compiled else model

            def step():
                if compiled:  # a new step: CUDA graphs may reuse the last one's outputs
                    torch.compiler.cudagraph_mark_step_begin()
                opt.zero_grad(set_to_none=True)
                torch.nn.functional.l1_loss(net(x), hr).backward()
                opt.step()

        # run_benchmark's own first (untimed) call warms up; CUDA gets two more for the autotuner, and
        # a compiled step one more (it compiles, then records its CUDA graphs, then replays them).
        warmup = 0 if max_rounds else (3 if impl.endswith(COMPILED) else 2)
        run_benchmark(benchmark, step, device=device, settings=bench_settings, warmup=warmup,
                      max_rounds=max_rounds)
    finally:
        torch.backends.cudnn.benchmark = old_tune
        if device == "cuda":
            torch.cuda.empty_cache()

    params, macs = _model_info(key)
    name, overrides, has_dw = PRESETS[key]
    benchmark.extra_info.update(env_info(device))
    benchmark.extra_info.update(
        kind="model", pass_=pass_, model=key, preset=name, overrides={k: str(v) for k, v in overrides.items()},
        has_depthwise=has_dw, impl=impl, dtype=dtype_name(torch.float32), layout="nchw", batch=batch, lr=lr,
        hr=lr * SCALE, cudnn_benchmark=tune, params=params,
        gmac_per_image=macs[lr][0] / 1e9 if lr in macs else None,
        depthwise_gmac_per_image=macs[lr][1] / 1e9 if lr in macs else None,
        input=f"random LR {batch}x3x{lr}x{lr} fp32" + (", no_grad, eval" if pass_ == "fwd" else
                                                         ", train mode, L1 to random HR, Adam lr 1e-4"),
        check_rel_err=err)
