"""The model shipped inside the package: packing, loading by name, its hash, and its quality."""
import os
import re

import numpy as np
import pytest
import torch

from mesrgan.data.bundled import bundled_images
from mesrgan.data.resize import imresize
from mesrgan.metrics import psnr
from mesrgan.models import build_generator, generator_checkpoint, load_generator
from mesrgan.models import pretrained
from mesrgan.models.pretrained import (DEFAULT_PRETRAINED, PRETRAINED, PretrainedError, load_pretrained,
                                       pack_checkpoint, pretrained_path)
from mesrgan.upscale import main as upscale_main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_checkpoint(path, seed=0):
    torch.manual_seed(seed)
    g = build_generator("mesrgan-paper", num_blocks=1, features=8, growth=4, hidden_width="output")
    with torch.no_grad():
        for p in g.parameters():
            p.normal_(0, 0.1)
    torch.save(generator_checkpoint("mesrgan-paper", g, {"num_blocks": 1, "features": 8, "growth": 4,
                                                          "hidden_width": "output"}), path)
    return g


def test_pack_stores_float16_and_loads_back_as_float32(tmp_path):
    original = _small_checkpoint(tmp_path / "run.pt")
    pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "packed.pt"))
    stored = torch.load(tmp_path / "packed.pt", weights_only=True)["generator"]
    assert all(v.dtype == torch.float16 for v in stored.values() if v.is_floating_point())
    loaded, info = load_generator(str(tmp_path / "packed.pt"))
    assert info["model"] == "mesrgan-paper" and info["config"]["hidden_width"] == "output"
    for (name, p), q in zip(original.state_dict().items(), loaded.state_dict().values()):
        assert q.dtype == torch.float32
        # loading restores exactly the float16 values: the only change is packing's rounding
        assert torch.equal(q, p.half().float()), name
        assert not torch.equal(q, p) or p.abs().max() == 0, name


def test_pack_is_byte_for_byte_repeatable(tmp_path):
    _small_checkpoint(tmp_path / "run.pt")
    first = pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "a.pt"))
    second = pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "b.pt"))
    assert first == second
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_pack_refuses_values_beyond_float16(tmp_path):
    g = _small_checkpoint(tmp_path / "run.pt")
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    key = next(iter(state["generator"]))
    state["generator"][key] = state["generator"][key] * 0 + 1e6
    torch.save(state, tmp_path / "run.pt")
    with pytest.raises(PretrainedError, match="float16's range"):
        pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "packed.pt"))
    assert not (tmp_path / "packed.pt").exists()
    del g


def test_unknown_and_damaged_names_are_refused(tmp_path, monkeypatch):
    with pytest.raises(PretrainedError, match="no shipped model named 'nope'"):
        pretrained_path("nope")
    _small_checkpoint(tmp_path / "run.pt")
    sha = pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "tiny.pt"))
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setitem(PRETRAINED, "tiny", pretrained.Pretrained("tiny.pt", sha, "card", "test"))
    assert pretrained_path("tiny") == str(tmp_path / "tiny.pt")
    data = bytearray((tmp_path / "tiny.pt").read_bytes())
    data[-100] ^= 1
    (tmp_path / "tiny.pt").write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="damaged"):
        pretrained_path("tiny")
    os.unlink(tmp_path / "tiny.pt")
    with pytest.raises(PretrainedError, match="missing"):
        pretrained_path("tiny")


# --- the shipped model itself ---------------------------------------------------------------------

def _card_sha256(name):
    with open(os.path.join(REPO, PRETRAINED[name].card), encoding="utf-8") as f:
        card = f.read()
    return re.findall(r"\b[0-9a-f]{64}\b", card)


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_shipped_file_matches_registry_and_card(name):
    path = pretrained_path(name)  # raises when the file's SHA-256 differs from the registry's
    assert os.path.getsize(path) < 8 * 2**20
    assert _card_sha256(name) == [PRETRAINED[name].sha256]


def _uint8(t):
    return (t.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_shipped_model_beats_bicubic_on_a_held_out_crop():
    """chelsea and rocket were never trained on (the bundled 'val' split). On a 192x192 crop of
    each, the model's PSNR-Y (standard convention) must beat bicubic's; the model card's margin on
    the whole images is larger than this check's."""
    generator, info = load_pretrained(DEFAULT_PRETRAINED)
    assert info["config"]["scale"] == 4
    gains = []
    for _, image in bundled_images("val"):
        top, left = (image.shape[0] - 192) // 2, (image.shape[1] - 192) // 2
        hr = torch.from_numpy(image[top:top + 192, left:left + 192].copy()).permute(2, 0, 1).double() / 255
        lr = imresize(hr, 1 / 4).clamp(0, 1)
        lr = (lr * 255).round() / 255  # the LR image a user has is 8-bit
        with torch.no_grad():
            sr = generator(lr[None].float())[0].double()
        bicubic = imresize(lr, 4)
        hr8 = _uint8(hr)
        gains.append(psnr(_uint8(sr), hr8, crop_border=4, y_channel=True)
                     - psnr(_uint8(bicubic), hr8, crop_border=4, y_channel=True))
    assert np.mean(gains) > 0.2, gains


def test_upscale_without_weights_uses_the_shipped_model(tmp_path, capsys):
    from PIL import Image

    _, image = bundled_images("val")[1]
    Image.fromarray(image[:24, :20]).save(tmp_path / "in.png")
    assert upscale_main([str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out.png").size == (80, 96)
    err = capsys.readouterr().err
    assert f"from {DEFAULT_PRETRAINED} (shipped with mesrgan; the default without --weights)" in err


def test_pack_takes_the_moving_average_unless_told_not_to(tmp_path):
    g = _small_checkpoint(tmp_path / "run.pt")
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    state["generator_ema"] = {k: v * 0.5 for k, v in state["generator"].items()}
    torch.save(state, tmp_path / "run.pt")
    pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "ema.pt"))
    pack_checkpoint(str(tmp_path / "run.pt"), str(tmp_path / "raw.pt"), ema=False)
    ema, _ = load_generator(str(tmp_path / "ema.pt"))
    raw, _ = load_generator(str(tmp_path / "raw.pt"))
    for name, w in g.state_dict().items():
        assert torch.equal(raw.state_dict()[name], w.half().float()), name
        assert torch.equal(ema.state_dict()[name], (w * 0.5).half().float()), name


def test_upscale_without_weights_refuses_another_scale_in_one_line(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(bundled_images("val")[0][1][:16, :16]).save(tmp_path / "in.png")
    assert upscale_main([str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), "--scale", "2"]) == 2
    assert "--scale 2: the model used without --weights (mesrgan-lite-x4) is x4" in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()
