"""Where the time goes in whole networks: time per kind of op, forward and training step.

    python -m benchmarks.profile_models [--models esrgan-paper,mesrgan-paper,mesrgan-paper-out]
        [--impl auto] [--lr 32] [--batch 16] [--train-batch 4] [--threads 2] [--json PATH] [--plot PATH]

Runs each network under ``torch.profiler`` (CPU activities) after warm-up calls and sums the time of
the top-level ops by kind: 1×1 conv, 3×3 conv, depthwise 3×3, the fused bottleneck block, activation,
concatenation and other (9×9 convs, adds, pixel shuffle, layout copies, the optimiser, ...). An op's
kind comes from its name and, for convolutions, from the weight's shape. The backward of each op is
counted with its kind (the autograd engine's nodes are unwrapped to the ops they run).

Prints a Markdown table (ms per call and share of the total) and writes a stacked-bar PNG
(matplotlib, the ``bench`` extra) when --plot is given.
"""
import argparse
import json
import os
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from mesrgan.io.atomic import atomic_path, write_text_atomic

KINDS = ("1x1 conv", "3x3 conv", "depthwise", "fused block", "activation", "concat", "other")
MODELS = {  # key -> (preset, overrides)
    "esrgan-paper": ("esrgan-paper", {}),
    "mesrgan-paper": ("mesrgan-paper", {}),
    "mesrgan-paper-out": ("mesrgan-paper", {"hidden_width": "output"}),
}
_ENGINE_PREFIX = "autograd::engine::evaluate_function"


def _conv_kind(weight_shape):
    if len(weight_shape) != 4:
        return "other"
    k, in_per_group = weight_shape[2], weight_shape[1]
    if k == 3 and in_per_group == 1:
        return "depthwise"
    return {1: "1x1 conv", 3: "3x3 conv"}.get(k, "other")


def classify(name, shapes):
    """The kind of one top-level op from its name and its inputs' shapes."""
    n = name.lower()
    if "bottleneck_block" in n:
        return "fused block"
    if "depthwise_conv3x3" in n:
        return "depthwise"
    if "conv" in n and "transpose" not in n:
        # conv2d / convolution / mkldnn_convolution: (input, weight, ...);
        # convolution_backward: (grad_output, input, weight, ...).
        idx = 2 if "backward" in n else 1
        return _conv_kind(shapes[idx]) if len(shapes) > idx else "other"
    if any(a in n for a in ("leaky_relu", "prelu", "relu", "threshold")):
        return "activation"
    if n in ("aten::cat", "aten::_cat") or "cat_backward" in n:
        return "concat"
    return "other"


def _ops_of_node(e):
    """The aten / mesrgan ops an autograd-engine node runs (its first such descendants)."""
    if e.name.startswith(("aten::", "mesrgan::")):
        return [e]
    return [op for child in e.cpu_children for op in _ops_of_node(child)]


def _top_level(events):
    """(op, autograd node name or "") for the ops at the top of the call tree; the autograd engine's
    nodes are unwrapped to the ops they run."""
    out = []
    for e in events:
        if e.cpu_parent is not None:
            continue
        if e.name.startswith(_ENGINE_PREFIX):
            node = e.name[len(_ENGINE_PREFIX):].strip(": ")
            out += [(op, node) for op in _ops_of_node(e)]
        elif e.name.startswith("ProfilerStep"):
            continue
        elif e.name.startswith(("aten::", "mesrgan::")) or not e.cpu_children:
            out.append((e, ""))
        else:  # a Python autograd.Function's forward (the dense stack): the ops it runs
            out += [(op, "") for op in _ops_of_node(e)]
    return out


