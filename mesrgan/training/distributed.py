"""Several processes (``torchrun``): who this process is, and the few collective steps training needs.

With ``WORLD_SIZE > 1`` every process trains a ``DistributedDataParallel`` replica on its share of
each global batch; rank 0 alone logs, validates and writes files. With one process every helper
here is a no-op, so the loop reads the same either way.
"""
from __future__ import annotations

import os
import warnings

import torch

__all__ = ["Dist", "unwrap"]


def unwrap(module):
    """The network inside a ``torch.compile`` and / or DDP wrapper (or the network itself)."""
    module = getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule
    return module.module if hasattr(module, "module") else module


class Dist:
    """torchrun's environment: rank, world size, local rank; collective helpers."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1
        self.device = torch.device("cpu")  # where collective tensors live; set by init()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def init(self, device: torch.device) -> None:
        """Join the process group (NCCL on GPUs, gloo on CPU)."""
        self.device = device if device.type == "cuda" else torch.device("cpu")
        if self.enabled and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def wrap(self, net, **kw):
        """``net`` in a DDP wrapper when there are several processes (``net`` itself otherwise)."""
        if not self.enabled or net is None:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.device.index] if self.device.type == "cuda" else None
        with warnings.catch_warnings():  # newer torch renames broadcast_buffers; the old name still works
            warnings.simplefilter("ignore", FutureWarning)
            return DDP(net, device_ids=ids, **kw)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        """The mean of ``t`` over the processes (the loss of the global batch, not one share's)."""
        if not self.enabled:
            return t
        t = t.to(self.device)
        torch.distributed.all_reduce(t)
        return t / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every process when ``flag`` is true on at least one."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_float(self, value: float) -> float:
        """Rank 0's ``value`` on every process."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return float(t.item())
