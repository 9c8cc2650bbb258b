"""ONNX export of the generators, the compiled mesrgan ops included.

How: ``torch.export`` captures the model as it runs (``impl="auto"`` modules call our compiled
ops), ``run_decompositions`` rewrites each mesrgan op into standard ATen ops with
:data:`mesrgan.ops.decompositions.DECOMPOSITIONS`, and ``torch.onnx.export`` (the dynamo-based
exporter, which needs ``onnxscript``) translates the result. A depthwise convolution thus arrives
in ONNX as a grouped ``Conv`` followed by its activation (``Relu``, ``Clip``, ``LeakyRelu``).

Why this route rather than an onnxscript translation of each op, or the TorchScript exporter:
a decomposition is plain PyTorch, the same reference path the ops' tests compare against, so
one table serves every op (a fused op decomposes into its several convolutions just as easily),
and nothing depends on the deprecated TorchScript exporter.

Batch, height and width stay dynamic in the exported graph.
"""
from __future__ import annotations

import contextlib
import logging
import os

import torch

from ..io.atomic import atomic_path
from ..ops.decompositions import DECOMPOSITIONS

__all__ = ["DEFAULT_OPSET", "MIN_OPSET", "export_onnx", "compare_onnx", "mesrgan_ops_in"]

#: ONNX opset written by default; the exporter handles MIN_OPSET and later.
DEFAULT_OPSET = 18
MIN_OPSET = 18
_INPUT, _OUTPUT = "lr", "sr"


def mesrgan_ops_in(exported) -> set[str]:
    """Names of the ``torch.ops.mesrgan`` ops a ``torch.export.ExportedProgram`` still calls."""
    return {str(n.target) for n in exported.graph.nodes
            if n.op == "call_function" and str(n.target).startswith("mesrgan.")}


def _exported_program(model, example):
    """``torch.export`` of ``model`` on ``example`` with batch, height and width dynamic, then
    every mesrgan op decomposed into standard ops."""
    dim = torch.export.Dim.DYNAMIC
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: dim, 2: dim, 3: dim},))
    table = torch.export.default_decompositions()
    table.update(DECOMPOSITIONS)
    exported = exported.run_decompositions(table)
    left = mesrgan_ops_in(exported)
    if left:
        raise RuntimeError(f"no decomposition for the op(s) {sorted(left)}: add them to "
                           "mesrgan.ops.decompositions.DECOMPOSITIONS")
    return exported


def export_onnx(model, path, *, opset: int = DEFAULT_OPSET, example_size=(2, 3, 24, 32)) -> str:
    """Export a generator to an ONNX file.

    Args:
        model: ``nn.Module`` mapping ``(N, C, H, W)`` to ``(N, C', s*H, s*W)`` in float32 on the CPU
            (it is put in eval mode).
        path: the ``.onnx`` file to write; written through a temporary file and a rename.
        opset: ONNX opset version, ``>= MIN_OPSET``.
        example_size: the ``(N, C, H, W)`` traced; N, H and W stay dynamic, so any size runs.
            Sizes of 0 or 1 would be fixed by the tracer, and equal H and W could be merged.

    Returns:
        ``path``. The graph has one input ``"lr"`` ``(N, C, H, W)`` and one output ``"sr"``.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f"opset must be an int >= {MIN_OPSET}, got {opset!r}")
    n, c, h, w = example_size
    if min(n, h, w) < 2:
        raise ValueError(f"example_size needs N, H and W >= 2 to keep them dynamic, got {tuple(example_size)}")
    model = model.eval()
    example = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(0))
    exported = _exported_program(model, example)
    with _quiet_exporter():
        program = torch.onnx.export(exported, dynamo=True, opset_version=opset, input_names=[_INPUT],
                                    output_names=[_OUTPUT], verbose=False)
    path = os.fspath(path)
    with atomic_path(path) as tmp:
        program.save(tmp)
    return path


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter warns that torchvision's detection ops cannot be registered when torchvision is
    not installed: noise for a super-resolution network, which uses none of them."""
    log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def compare_onnx(model, path, size=(1, 3, 19, 27), seed: int = 0) -> float:
    """Run the ONNX file in onnxruntime and ``model`` in PyTorch on one random input of ``size``
    (by default another size than the export's); returns the largest absolute difference."""
    import numpy as np
    import onnxruntime

    x = torch.rand(*size, generator=torch.Generator().manual_seed(seed))
    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    got = session.run([_OUTPUT], {_INPUT: x.numpy()})[0]
    with torch.no_grad():
        want = model.eval()(x).numpy()
    if got.shape != want.shape:
        raise RuntimeError(f"onnxruntime gave shape {got.shape}, PyTorch {want.shape}")
    return float(np.abs(got.astype(np.float64) - want).max())