def profile_step(step, calls=2):
    """ms per call of ``step`` by kind, summed over the top-level ops, and the wall time per call."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        wall = (time.perf_counter() - t0) / calls
    by_kind = defaultdict(float)
    for e, node in _top_level(prof.events()):
        kind = "concat" if "CatBackward" in node else classify(e.name, e.input_shapes or [])
        by_kind[kind] += e.cpu_time_total / 1e3 / calls
    return dict(by_kind), wall * 1e3


def build(key, impl):
    from mesrgan.models import build_generator
    preset, overrides = MODELS[key]
    torch.manual_seed(0)
    return build_generator(preset, scale=4, **overrides, **({"impl": impl} if key != "esrgan-paper" else {}))


def _autocast(precision):
    """``bf16``: torch.autocast on the CPU, as users of recent CPUs run these networks."""
    return torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16")


def forward_step(model, x, precision="fp32"):
    model.eval()

    def step():
        with torch.no_grad(), _autocast(precision):
            model(x)
    return step


def train_step(model, x, hr, precision="fp32"):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(precision):
            loss = F.l1_loss(model(x), hr)
        loss.backward()
        opt.step()
    return step


def run(models, impl, lr, batch, train_batch, warmup=1, precisions=("fp32",)):
    rows = []
    g = torch.Generator().manual_seed(0)
    for precision in precisions:
        for key in models:
            model = build(key, impl)
            for pass_, b in (("forward", batch), ("train step", train_batch)):
                x = torch.rand(b, 3, lr, lr, generator=g)
                step = forward_step(model, x, precision) if pass_ == "forward" else \
                    train_step(model, x, torch.rand(b, 3, 4 * lr, 4 * lr, generator=g), precision)
                for _ in range(warmup):
                    step()
                by_kind, wall = profile_step(step)
                rows.append({"model": key, "precision": precision, "pass": pass_, "batch": b, "lr": lr,
                             "wall_ms": wall, "ms": by_kind})
                print(f"  {key} {precision} {pass_} b{b}: {wall:.0f} ms", flush=True)
    return rows


def markdown(rows):
    head = "| model | precision | pass | batch | " + " | ".join(KINDS) + " | total (profiled) |"
    lines = [head, "|" + "---|" * 4 + "---:|" * (len(KINDS) + 1)]
    for r in rows:
        total = sum(r["ms"].values())
        cells = [f"{r['ms'].get(k, 0):.0f} ({100 * r['ms'].get(k, 0) / total:.0f}%)" for k in KINDS]
        lines.append(f"| {r['model']} | {r.get('precision', 'fp32')} | {r['pass']} | {r['batch']} | "
                     + " | ".join(cells) + f" | {total:.0f} ms |")
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, pass_ in zip(axes, ("forward", "train step")):
        sel = [r for r in rows if r["pass"] == pass_]
        labels = [f"{r['model']} {r.get('precision', 'fp32')}" for r in sel]
        bottom = [0.0] * len(sel)
        for kind in KINDS:
            vals = [r["ms"].get(kind, 0) for r in sel]
            ax.bar(labels, vals, bottom=bottom, label=kind)
            bottom = [b + v for b, v in zip(bottom, vals)]
        b = sel[0]["batch"] if sel else "?"
        ax.set_title(f"{pass_}, LR {sel[0]['lr'] if sel else '?'}, batch {b}")
        ax.set_ylabel("ms per call")
        ax.tick_params(axis="x", labelrotation=15)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=os.path.splitext(path)[1][1:] or "png")


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m benchmarks.profile_models",
                                description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: {', '.join(MODELS)})")
    p.add_argument("--impl", default="auto", choices=("auto", "mesrgan", "torch"),
                   help="the MESRGAN models' depthwise / fused implementation (default auto)")
    p.add_argument("--lr", type=int, default=32, help="LR side of the random input (default 32)")
    p.add_argument("--batch", type=int, default=16, help="forward batch (default 16)")
    p.add_argument("--train-batch", type=int, default=4, help="training-step batch (default 4)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both",
                   help="fp32, bf16 (torch.autocast on the CPU), or both (default)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--plot", metavar="PNG", help="also draw a stacked bar chart (matplotlib)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    rows = run(models, args.impl, args.lr, args.batch, args.train_batch, precisions=precisions)
    print(markdown(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
