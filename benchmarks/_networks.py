"""The networks the model-level suites time, built the same way for each: presets, the ONNX peer and
the check of our impl against PyTorch's on the same weights."""
import functools
import os
import tempfile

import pytest
import torch

from benchmarks._common import check_close, exact_fp32
from mesrgan.inference.onnx_export import export_onnx

# key -> (build_generator name, overrides, has depthwise convs)
PRESETS = {
    "srgan": ("srgan", {}, False),
    "esrgan-paper": ("esrgan-paper", {}, False),
    "mesrgan-paper": ("mesrgan-paper", {"hidden_width": "input"}, True),
    "mesrgan-paper-out": ("mesrgan-paper", {"hidden_width": "output"}, True),
    "esrgan": ("esrgan", {}, False),
    "mesrgan": ("mesrgan", {"hidden_width": "input"}, True),
    "mesrgan-out": ("mesrgan", {"hidden_width": "output"}, True),
}
SCALE = 4
MODEL_TOL = 1e-4  # ‖mesrgan − torch‖ / ‖torch‖ of a whole network's output / gradients in fp32


def build(key, impl, device, train=False):
    from mesrgan.models import build_generator
    name, overrides, has_dw = PRESETS[key]
    if has_dw:
        overrides = {**overrides, "impl": impl}
    torch.manual_seed(0)  # same weights for both impls
    model = build_generator(name, scale=SCALE, **overrides).to(device)
    return model.train(train)


@functools.lru_cache(maxsize=1)
def onnx_session(key):
    """A callable running ``key``'s network (the same weights as the torch cases) in onnxruntime."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (the bench extra has it)")
    path = _onnx_file(key)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


@functools.lru_cache(maxsize=2)
def _onnx_file(key):
    """``key``'s network exported to ONNX once (the same weights as the torch cases)."""
    model = build(key, "mesrgan" if PRESETS[key][2] else "torch", "cpu")
    path = os.path.join(tempfile.mkdtemp(prefix="mesrgan-bench-"), f"{key}.onnx")
    export_onnx(model, path)
    return path


@functools.lru_cache(maxsize=2)
def openvino_session(key, precision):
    """A callable running ``key``'s network (the same weights) in OpenVINO on the CPU, with
    ``precision`` its inference precision: ``fp32``, or ``bf16`` (OpenVINO's own default on CPUs
    with AVX512_BF16 or AMX)."""
    ov = pytest.importorskip("openvino", reason="openvino is not installed (the bench extra has it)")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
              "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"}
    compiled = core.compile_model(core.read_model(_onnx_file(key)), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


_checked = {}


def check_model(key, device):
    """mesrgan vs torch impl on the same weights: output (eval) and gradients (train mode)."""
    if (key, device) in _checked:
        return _checked[(key, device)]
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 20, generator=g).to(device)
    hr = torch.rand(2, 3, 24 * SCALE, 20 * SCALE, generator=g).to(device)
    impls = ("torch", "mesrgan") if PRESETS[key][2] else ("torch",)
    outs, grads = {}, {}
    with exact_fp32():
        for impl in impls:
            model = build(key, impl, device, train=True)
            torch.nn.functional.l1_loss(model(x), hr).backward()
            grads[impl] = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
            model.eval()
            with torch.no_grad():
                outs[impl] = model(x)
    out = outs["torch"]
    assert out.shape == (2, 3, 24 * SCALE, 20 * SCALE), f"{key}: output shape {tuple(out.shape)}"
    assert torch.isfinite(out).all(), f"{key}: non-finite output"
    err = 0.0
    if "mesrgan" in outs:
        err = check_close(f"{key} output, mesrgan vs torch impl", outs["mesrgan"], out, MODEL_TOL)
        gm = torch.cat([t.flatten() for t in grads["mesrgan"]])
        gt = torch.cat([t.flatten() for t in grads["torch"]])
        err = max(err, check_close(f"{key} parameter gradients, mesrgan vs torch impl", gm, gt, MODEL_TOL))
    _checked[(key, device)] = err
    return err
