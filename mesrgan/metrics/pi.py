"""The perceptual index of PIRM 2018, ``PI = ((10 - Ma) + NIQE) / 2``, where it can be computed.

NIQE is ours (:func:`mesrgan.metrics.niqe`). Ma et al.'s score (NRQM, "Learning a no-reference
quality metric for single-image super-resolution", 2017) is a learned model (regression forests on
hand-made features) whose parameters no package here ships. pyiqa ships an implementation of it
and fetches its parameters on first use. So: when pyiqa is importable and its NRQM loads, Ma
comes from there; otherwise PI is not computed, and :func:`ma_scorer` says why in one line. No
substitute for Ma is ever used.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import torch

__all__ = ["ma_scorer", "perceptual_index"]


def perceptual_index(ma: float, niqe: float) -> float:
    """PIRM 2018's perceptual index, lower is better: ``((10 - ma) + niqe) / 2``."""
    return ((10.0 - ma) + niqe) / 2.0


def ma_scorer(device="cpu"):
    """``(score, None)`` with ``score(uint8 (H, W, 3) RGB) -> float`` Ma et al.'s NRQM, or ``(None, why)``.

    ``why`` is one line for a report: the reason PI is missing.
    """
    if importlib.util.find_spec("pyiqa") is None:
        return None, ("PI not computed: it needs Ma et al.'s learned NRQM model, which no installed "
                      "package ships (pyiqa has it: pip install pyiqa, with its NRQM weights)")
    try:
        import pyiqa
        metric = pyiqa.create_metric("nrqm", device=torch.device(device))
    except Exception as e:  # noqa: BLE001 - any failure to load means: no Ma, say why
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return None, f"PI not computed: pyiqa's NRQM model (Ma et al.) could not be loaded: {first_line}"

    def score(img_u8: np.ndarray) -> float:
        x = torch.from_numpy(np.ascontiguousarray(img_u8)).permute(2, 0, 1)[None].float().div(255)
        with torch.no_grad():
            return float(metric(x.to(device)).reshape(-1)[0])

    return score, None
