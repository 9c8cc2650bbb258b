"""Tests of mesrgan.models: generators, discriminators, VGG features, checkpoints, compute report."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mesrgan.models import (GENERATORS, BottleneckResidualBlock, CheckpointNotFoundError, SRGANDiscriminator,
                            VGGFeatureExtractor, VGGStyleDiscriminator, build_discriminator, build_generator,
                            compute_report, count_macs, generator_checkpoint, layer_macs, load_generator)
import mesrgan.models.__main__ as cli
from mesrgan.models.__main__ import main as models_main
from mesrgan.ops import DepthwiseConv3x3

PRESETS = sorted(GENERATORS)
DEPTHWISE_PRESETS = ("mesrgan", "mesrgan-paper")

# Small versions of every preset for tests that are not about the full size.
TINY = {
    "srgan": {"features": 16, "num_blocks": 2},
    "esrgan": {"features": 16, "num_blocks": 2, "growth": 8},
    "mesrgan": {"features": 16, "num_blocks": 2, "growth": 8},
    "esrgan-paper": {"features": 16, "num_blocks": 2, "growth": 8},
    "mesrgan-paper": {"features": 16, "num_blocks": 2, "growth": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny(name, scale=4, **overrides):
    return build_generator(name, scale=scale, **{**TINY[name], **overrides})


# --------------------------------------------------------------------------------------------------
# Generators: shapes, parameter counts, names


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("name", PRESETS)
def test_full_size_preset_output_shape(name, scale):
    model = build_generator(name, scale=scale).eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 8 * scale, 8 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("scale", [2, 4])
@pytest.mark.parametrize("name", PRESETS)
def test_any_input_size(name, scale):
    model = tiny(name, scale).eval()
    x = torch.rand(2, 3, 7, 13)
    with torch.no_grad():
        assert model(x).shape == (2, 3, 7 * scale, 13 * scale)


def _params(name, **overrides):
    with torch.device("meta"):
        return sum(p.numel() for p in build_generator(name, **overrides).parameters())


def test_original_esrgan_parameter_count():
    # The published RRDBNet x4 (23 RRDBs of 3 dense blocks, 64 features, growth 32): 16,697,987.
    assert _params("esrgan", dense_blocks=3) == 16_697_987


def test_preset_parameter_counts():
    # SRResNet with 16 blocks and 64 features, as in SRGAN's paper.
    assert _params("srgan") == 1_549_462
    # The paper's ESRGAN: 2/3 of the RRDB trunk goes away with 2 of its 3 dense blocks.
    per_dense_block = 9 * 32 * (64 + 96 + 128 + 160) + 9 * 64 * 192 + 4 * 32 + 64
    assert _params("esrgan", dense_blocks=3) - _params("esrgan") == 23 * 2 * per_dense_block
    assert _params("esrgan", scale=4) - _params("esrgan", scale=2) == 64 * 64 * 9 + 64


def test_mesrgan_hidden_width_choice():
    for width, expect in (("input", lambda cin, cout: 2 * cin), ("output", lambda cin, cout: 2 * cout)):
        model = tiny("mesrgan", hidden_width=width)
        block = model.body[0].rdb1
        for k in range(1, 6):
            conv = getattr(block, f"conv{k}")
            cin, cout = 16 + (k - 1) * 8, 16 if k == 5 else 8
            assert conv.expand.out_channels == expect(cin, cout)
            assert conv.dw.channels == expect(cin, cout)
            assert conv.project.out_channels == cout


def test_bottleneck_block_skip_only_where_channels_match():
    x = torch.rand(2, 8, 5, 6, dtype=torch.float64)
    same = BottleneckResidualBlock(8, 8, impl="torch").double()
    assert same.use_skip
    branch = same.project(same.dw(F.leaky_relu(same.expand(x), 0.2)))
    torch.testing.assert_close(same(x), x + branch)
    assert not BottleneckResidualBlock(8, 4).use_skip
    assert not BottleneckResidualBlock(8, 8, skip=False).use_skip
    with pytest.raises(ValueError, match="hidden_width must be one of"):
        BottleneckResidualBlock(8, 8, hidden_width="middle")


def test_paper_presets_follow_authors_code():
    model = build_generator("mesrgan-paper")
    assert model.conv_head.kernel_size == (9, 9) and model.conv_tail.kernel_size == (9, 9)
    assert len(model.body) == 16
    block = model.body[0]
    assert not block.activation and not block.conv1.use_skip and block.res_scale == 0.2
    assert block.conv1.expand.out_channels == 2 * 64
    assert sum(isinstance(m, nn.PixelShuffle) for m in model.upsample) == 2
    assert sum(isinstance(m, nn.PReLU) for m in model.upsample) == 2
    assert build_generator("esrgan-paper").body[0].activation


def test_residual_branches_use_scaled_kaiming_init():
    model = build_generator("esrgan", num_blocks=4)
    w = torch.cat([getattr(rrdb.rdb1, f"conv{k}").weight.flatten() for rrdb in model.body for k in (1, 2)])
    fan_in = 64 * 9  # conv1's; conv2's is 96·9, so the expected std lies between the two
    std = w.std().item()
    assert 0.1 * math.sqrt(2 / (96 * 9)) * 0.9 < std < 0.1 * math.sqrt(2 / fan_in) * 1.1
    assert model.body[0].rdb1.conv1.bias.abs().max() == 0


def test_unknown_names_and_options():
    with pytest.raises(ValueError, match=r"unknown generator 'edsr'; known: esrgan, esrgan-paper, mesrgan"):
        build_generator("edsr")
    with pytest.raises(ValueError, match=r"unknown discriminator 'patchgan'; known: .*srgan"):
        build_discriminator("patchgan")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['blocks'\] .*options: .*num_blocks"):
        build_generator("esrgan", blocks=3)
    with pytest.raises(ValueError, match=r"'impl' belongs to the models with depthwise"):
        build_generator("esrgan", impl="torch")
    with pytest.raises(ValueError, match=r"scale must be one of \(2, 4\), got 3"):
        build_generator("mesrgan", scale=3)


# --------------------------------------------------------------------------------------------------
# MESRGAN and the compiled operator


def _count_op_calls(model, x):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad():
            model(x)
    # On CPU each bottleneck block is one fused op (inside a dense block, those writing into its buffer
    # are _bottleneck_block_out); the depthwise op alone runs where it has no kernel.
    return sum(e.count for e in prof.key_averages()
               if e.key in ("mesrgan::depthwise_conv3x3", "mesrgan::bottleneck_block", "mesrgan::_bottleneck_block_out"))


@pytest.mark.parametrize("name", DEPTHWISE_PRESETS)
def test_mesrgan_calls_compiled_depthwise_op(name):
    model = tiny(name, impl="mesrgan").eval()
    n_dw = sum(isinstance(m, DepthwiseConv3x3) for m in model.modules())
    assert n_dw == 2 * 5  # two RRDBs of one dense block / two dense blocks, five layers each
    assert all(m.impl == "mesrgan" for m in model.modules() if isinstance(m, DepthwiseConv3x3))
    x = torch.rand(1, 3, 8, 8)
    assert _count_op_calls(model, x) == n_dw
    assert _count_op_calls(tiny(name, impl="torch").eval(), x) == 0


@pytest.mark.parametrize("hidden_width", ["input", "output"])
@pytest.mark.parametrize("name", DEPTHWISE_PRESETS)
def test_impl_torch_matches_mesrgan_float64(name, hidden_width):
    ours = tiny(name, impl="mesrgan", hidden_width=hidden_width).double()
    ref = tiny(name, impl="torch", hidden_width=hidden_width).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.rand(2, 3, 9, 11, dtype=torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = ours(x_ours), ref(x_ref)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y_ours)
    y_ours.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-10, atol=1e-12)
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-9, atol=1e-12, msg=n)


@pytest.mark.parametrize("name", PRESETS)
def test_gradients_flow_through_every_generator(name):
    model = tiny(name).train()
    x = torch.rand(2, 3, 8, 8)
    target = torch.rand(2, 3, 32, 32)
    F.l1_loss(model(x), target).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


# --------------------------------------------------------------------------------------------------
# Discriminators


@pytest.mark.parametrize("size", [96, 128])
@pytest.mark.parametrize("name", ["srgan", "esrgan"])
def test_discriminators_on_training_crops(name, size):
    model = build_discriminator(name, input_size=size)
    x = torch.rand(2, 3, size, size, requires_grad=True)
    y = model(x)
    assert y.shape == (2, 1)
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_discriminator_defaults_and_generator_names():
    assert isinstance(build_discriminator("srgan"), SRGANDiscriminator)
    assert build_discriminator("srgan").input_size == 96
    for name in ("esrgan", "mesrgan", "esrgan-paper", "mesrgan-paper"):
        d = build_discriminator(name)
        assert isinstance(d, VGGStyleDiscriminator) and d.input_size == 128


def test_discriminators_reject_sizes_they_cannot_take():
    with pytest.raises(ValueError, match=r"built for \(N, 3, 128, 128\) crops, got \(1, 3, 96, 96\).*input_size="):
        build_discriminator("esrgan")(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"built for \(N, 3, 96, 96\) crops, got \(1, 3, 96, 64\)"):
        build_discriminator("srgan")(torch.rand(1, 3, 96, 64))
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 32"):
        VGGStyleDiscriminator(input_size=100)
    with pytest.raises(ValueError, match="input_size must be a positive multiple of 16"):
        SRGANDiscriminator(input_size=40)


# --------------------------------------------------------------------------------------------------
# VGG19 features


def test_vgg_extractor_offline():
    conv = VGGFeatureExtractor("conv5_4", pretrained=False)
    relu = VGGFeatureExtractor("relu5_4", pretrained=False)
    relu.load_state_dict(conv.state_dict())
    # Only the layers up to the one asked for are kept (torchvision indices 0..34 / 0..35).
    assert len(conv.features) == 35 and len(relu.features) == 36
    assert not any(p.requires_grad for p in conv.parameters())
    conv.train()
    assert not conv.training and not any(m.training for m in conv.modules())
    x = torch.rand(2, 3, 32, 48, requires_grad=True)
    y = conv(x)
    assert y.shape == (2, 512, 2, 3)
    assert (y < 0).any()  # before the activation
    torch.testing.assert_close(relu(x), F.relu(y))
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0


def test_vgg_extractor_normalises_inside():
    model = VGGFeatureExtractor("conv1_1", pretrained=False)
    x = torch.rand(1, 3, 6, 6)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model(x), model.features((x - mean) / std))


def test_vgg_extractor_local_weights(tmp_path):
    # A state dict in torchvision's vgg19 layout (features.<index>.*, plus a classifier we ignore).
    donor = VGGFeatureExtractor("pool5", pretrained=False)
    state = {**{f"features.{k}": v for k, v in donor.features.state_dict().items()},
             "classifier.0.weight": torch.randn(4, 4)}
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    model = VGGFeatureExtractor("relu2_2", weights=path)
    torch.testing.assert_close(model.features[7].weight, donor.features[7].weight)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VGGFeatureExtractor(weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="layer must be one of VGG19's layers"):
        VGGFeatureExtractor("conv6_1", pretrained=False)


def test_vgg_extractor_says_both_ways_when_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"network unreachable.*vgg19-dcbb9e9d\.pth.*weights=<path"):
        VGGFeatureExtractor()


# --------------------------------------------------------------------------------------------------
# Checkpoints


def _published_rrdbnet_state(features=16, growth=8, num_blocks=2, dense_blocks=3, scale=4, names="basicsr",
                             unshuffle=1):
    """Random tensors under the public ESRGAN / Real-ESRGAN key names (not built from our classes).

    ``unshuffle`` 2 or 4: Real-ESRGAN's x2 / x1 layout, conv_first on 3 * unshuffle**2 channels
    and the x4 upsamplers."""
    def conv(cin, cout):
        return torch.randn(cout, cin, 3, 3) * 0.05, torch.randn(cout) * 0.01

    state = {}

    def put(key, cin, cout):
        state[f"{key}.weight"], state[f"{key}.bias"] = conv(cin, cout)

    trunk, rdb, body, ups, hr = (("body", "rdb", "conv_body", "conv_up", "conv_hr") if names == "basicsr" else
                                 ("RRDB_trunk", "RDB", "trunk_conv", "upconv", "HRconv"))
    put("conv_first", 3 * unshuffle ** 2, features)
    for i in range(num_blocks):
        for j in range(1, dense_blocks + 1):
            for k in range(1, 6):
                put(f"{trunk}.{i}.{rdb}{j}.conv{k}", features + (k - 1) * growth, features if k == 5 else growth)
    put(body, features, features)
    for u in range(1, (2 if unshuffle > 1 else int(math.log2(scale))) + 1):
        put(f"{ups}{u}", features, features)
    put(hr, features, features)
    put("conv_last", features, 3)
    return state


def _rrdbnet_reference(state, x, num_blocks, dense_blocks, scale):
    """ESRGAN's forward written out with F.conv2d on a published-layout state dict."""
    def conv(key, t):
        return F.conv2d(t, state[f"{key}.weight"], state[f"{key}.bias"], padding=1)

    feat = conv("conv_first", x)
    trunk = feat
    for i in range(num_blocks):
        rrdb_in = trunk
        for j in range(1, dense_blocks + 1):
            feats = [trunk]
            for k in range(1, 5):
                feats.append(F.leaky_relu(conv(f"body.{i}.rdb{j}.conv{k}", torch.cat(feats, 1)), 0.2))
            trunk = trunk + 0.2 * conv(f"body.{i}.rdb{j}.conv5", torch.cat(feats, 1))
        trunk = rrdb_in + 0.2 * trunk
    feat = feat + conv("conv_body", trunk)
    for u in range(1, int(math.log2(scale)) + 1):
        feat = F.leaky_relu(conv(f"conv_up{u}", F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
    return conv("conv_last", F.leaky_relu(conv("conv_hr", feat), 0.2))


@pytest.mark.parametrize("wrapper", [None, "params", "params_ema"])
@pytest.mark.parametrize("scale", [2, 4])
def test_load_published_rrdbnet_layout(scale, wrapper):
    state = _published_rrdbnet_state(scale=scale)
    source = state if wrapper is None else {wrapper: state}
    model, info = load_generator(source)
    assert info["model"] == "esrgan"
    assert {k: info["config"][k] for k in ("features", "growth", "num_blocks", "dense_blocks", "scale")} == {
        "features": 16, "growth": 8, "num_blocks": 2, "dense_blocks": 3, "scale": scale}
    assert not model.training
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _rrdbnet_reference(state, x, 2, 3, scale), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 1])
@pytest.mark.parametrize("size", [(8, 12), (7, 10), (9, 13)])
def test_load_real_esrgan_x2_x1(scale, size):
    """Real-ESRGAN's x2 / x1 RRDBNet: pixel-unshuffle by 4 / scale, then the x4 network; inputs of
    other sizes are reflect-padded to a multiple and the output cropped, as Real-ESRGAN does."""
    f = 4 // scale
    state = _published_rrdbnet_state(num_blocks=1, dense_blocks=2, unshuffle=f)
    model, info = load_generator({"params_ema": state})
    assert info["model"] == "esrgan"
    assert {k: info["config"][k] for k in ("in_channels", "scale", "unshuffle_input", "dense_blocks")} == {
        "in_channels": 3, "scale": scale, "unshuffle_input": True, "dense_blocks": 2}
    h, w = size
    x = torch.rand(1, 3, h, w)
    padded = F.pad(x, (0, -w % f, 0, -h % f), mode="reflect")
    want = _rrdbnet_reference(state, F.pixel_unshuffle(padded, f), 1, 2, 4)[..., :h * scale, :w * scale]
    with torch.no_grad():
        got = model(x)
    assert got.shape == (1, 3, h * scale, w * scale)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_unshuffle_input_needs_scale_1_or_2():
    with pytest.raises(ValueError, match=r"scale must be 1 or 2 with unshuffle_input"):
        build_generator("esrgan", scale=4, unshuffle_input=True)


