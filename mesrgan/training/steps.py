"""One training iteration of each stage: forward, losses, backward, optimiser steps."""
from __future__ import annotations

import contextlib

import torch

from . import losses as L
from .distributed import unwrap

__all__ = ["Steps"]


class Steps:
    """The step functions of both stages for the networks of a run.

    ``psnr`` and ``gan`` return their losses as 0-d tensors on the device: reading them waits for
    the GPU, so the caller decides when.
    """

    def __init__(self, cfg: dict, nets, perceptual=None):
        self.cfg, self.nets, self.perceptual = cfg, nets, perceptual
        self.scaler = torch.amp.GradScaler("cuda") if cfg["amp"] == "fp16" else None
        self.d_loss_fn, self.g_adv_fn = L.adversarial_losses(cfg["gan_type"])

    def autocast(self):
        """``--amp``: autocast on the networks' device (bf16 on CPU or CUDA, fp16 on CUDA); the
        parameters, the optimiser and the losses' reductions stay in float32."""
        amp = self.cfg["amp"]
        if amp == "none":
            return contextlib.nullcontext()
        device_type = next(self.nets.G.parameters()).device.type
        return torch.autocast(device_type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)

    def _backward(self, loss):
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def _opt_step(self, opt):
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()

    def psnr(self, opt, lr, hr) -> dict:
        opt.g.zero_grad(set_to_none=True)
        with self.autocast():
            sr = self.nets.G_train(lr)
            loss = L.pixel_loss(sr.float(), hr, self.cfg["psnr_loss"])
        self._backward(loss)
        self._opt_step(opt.g)
        if self.scaler is not None:
            self.scaler.update()
        return {"l_pix": loss.detach()}

    def gan(self, opt, lr, hr) -> dict:
        sr, fake_g, logs = self._generator_step(opt, lr, hr)
        # the discriminator step reads them after its own compiled calls (--compile on CUDA)
        sr, fake_g = self.nets.keep(sr), self.nets.keep(fake_g)
        logs.update(self._discriminator_step(opt, sr, hr, fake_g))
        if self.scaler is not None:
            self.scaler.update()
        return logs

    def _generator_step(self, opt, lr, hr):
        cfg = self.cfg
        D = self.nets.D_frozen
        ragan = cfg["gan_type"] == "ragan"
        # D is frozen and called without its DDP wrapper (no gradient for D).
        unwrap(D).requires_grad_(False)
        opt.g.zero_grad(set_to_none=True)
        with self.autocast():
            sr = self.nets.G_train(lr)
            srf = sr.float()
            l_pix = cfg["pixel_weight"] * L.pixel_loss(srf, hr, cfg["pixel_loss"])
            fake_g = D(sr).float()
            real_g = D(hr).float().detach() if ragan else None
            l_adv = cfg["adv_weight"] * self.g_adv_fn(real_g, fake_g)
            total = l_pix + l_adv
            logs = {"l_pix": l_pix.detach(), "l_adv": l_adv.detach()}
            if self.perceptual is not None:
                l_per = cfg["perceptual_weight"] * self.perceptual(srf, hr)
                total = total + l_per
                logs["l_per"] = l_per.detach()
        self._backward(total)
        self._opt_step(opt.g)
        return sr, fake_g, logs

    def _discriminator_step(self, opt, sr, hr, fake_g):
        # d_loss(real, fake) has one term per side, so its gradient is the sum of the gradients of
        # d_loss(real, fake_ref) and d_loss(real_ref, fake) with the *_ref detached; fake_ref = D(sr)
        # from the generator step (same D, same input). Two backward passes, one per D forward,
        # keep DDP to one forward per backward.
        D_train = self.nets.D_train
        unwrap(D_train).requires_grad_(True)
        # under CUDA graphs D's .grad buffers stay: allocated outside the graphs (Networks.use_cuda_graphs)
        opt.d.zero_grad(set_to_none=not self.nets.cuda_graphs)
        fake_ref = fake_g.detach()
        with self.autocast():
            real_d = D_train(hr).float()
            l_d_real = self.d_loss_fn(real_d, fake_ref)
        self._backward(l_d_real)
        real_ref = self.nets.keep(real_d)  # read after the next D call
        with self.autocast():
            fake_d = D_train(sr.detach()).float()
            l_d_fake = self.d_loss_fn(real_ref, fake_d)
        self._backward(l_d_fake)
        self._opt_step(opt.d)
        return {"l_d": l_d_fake.detach(),  # = d_loss(real, fake): same values as l_d_real
                "d_real": real_ref.mean(), "d_fake": fake_d.detach().mean()}
