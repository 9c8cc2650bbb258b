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