def test_load_esrgan_repo_names():
    state = _published_rrdbnet_state(names="esrgan-repo", dense_blocks=1)
    model, info = load_generator({"params_ema": state}, model="esrgan")
    assert info["config"]["dense_blocks"] == 1
    torch.testing.assert_close(model.conv_body.weight, state["trunk_conv.weight"])
    torch.testing.assert_close(model.body[1].rdb1.conv3.bias, state["RRDB_trunk.1.RDB1.conv3.bias"])


def test_load_rejects_mismatched_and_unsupported_state_dicts(tmp_path):
    state = _published_rrdbnet_state()
    bad = dict(state)
    bad["body.1.rdb2.conv3.weight"] = torch.randn(8, 30, 3, 3)
    with pytest.raises(RuntimeError, match=r"does not fit generator 'esrgan'.*shape mismatch \(1\): "
                                           r"body\.1\.rdb2\.conv3\.weight: checkpoint \(8, 30, 3, 3\)"):
        load_generator(bad)
    missing = {k: v for k, v in state.items() if k != "conv_hr.bias"}
    with pytest.raises(RuntimeError, match=r"missing \(1\): conv_hr\.bias"):
        load_generator(missing)
    with pytest.raises(RuntimeError, match=r"does not fit generator 'esrgan'"):
        load_generator(state, num_blocks=3)
    with pytest.raises(ValueError, match=r"cannot tell which generator.*pass model="):
        load_generator({"weight": torch.randn(3)})
    with pytest.raises(ValueError, match=r"model='mesrgan' was asked for, but the checkpoint holds a 'esrgan'"):
        load_generator(state, model="mesrgan")
    with pytest.raises(ValueError, match=r"model must be one of"):
        load_generator(state, model="edsr")
    assert load_generator(state, model="ESRGAN")[1]["model"] == "esrgan"
    with pytest.raises(CheckpointNotFoundError, match="does not exist") as err:
        load_generator(tmp_path / "nope.pth")
    assert isinstance(err.value, ValueError) and isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("name", PRESETS)
