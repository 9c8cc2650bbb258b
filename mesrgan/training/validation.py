"""Validation during training: PSNR / SSIM on the Y channel next to bicubic, and a sample image."""
from __future__ import annotations

import os

import torch

from ..data import imresize, quantize
from ..io.images import write_image
from ..metrics import psnr, ssim

__all__ = ["validate", "save_sample"]


@torch.no_grad()
def validate(net, val_set, scale: int, device, channels_last: bool = False, autocast=None):
    """Mean PSNR-Y / SSIM-Y of ``net`` over ``val_set`` (from ``prepare_validation``) and of bicubic,
    8-bit SR, ``scale`` pixels cropped. Returns ``(results, (bicubic, sr, hr) of the first image)``,
    or ``(None, None)`` without validation images."""
    if not val_set:
        return None, None
    was_training = net.training
    net.eval()
    res = {"psnr": [], "ssim": [], "bicubic_psnr": [], "bicubic_ssim": []}
    sample = None
    for i, (_name, lr, hr) in enumerate(val_set):
        x = lr.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if autocast is not None:
            with autocast():
                sr = net(x)
        else:
            sr = net(x)
        sr = quantize(sr.float().cpu())
        bic = quantize(imresize(lr, scale))
        for key, img in (("", sr), ("bicubic_", bic)):
            res[key + "psnr"].append(float(psnr(img, hr, crop_border=scale, y_channel=True)[0]))
            res[key + "ssim"].append(float(ssim(img, hr, crop_border=scale, y_channel=True)[0]))
        if i == 0:
            sample = (bic, sr, hr)
    net.train(was_training)
    return {k: sum(v) / len(v) for k, v in res.items()}, sample


def save_sample(sample, path: str) -> None:
    """bicubic | SR | HR of a centre crop (at most 192 pixels), side by side, as a PNG."""
    bic, sr, hr = sample
    h, w = hr.shape[-2:]
    c = min(192, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    gap = torch.ones(1, 3, c, 4)
    tiles = [t[..., y0:y0 + c, x0:x0 + c] for t in (bic, sr, hr)]
    row = torch.cat([tiles[0], gap, tiles[1], gap, tiles[2]], dim=-1)
    a = row[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_image(path, a)
