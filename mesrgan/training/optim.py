"""The optimisers of one stage and their step schedule of learning rates."""
from __future__ import annotations

import torch

__all__ = ["lr_at", "StageOptimizers"]


def lr_at(base: float, milestones, gamma: float, iteration: int) -> float:
    """Step schedule: ``base * gamma ** (number of milestones <= iteration)``."""
    return base * gamma ** sum(1 for m in milestones if iteration >= m)


class StageOptimizers:
    """Adam for the generator, and in stage 2 for the discriminator, with the stage's schedule
    (the lr is a function of the iteration alone, so a resumed run needs no scheduler state)."""

    def __init__(self, cfg: dict, stage: str, G, D=None):
        self.cfg, self.stage = cfg, stage
        gan = stage == "gan"
        self.g = self._adam(G.parameters(), cfg["gan_lr"] if gan else cfg["psnr_lr"])
        self.d = self._adam(D.parameters(), cfg["d_lr"]) if gan else None

    def _adam(self, params, lr):
        return torch.optim.Adam(params, lr=lr, betas=(self.cfg["beta1"], self.cfg["beta2"]))

    @property
    def milestones(self) -> list:
        return list(self.cfg[f"{self.stage}_milestones"])

    @property
    def base_lr(self) -> float:
        return self.cfg[f"{self.stage}_lr"]

    def lr(self, iteration: int) -> float:
        """The generator's lr for the step that follows ``iteration`` steps."""
        return lr_at(self.base_lr, self.milestones, self.cfg["lr_gamma"], iteration)

    def set_lr(self, iteration: int) -> None:
        for g in self.g.param_groups:
            g["lr"] = self.lr(iteration)
        if self.d is not None:
            d_lr = lr_at(self.cfg["d_lr"], self.milestones, self.cfg["lr_gamma"], iteration)
            for g in self.d.param_groups:
                g["lr"] = d_lr

    def state_dict(self, iteration: int) -> dict:
        """The checkpoint entries of this stage's optimisers and schedules."""
        gamma = self.cfg["lr_gamma"]
        out = {"optimizer_g": self.g.state_dict(),
               "scheduler_g": {"base_lr": self.base_lr, "milestones": self.milestones, "gamma": gamma,
                               "iteration": iteration}}
        if self.d is not None:
            out["optimizer_d"] = self.d.state_dict()
            out["scheduler_d"] = {"base_lr": self.cfg["d_lr"], "milestones": self.milestones, "gamma": gamma,
                                  "iteration": iteration}
        return out

    def load_state_dict(self, ck: dict) -> None:
        self.g.load_state_dict(ck["optimizer_g"])
        if self.d is not None and "optimizer_d" in ck:
            self.d.load_state_dict(ck["optimizer_d"])