def test_checkpoint_round_trip(name, tmp_path):
    overrides = dict(TINY[name], scale=2)
    if name in DEPTHWISE_PRESETS:
        overrides["hidden_width"] = "output"
    model = build_generator(name, **overrides).eval()
    ckpt = generator_checkpoint(name, model, overrides)
    assert ckpt["format"] == "mesrgan-generator-v1" and ckpt["model"] == name and ckpt["config"] == overrides
    path = tmp_path / "g.pth"
    torch.save(ckpt, path)
    loaded, info = load_generator(path)
    assert info["model"] == name and info["config"]["scale"] == 2
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    # A bare state dict: the preset and its config are read off the keys and shapes.
    bare, info = load_generator(model.state_dict())
    assert info["model"] == name and info["format"] == "state_dict"
    # ... also as saved from DataParallel around torch.compile.
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    assert load_generator(wrapped)[1]["model"] == name
    for k, v in overrides.items():
        assert info["config"][k] == v, k
    # Overrides replace stored options (here the depthwise implementation).
    if name in DEPTHWISE_PRESETS:
        loaded, info = load_generator(path, impl="torch")
        assert info["config"]["impl"] == "torch"
        assert all(m.impl == "torch" for m in loaded.modules() if isinstance(m, DepthwiseConv3x3))


