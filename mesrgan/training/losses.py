"""Losses of the SRGAN / ESRGAN / MESRGAN recipes.

* pixel losses: :func:`pixel_loss` (``"mse"`` for SRGAN, ``"l1"`` for (M)ESRGAN);
* :class:`PerceptualLoss`: distance between VGG19 features of SR and HR (SRGAN: MSE on relu5_4;
  ESRGAN: L1 on conv5_4, before the activation);
* adversarial losses, on raw discriminator logits ``(N, 1)`` or ``(N,)``:

  - standard GAN (SRGAN, Goodfellow et al.): :func:`gan_d_loss`, :func:`gan_g_loss`
    (the generator's loss is the non-saturating ``-log D(G(z))`` of SRGAN's paper);
  - relativistic average GAN (ESRGAN, Jolicoeur-Martineau): :func:`ragan_d_loss`,
    :func:`ragan_g_loss` with ``D_Ra(a, b) = sigmoid(C(a) - mean(C(b)))``.

  The RaGAN losses are the mean of their two terms, i.e. ESRGAN's eq. (1)-(2) divided by 2,
  as in ESRGAN's released code, which is where the weight 5e-3 was tuned.

All losses reduce to a scalar with ``mean``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["pixel_loss", "PerceptualLoss", "gan_d_loss", "gan_g_loss", "ragan_d_loss",
           "ragan_g_loss", "adversarial_losses"]

_CRITERIA = {"l1": F.l1_loss, "mse": F.mse_loss}


def _criterion(name: str):
    try:
        return _CRITERIA[name]
    except KeyError:
        raise ValueError(f"loss criterion must be one of {sorted(_CRITERIA)}, got {name!r}") from None


def pixel_loss(sr: torch.Tensor, hr: torch.Tensor, criterion: str = "l1") -> torch.Tensor:
    """Mean ``|sr - hr|`` (``"l1"``) or ``(sr - hr)^2`` (``"mse"``) over all elements."""
    return _criterion(criterion)(sr, hr)


class PerceptualLoss(nn.Module):
    """``criterion(features(sr), features(hr))`` with a frozen feature extractor.

    Args:
        extractor: module mapping ``(N, 3, H, W)`` RGB in ``[0, 1]`` to features (e.g.
            :class:`mesrgan.models.VGGFeatureExtractor`, which normalises for ImageNet itself).
            Its parameters are frozen and it is kept in eval mode.
        criterion: ``"l1"`` (ESRGAN) or ``"mse"`` (SRGAN's Euclidean VGG loss).

    The HR features are computed without gradient; gradients flow to ``sr`` only.
    """

    def __init__(self, extractor: nn.Module, criterion: str = "l1"):
        super().__init__()
        self.criterion_name = criterion
        self._criterion = _criterion(criterion)
        self.extractor = extractor.eval()
        for p in self.extractor.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.extractor.eval()  # never let a parent's .train() switch the extractor
        return self

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.extractor(hr)
        return self._criterion(self.extractor(sr), target.detach())


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def gan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Standard discriminator loss ``-E[log D(x_r)] - E[log(1 - D(x_f))]``
    (``BCE(real, 1) + BCE(fake, 0)``). Pass ``fake_logits`` of detached SR images."""
    return _bce(real_logits, 1.0) + _bce(fake_logits, 0.0)


def gan_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """SRGAN's generator adversarial loss ``-log D(G(x_LR))`` (mean over the batch)."""
    return _bce(fake_logits, 1.0)


def ragan_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average discriminator loss (ESRGAN eq. 1, halved):

    ``( -E_r[log D_Ra(x_r, x_f)] - E_f[log(1 - D_Ra(x_f, x_r))] ) / 2``,
    ``D_Ra(a, b) = sigmoid(C(a) - E[C(b)])``. Pass ``fake_logits`` of detached SR images.
    """
    return 0.5 * (_bce(real_logits - fake_logits.mean(), 1.0)
                  + _bce(fake_logits - real_logits.mean(), 0.0))


def ragan_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Relativistic average generator loss (ESRGAN eq. 2, halved): the roles swapped,

    ``( -E_r[log(1 - D_Ra(x_r, x_f))] - E_f[log D_Ra(x_f, x_r)] ) / 2``.
    ``real_logits`` should be detached (the generator step does not train D); gradients reach
    the generator through ``fake_logits`` in both terms.
    """
    return 0.5 * (_bce(real_logits - fake_logits.mean(), 0.0)
                  + _bce(fake_logits - real_logits.mean(), 1.0))


def adversarial_losses(kind: str):
    """``(d_loss(real, fake), g_loss(real, fake))`` for ``kind`` ``"gan"`` or ``"ragan"``;
    the standard generator loss ignores ``real``."""
    if kind == "ragan":
        return ragan_d_loss, ragan_g_loss
    if kind == "gan":
        return gan_d_loss, lambda real, fake: gan_g_loss(fake)
    raise ValueError(f"gan type must be 'gan' or 'ragan', got {kind!r}")
