"""Tests for mesrgan.training.losses against hand computations."""
import math

import pytest
import torch

from mesrgan.training import losses as L


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_ragan_losses_match_a_hand_computation():
    real = [1.5, -0.3, 0.8]
    fake = [-1.0, 0.4, 2.2]
    mr, mf = sum(real) / 3, sum(fake) / 3
    # D_Ra(x_r, x_f) = sigmoid(C(x_r) - E[C(x_f)]) and D_Ra(x_f, x_r) = sigmoid(C(x_f) - E[C(x_r)])
    d_real = [_sig(r - mf) for r in real]
    d_fake = [_sig(f - mr) for f in fake]
    hand_d = 0.5 * (-sum(math.log(p) for p in d_real) / 3 - sum(math.log(1 - p) for p in d_fake) / 3)
    hand_g = 0.5 * (-sum(math.log(1 - p) for p in d_real) / 3 - sum(math.log(p) for p in d_fake) / 3)
    r = torch.tensor(real, dtype=torch.float64).view(3, 1)
    f = torch.tensor(fake, dtype=torch.float64).view(3, 1)
    assert L.ragan_d_loss(r, f).item() == pytest.approx(hand_d, rel=1e-12)
    assert L.ragan_g_loss(r, f).item() == pytest.approx(hand_g, rel=1e-12)
    d_fn, g_fn = L.adversarial_losses("ragan")
    assert d_fn is L.ragan_d_loss and g_fn is L.ragan_g_loss


def test_ragan_gradient_of_the_generator_loss():
    """The generator gets gradient through both terms (the fake logits appear in both)."""
    torch.manual_seed(0)
    real = torch.randn(5, 1, dtype=torch.float64)
    fake = torch.randn(5, 1, dtype=torch.float64, requires_grad=True)
    L.ragan_g_loss(real, fake).backward()
    # d/dfake_i of 0.5*mean_j softplus(r_j - mean f) [target 0 term] + 0.5*mean_i softplus(-(f_i - mean r))
    n = 5
    mf, mr = fake.detach().mean(), real.mean()
    t1 = torch.sigmoid(real - mf).mean() * (-1.0 / n)          # from the real term
    t2 = -torch.sigmoid(-(fake.detach() - mr)) / n              # from the fake term
    torch.testing.assert_close(fake.grad, 0.5 * (t1 + t2))


def test_standard_gan_losses_match_a_hand_computation():
    real, fake = [2.0, -0.5], [0.3, -1.2]
    hand_d = -sum(math.log(_sig(r)) for r in real) / 2 - sum(math.log(1 - _sig(f)) for f in fake) / 2
    hand_g = -sum(math.log(_sig(f)) for f in fake) / 2
    r = torch.tensor(real, dtype=torch.float64)
    f = torch.tensor(fake, dtype=torch.float64)
    assert L.gan_d_loss(r, f).item() == pytest.approx(hand_d, rel=1e-12)
    assert L.gan_g_loss(f).item() == pytest.approx(hand_g, rel=1e-12)
    d_fn, g_fn = L.adversarial_losses("gan")
    assert g_fn(None, f).item() == pytest.approx(hand_g, rel=1e-12)


def test_discriminator_loss_splits_into_its_two_sides():
    """The trainer back-propagates d_loss(real, fake_ref) and d_loss(real_ref, fake) separately;
    the summed gradient must equal that of d_loss(real, fake)."""
    torch.manual_seed(1)
    for fn in (L.gan_d_loss, L.ragan_d_loss):
        r0, f0 = torch.randn(4, 1, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
        r, f = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        fn(r, f).backward()
        r2, f2 = r0.clone().requires_grad_(), f0.clone().requires_grad_()
        fn(r2, f0).backward()
        fn(r0, f2).backward()
        torch.testing.assert_close(r2.grad, r.grad)
        torch.testing.assert_close(f2.grad, f.grad)


def test_pixel_losses():
    torch.manual_seed(2)
    a, b = torch.rand(2, 3, 5, 4, dtype=torch.float64), torch.rand(2, 3, 5, 4, dtype=torch.float64)
    assert L.pixel_loss(a, b, "l1").item() == pytest.approx((a - b).abs().mean().item())
    assert L.pixel_loss(a, b, "mse").item() == pytest.approx(((a - b) ** 2).mean().item())
    with pytest.raises(ValueError, match="criterion must be one of"):
        L.pixel_loss(a, b, "l2")
    with pytest.raises(ValueError, match="gan type must be"):
        L.adversarial_losses("wgan")


def test_perceptual_loss_with_random_vgg():
    from mesrgan.models import VGGFeatureExtractor

    torch.manual_seed(3)
    ext = VGGFeatureExtractor(layer="relu1_2", pretrained=False)
    loss = L.PerceptualLoss(ext, "mse")
    loss.train()
    assert not loss.extractor.training
    assert all(not p.requires_grad for p in loss.parameters())
    hr = torch.rand(2, 3, 16, 16)
    sr = (hr + 0.1 * torch.randn_like(hr)).requires_grad_()
    assert loss(hr, hr).item() == 0.0
    value = loss(sr, hr)
    with torch.no_grad():
        expect = torch.nn.functional.mse_loss(ext(sr), ext(hr))
    torch.testing.assert_close(value, expect)
    value.backward()
    assert sr.grad is not None and sr.grad.abs().sum() > 0
    assert L.PerceptualLoss(ext, "l1")(sr, hr).item() > 0