def test_checkpoint_prefers_ema():
    model = tiny("esrgan")
    ema = tiny("esrgan")
    ckpt = {**generator_checkpoint("esrgan", model, TINY["esrgan"]), "generator_ema": ema.state_dict(),
            "optimizer_g": {"state": {}}}
    loaded, _ = load_generator(ckpt)
    torch.testing.assert_close(loaded.conv_first.weight, ema.conv_first.weight)


# --------------------------------------------------------------------------------------------------
# Compute report


def test_macs_counted_by_hooks_match_the_layer_arithmetic():
    # The paper's example: one 64 -> 64 layer at 128 x 128.
    conv, brb = layer_macs(64, 64, 128)
    assert conv == 128 * 128 * 64 * 64 * 9
    assert brb == 128 * 128 * (64 * 128 + 128 * 9 + 128 * 64)
    with torch.device("meta"):
        model = build_generator("esrgan", num_blocks=2)
    macs = count_macs(model, (1, 3, 16, 16))
    dense_per_pixel = 9 * (32 * (64 + 96 + 128 + 160) + 64 * 192)
    assert macs["dense_layers"] == 2 * 16 * 16 * dense_per_pixel
    assert macs["conv1x1"] == macs["depthwise"] == 0
    assert macs["total"] == macs["conv3x3"]


