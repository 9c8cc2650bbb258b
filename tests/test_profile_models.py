"""benchmarks/profile_models.py: each op lands in its kind, the dense stack's included."""
import torch

from benchmarks import profile_models


def _tiny(impl):
    from mesrgan.models import build_generator
    torch.manual_seed(0)
    return build_generator("mesrgan-paper", scale=4, num_blocks=1, features=8, growth=4, impl=impl)


def test_classify_by_name_and_weight_shape():
    c = profile_models.classify
    assert c("mesrgan::bottleneck_block", []) == "fused block"
    assert c("mesrgan::depthwise_conv3x3", []) == "depthwise"
    assert c("aten::conv2d", [[1, 8, 5, 5], [16, 8, 1, 1]]) == "1x1 conv"
    assert c("aten::conv2d", [[1, 8, 5, 5], [8, 8, 3, 3]]) == "3x3 conv"
    assert c("aten::conv2d", [[1, 8, 5, 5], [8, 1, 3, 3]]) == "depthwise"
    assert c("aten::convolution_backward", [[1, 8, 5, 5], [1, 8, 5, 5], [3, 8, 9, 9]]) == "other"
    assert c("aten::leaky_relu", []) == "activation"
    assert c("aten::cat", []) == "concat"
    assert c("aten::pixel_shuffle", []) == "other"


def _kinds(model, train):
    x = torch.rand(1, 3, 8, 8)
    step = profile_models.train_step(model, x, torch.rand(1, 3, 32, 32)) if train else \
        profile_models.forward_step(model, x)
    step()
    by_kind, wall = profile_models.profile_step(step, calls=1)
    assert wall > 0 and all(ms >= 0 for ms in by_kind.values())
    return by_kind


def test_fused_network_counts_its_dense_stack_as_fused_blocks_not_other():
    for train in (False, True):
        by_kind = _kinds(_tiny("auto"), train)
        assert by_kind.get("fused block", 0) > 0 and "concat" not in by_kind, (train, by_kind)
        assert by_kind.get("1x1 conv", 0) == 0 and "depthwise" not in by_kind


def test_unfused_network_counts_convs_depthwise_and_concat():
    by_kind = _kinds(_tiny("torch"), train=True)
    for kind in ("1x1 conv", "depthwise", "concat", "activation", "other"):
        assert by_kind.get(kind, 0) > 0, (kind, by_kind)
    assert "fused block" not in by_kind


def test_bf16_rows_run_under_autocast_and_name_their_precision():
    model = _tiny("auto")
    x = torch.rand(1, 3, 8, 8)
    seen = []
    orig = model.forward

    def spy(inp):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return orig(inp)
    model.forward = spy
    profile_models.forward_step(model, x, "bf16")()
    profile_models.train_step(model, x, torch.rand(1, 3, 32, 32), "bf16")()
    profile_models.forward_step(model, x, "fp32")()
    assert seen == [True, True, False]
    md = profile_models.markdown([{"model": "m", "precision": "bf16", "pass": "forward", "batch": 1, "lr": 8,
                                   "wall_ms": 1.0, "ms": {"other": 1.0}}])
    assert "| m | bf16 | forward | 1 |" in md


# ---- the CUDA path, on synthetic profiler events (no GPU here) ---------------------------------------
def _event(name, shapes=(), cpu_us=0.0, device_us=None, parent=None, device_type=None, legacy_cuda_us=None):
    """A stand-in for torch.autograd.profiler_util.FunctionEvent with the attributes the sums read."""
    from types import SimpleNamespace
    e = SimpleNamespace(name=name, input_shapes=[list(s) for s in shapes], cpu_time_total=cpu_us,
                        cpu_parent=parent, cpu_children=[],
                        device_type=torch.autograd.DeviceType.CPU if device_type is None else device_type)
    if device_us is not None:
        e.device_time_total = device_us
    if legacy_cuda_us is not None:  # torch before 2.4 named it cuda_time_total
        e.cuda_time_total = legacy_cuda_us
    if parent is not None:
        parent.cpu_children.append(e)
    return e


def _synthetic_step():
    conv = _event("aten::conv2d", [[1, 8, 5, 5], [16, 8, 1, 1]], cpu_us=900.0, device_us=3000.0)
    # its child launched part of those kernels: counted once, in the top-level op
    _event("aten::_convolution", cpu_us=800.0, device_us=2000.0, parent=conv)
    block = _event("mesrgan::bottleneck_block", cpu_us=50.0, device_us=7000.0)
    engine = _event("autograd::engine::evaluate_function: CatBackward0", cpu_us=40.0, device_us=500.0)
    _event("aten::slice", cpu_us=30.0, device_us=500.0, parent=engine)
    act = _event("aten::leaky_relu", cpu_us=20.0, device_us=1000.0)
    # a GPU kernel is an event without a parent: its time is already in the op that launched it
    kernel = _event("void fused_block_kernel<float>", device_us=7000.0,
                    device_type=torch.autograd.DeviceType.CUDA)
    return [conv, *conv.cpu_children, block, engine, *engine.cpu_children, act, kernel]


def test_cuda_time_by_kind_sums_kernel_time_of_top_level_ops_once():
    events = _synthetic_step()
    top = profile_models._top_level(events)
    by_kind = profile_models.time_by_kind(top, "cuda", calls=2)
    assert by_kind == {"1x1 conv": 1.5, "fused block": 3.5, "concat": 0.25, "activation": 0.5}, by_kind
    # on the CPU the same events give their CPU time
    assert profile_models.time_by_kind(top, "cpu", calls=1) == {"1x1 conv": 0.9, "fused block": 0.05,
                                                                 "concat": 0.03, "activation": 0.02}


def test_cuda_time_falls_back_to_cuda_time_total_of_older_torch():
    old = _event("aten::leaky_relu", legacy_cuda_us=4000.0)
    assert profile_models.op_time_us(old, "cuda") == 4000.0
    assert profile_models.time_by_kind([(old, "")], "cuda", calls=4) == {"activation": 1.0}


def test_device_cuda_is_refused_in_one_line_without_a_gpu(monkeypatch, capsys):
    import pytest
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        profile_models.main(["--device", "cuda", "--models", "mesrgan-paper"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False)")


def test_markdown_gives_the_wall_time_per_step_beside_the_kinds():
    md = profile_models.markdown([{"model": "m", "device": "cuda", "precision": "fp32", "pass": "train step",
                                   "batch": 4, "lr": 8, "wall_ms": 12.0, "ms": {"fused block": 3.0, "other": 1.0}}])
    assert "wall per step" in md.splitlines()[0]
    assert md.splitlines()[-1].endswith("| 4 ms | 12 ms |")
