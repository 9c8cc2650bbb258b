"""Weights shipped inside the package, loaded by name: ``load_pretrained("mesrgan-lite-x4")``.

The files live in ``mesrgan/models/weights/``, stored in float16 (half the size); loading builds
the generator in float32 and copies the stored values in, exactly (every float16 is a float32).
Each file's SHA-256 is recorded here and in its model card (``docs/models/<name>.md``) and checked
on every load, so a damaged install gives an error, never a silently different model.

``python -m mesrgan.models --pack RUN/last.pt OUT.pt`` packs a training checkpoint the same way.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch

from ..io.atomic import atomic_path
from .checkpoint import generator_checkpoint, load_generator

__all__ = ["DEFAULT_PRETRAINED", "PRETRAINED", "Pretrained", "PretrainedError", "load_pretrained",
           "pack_checkpoint", "pretrained_path"]

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


@dataclass(frozen=True)
class Pretrained:
    """One shipped model: its file under ``WEIGHTS_DIR``, that file's SHA-256, and its model card."""
    file: str
    sha256: str
    card: str
    summary: str


PRETRAINED = {
    "mesrgan-lite-x4": Pretrained(
        file="mesrgan-lite-x4.pt",
        sha256="7a7cf0a9bba7581b16f9768c59bf03fab9f5902c93330384d653efb3ce291987",
        card="docs/models/mesrgan-lite-x4.md",
        summary="MESRGAN-paper lite (hidden_width=output), x4, stage 1 (L1), trained on the bundled photographs"),
}
DEFAULT_PRETRAINED = "mesrgan-lite-x4"


class PretrainedError(ValueError):
    """An unknown name, or a shipped file that is missing or not the one recorded."""


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_path(name: str) -> str:
    """The file of shipped model ``name``, after checking it is the one recorded (SHA-256)."""
    if name not in PRETRAINED:
        raise PretrainedError(f"no shipped model named {name!r}; shipped: {', '.join(sorted(PRETRAINED))}")
    entry = PRETRAINED[name]
    path = os.path.join(WEIGHTS_DIR, entry.file)
    if not os.path.isfile(path):
        raise PretrainedError(f"the shipped model {name!r} is missing ({path}); reinstall mesrgan")
    got = _sha256(path)
    if got != entry.sha256:
        raise PretrainedError(f"the shipped model {name!r} ({path}) is damaged: SHA-256 {got[:16]}…, "
                              f"expected {entry.sha256[:16]}…; reinstall mesrgan")
    return path


def load_pretrained(name: str = DEFAULT_PRETRAINED, device="cpu", **overrides):
    """``load_generator`` of a shipped model: ``(generator in float32, eval mode; info)``.

    Args:
        name: one of ``PRETRAINED`` (default ``"mesrgan-lite-x4"``).
        device: where to put the generator.
        **overrides: ``build_generator`` keyword arguments, e.g. ``impl="torch"``.
    """
    return load_generator(pretrained_path(name), device=device, **overrides)


def pack_checkpoint(source: str, dest: str, *, ema: bool = True) -> str:
    """Write the generator of checkpoint ``source`` to ``dest`` in the shipped form: our generator
    format, float16 values. Returns the new file's SHA-256.

    ``ema``: take the moving average of the weights when the checkpoint has one (``--ema``), as
    ``load_generator`` does; False takes the trained generator itself. Refuses a generator with
    values float16 cannot hold (beyond its range), which would not load back as the trained model."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    if not ema and isinstance(checkpoint, dict):
        checkpoint.pop("generator_ema", None)
    generator, info = load_generator(checkpoint)
    state = generator.state_dict()
    for key, value in state.items():
        if value.is_floating_point() and not torch.isfinite(value.half()).all():
            raise PretrainedError(f"{source}: {key} has values beyond float16's range; it cannot be packed")
    checkpoint = generator_checkpoint(info["model"], generator, info["config"])
    checkpoint["generator"] = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    # Saved through a file object: given a path, torch.save names the archive inside after the
    # file, and the temporary file's name would then change the bytes (and the SHA-256).
    with atomic_path(dest) as tmp, open(tmp, "wb") as f:
        torch.save(checkpoint, f)
    return _sha256(dest)