def test_compute_report_ratios():
    models = (("esrgan", "esrgan", {"num_blocks": 2}, None),
              ("mesrgan in", "mesrgan", {"num_blocks": 2}, "esrgan"),
              ("mesrgan out", "mesrgan", {"num_blocks": 2, "hidden_width": "output"}, "esrgan"))
    rows = compute_report(models, sizes=(16,))
    esrgan, m_in, m_out = rows
    assert esrgan["ratio_total"] is None
    # Dense-block layers only: sum over the five layers of 2·C_in·(C_in + 9 + C_out) (hidden = 2·C_in)
    # or 2·C_out·(C_in + 9 + C_out) (hidden = 2·C_out), against 9·C_in·C_out.
    layers = [(64 + 32 * (k - 1), 64 if k == 5 else 32) for k in range(1, 6)]
    dense = sum(9 * i * o for i, o in layers)
    assert m_in["ratio_dense_layers"] == pytest.approx(sum(2 * i * (i + 9 + o) for i, o in layers) / dense)
    assert m_out["ratio_dense_layers"] == pytest.approx(sum(2 * o * (i + 9 + o) for i, o in layers) / dense)
    assert m_in["ratio_dense_layers"] > 1 > 0.5 > m_out["ratio_dense_layers"]
    assert m_in["depthwise"] > 0 and m_in["conv1x1"] > 0


