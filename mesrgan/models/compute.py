"""Parameters and multiply-accumulates, counted with forward hooks on a real forward pass.

The forward runs on the meta device, so shapes are exact for any input size and nothing is computed.
Every convolution is counted as ``output elements × (input channels / groups) × kernel area``;
element-wise work (activations, additions, interpolation, pixel shuffle) is not counted.
"""
import torch
from torch import nn

from ..ops import DepthwiseConv3x3
from .blocks import BottleneckResidualBlock, DenseBlock
from .presets import build_generator

KINDS = ("conv3x3", "conv1x1", "depthwise", "other")

# (label, preset, overrides, label of the ESRGAN it is compared with or None)
DEFAULT_MODELS = (
    ("srgan", "srgan", {}, None),
    ("esrgan (1 DB/RRDB)", "esrgan", {}, None),
    ("mesrgan (1 DB/RRDB), hidden=input", "mesrgan", {"hidden_width": "input"}, "esrgan (1 DB/RRDB)"),
    ("mesrgan (1 DB/RRDB), hidden=output", "mesrgan", {"hidden_width": "output"}, "esrgan (1 DB/RRDB)"),
    ("esrgan (3 DB/RRDB, original)", "esrgan", {"dense_blocks": 3}, None),
    ("mesrgan (3 DB/RRDB), hidden=input", "mesrgan", {"dense_blocks": 3, "hidden_width": "input"},
     "esrgan (3 DB/RRDB, original)"),
    ("mesrgan (3 DB/RRDB), hidden=output", "mesrgan", {"dense_blocks": 3, "hidden_width": "output"},
     "esrgan (3 DB/RRDB, original)"),
    ("esrgan-paper", "esrgan-paper", {}, None),
    ("mesrgan-paper, hidden=input", "mesrgan-paper", {"hidden_width": "input"}, "esrgan-paper"),
    ("mesrgan-paper, hidden=output", "mesrgan-paper", {"hidden_width": "output"}, "esrgan-paper"),
)


def _kind(module):
    if isinstance(module, DepthwiseConv3x3):
        return "depthwise"
    if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
        return "depthwise"
    k = tuple(module.kernel_size)
    return {(1, 1): "conv1x1", (3, 3): "conv3x3"}.get(k, "other")


def count_macs(model, input_shape):
    """MACs of one forward pass of ``model`` on a meta tensor of ``input_shape``, by kind.

    Args:
        model: an ``nn.Module`` on the meta device (or any device: the input is created on the
            device of its first parameter, so a real model really runs).
        input_shape: e.g. ``(1, 3, H, W)``.

    Returns:
        ``{"conv3x3", "conv1x1", "depthwise", "other", "total", "dense_layers"}`` as ints, where
        ``dense_layers`` is the part spent inside dense blocks (the layers MESRGAN replaces).
    """
    counts = dict.fromkeys(KINDS + ("dense_layers",), 0)
    inside_dense = {id(m) for block in model.modules() if isinstance(block, DenseBlock) for m in block.modules()}

    def hook(module, inputs, output):
        if isinstance(module, DepthwiseConv3x3):
            macs = output.numel() * 9
        else:
            macs = output.numel() * (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        counts[_kind(module)] += macs
        if id(module) in inside_dense:
            counts["dense_layers"] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, DepthwiseConv3x3))]
    try:
        param = next(model.parameters())
        with torch.no_grad():
            model(torch.empty(input_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
    counts["total"] = sum(counts[k] for k in KINDS)
    return counts


def compute_report(models=DEFAULT_MODELS, sizes=(32, 128), scale=4):
    """Parameters and MACs per model and LR input size, with the MESRGAN / ESRGAN ratios.

    Args:
        models: sequence of ``(label, preset, overrides, baseline label or None)``; the default
            covers SRGAN, ESRGAN with 1 and 3 dense blocks per RRDB, MESRGAN with both hidden-width
            choices, and the "-paper" presets.
        sizes: LR input side lengths (square inputs, batch 1).
        scale: upscaling factor.

    Returns:
        a list of dicts, one per (size, model): ``label, model, overrides, size, params`` and the
        MAC counts of :func:`count_macs`, plus ``ratio_total`` and ``ratio_dense_layers`` against the
        baseline (None where there is none).
    """
    rows = []
    for size in sizes:
        by_label = {}
        for label, name, overrides, baseline in models:
            with torch.device("meta"):
                model = build_generator(name, scale=scale, **overrides)
            macs = count_macs(model, (1, 3, size, size))
            row = {"label": label, "model": name, "overrides": dict(overrides), "size": size,
                   "params": sum(p.numel() for p in model.parameters()), **macs,
                   "ratio_total": None, "ratio_dense_layers": None}
            if baseline is not None:
                if baseline not in by_label:
                    raise ValueError(f"baseline {baseline!r} of {label!r} must come earlier in models")
                base = by_label[baseline]
                row["ratio_total"] = macs["total"] / base["total"]
                row["ratio_dense_layers"] = macs["dense_layers"] / base["dense_layers"]
            by_label[label] = row
            rows.append(row)
    return rows


def layer_macs(in_channels=64, out_channels=64, size=128, expansion=2, hidden_width="input"):
    """MACs of one 3×3 convolution and of the bottleneck block replacing it, at ``size × size``.

    Returns ``(conv_macs, bottleneck_macs)``, measured like :func:`count_macs` (the paper's
    per-layer example is 64 → 64 at 128 × 128).
    """
    with torch.device("meta"):
        conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        brb = BottleneckResidualBlock(in_channels, out_channels, expansion, hidden_width, impl="torch")
    shape = (1, in_channels, size, size)
    return count_macs(conv, shape)["total"], count_macs(brb, shape)["total"]


def _g(n):
    return f"{n / 1e9:.2f}"


def format_compute_table(rows):
    """Markdown table of :func:`compute_report` rows (MACs in G = 10⁹, parameters in M = 10⁶)."""
    lines = ["| LR input | model | params (M) | 3×3 dense | 1×1 | depthwise | other (9×9) | total GMACs "
             "| dense-block layers | vs ESRGAN: total | vs ESRGAN: dense-block layers |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rt = "" if r["ratio_total"] is None else f"{r['ratio_total']:.2f}"
        rd = "" if r["ratio_dense_layers"] is None else f"{r['ratio_dense_layers']:.2f}"
        lines.append(f"| {r['size']}×{r['size']} | {r['label']} | {r['params'] / 1e6:.3f} | {_g(r['conv3x3'])} "
                     f"| {_g(r['conv1x1'])} | {_g(r['depthwise'])} | {_g(r['other'])} | {_g(r['total'])} "
                     f"| {_g(r['dense_layers'])} | {rt} | {rd} |")
    return "\n".join(lines)