def test_report_command(capsys, monkeypatch):
    assert models_main([]) == 0
    assert "--report" in capsys.readouterr().out
    # The full default list takes a while on the meta device; the table code is the same.
    models = (("esrgan", "esrgan", {"num_blocks": 1}, None),
              ("mesrgan", "mesrgan", {"num_blocks": 1}, "esrgan"))
    monkeypatch.setattr(cli, "compute_report", lambda **kw: compute_report(models, **kw))
    assert models_main(["--report", "--sizes", "8", "--scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "| 8×8 | mesrgan |" in out and "| LR input | model | params (M) |" in out
    assert "conv 3×3 6.04e8 MACs, bottleneck block 2.87e8 MACs, ratio 0.476" in out


@pytest.mark.parametrize("fused", [True, False], ids=["fused-cpu-path", "unfused-cuda-path"])
def test_mesrgan_training_step_compiles_whole(monkeypatch, fused):
    """A MESRGAN generator's training step under torch.compile(fullgraph=True), as train --compile
    runs it: the fused block (the CPU path) and, without a fused kernel, expand conv + our depthwise
    op + project conv (the path CUDA takes) each trace as one graph, backward included, and give the
    eager loss and gradients."""
    import mesrgan.models.blocks as blocks
    if not fused:  # the CUDA path's graph, on the CPU
        monkeypatch.setattr(blocks, "has_fused_kernel", lambda x: False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    G = build_generator("mesrgan", scale=4, num_blocks=1, features=8, growth=4, impl="mesrgan")
    x, hr = torch.rand(2, 3, 8, 9), torch.rand(2, 3, 32, 36)
    seen = []
    G_seen = torch.compile(G, fullgraph=True, backend=_aot_eager_recording(seen))
    loss_c = F.l1_loss(G_seen(x), hr)
    grads_c = torch.autograd.grad(loss_c, list(G.parameters()))
    loss_e = F.l1_loss(G(x), hr)
    grads_e = torch.autograd.grad(loss_e, list(G.parameters()))
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(grads_c, grads_e):
        torch.testing.assert_close(gc, ge)
    ours = {"mesrgan.bottleneck_block.default"} if fused else {"mesrgan.depthwise_conv3x3.default"}
    assert len(seen) == 2 and ours <= seen[0] and seen[1], seen  # forward graph, backward graph (our backward ops)
    other_path = "depthwise_conv3x3" if fused else "bottleneck_block"
    assert other_path not in str(seen), seen


def _aot_eager_recording(seen):
    """A torch.compile backend: AOTAutograd's forward and backward graphs run as they are, the
    names of our ops in each recorded in ``seen``."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified

    def record(gm, _):
        seen.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"
                     and str(n.target).startswith("mesrgan.")})
        return make_boxed_func(gm.forward)
    return lambda gm, example: aot_module_simplified(gm, example, fw_compiler=record, bw_compiler=record)
