"""Where the time goes in whole networks: time per kind of op, forward and training step.

    python -m benchmarks.profile_models [--models esrgan-paper,mesrgan-paper,mesrgan-paper-out]
        [--device cpu|cuda] [--precision fp32|bf16|both] [--impl auto] [--lr 32] [--batch 16]
        [--train-batch 4] [--threads 2] [--json PATH] [--plot PATH]

Runs each network under ``torch.profiler`` after warm-up calls and sums the time of the top-level
ops by kind: 1×1 conv, 3×3 conv, depthwise 3×3, the fused bottleneck block, activation,
concatenation and other (9×9 convs, adds, pixel shuffle, layout copies, the optimiser, ...). An op's
kind comes from its name and, for convolutions, from the weight's shape. The backward of each op is
counted with its kind (the autograd engine's nodes are unwrapped to the ops they run).

On the CPU an op's time is its CPU time (``cpu_time_total``). With ``--device cuda`` the profiler
records CUDA activities too, and an op's time is the GPU time of the kernels it (and the ops it
calls) launched (``device_time_total``; ``cuda_time_total`` on older torch); beside it each row gives
the wall time per step, measured between ``torch.cuda.synchronize()`` calls, so launch overhead
shows as wall time the kernels do not fill. NOT YET RUN ON A GPU: the CUDA path is tested on the
CPU only (synthetic profiler events).

Prints a Markdown table (ms per call and share of the total) and writes a stacked-bar PNG
(matplotlib, the ``bench`` extra) when --plot is given.
"""
import argparse
import json
import os
import time
from collections import defaultdict

# Kineto (torch.profiler's engine) logs every profiler start and stop ("USDT: ... profiler_start"),
# and on a machine without a GPU an "ERROR: gpuGetDeviceCount failed": noise around the tables.
# Above its highest level (5) it logs nothing; read when torch starts the profiler, so set here.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402
import torch.nn.functional as F
from torch.autograd import DeviceType

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


def _on_host(e):
    """A CPU-side event. With CUDA activities the GPU kernels are events too, without a parent: their
    time is already in the op that launched them (its ``kernels``), so they are not ops of their own."""
    device_type = getattr(e, "device_type", DeviceType.CPU)
    return device_type == DeviceType.CPU


def _top_level(events):
    """(op, autograd node name or "") for the ops at the top of the call tree; the autograd engine's
    nodes are unwrapped to the ops they run."""
    out = []
    for e in events:
        if e.cpu_parent is not None or not _on_host(e):
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


def op_time_us(event, device_type):
    """The time of one top-level op in µs: its CPU time, or on CUDA the GPU time of the kernels it
    and its children launched (``device_time_total`` since torch 2.4, ``cuda_time_total`` before)."""
    if device_type != "cuda":
        return event.cpu_time_total
    total = getattr(event, "device_time_total", None)
    return event.cuda_time_total if total is None else total


def time_by_kind(top_level, device_type, calls):
    """ms per call by kind over ``(op event, autograd node name)`` pairs (see :func:`_top_level`)."""
    by_kind = defaultdict(float)
    for e, node in top_level:
        kind = "concat" if "CatBackward" in node else classify(e.name, e.input_shapes or [])
        by_kind[kind] += op_time_us(e, device_type) / 1e3 / calls
    return dict(by_kind)


def _sync(device_type):
    if device_type == "cuda":  # the step's kernels run after it returns: wait for them
        torch.cuda.synchronize()


def profile_step(step, calls=2, device_type="cpu"):
    """ms per call of ``step`` by kind, summed over the top-level ops (CPU time, or on CUDA kernel
    time), and the wall time per call (on CUDA up to the end of its kernels)."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as prof:
        _sync(device_type)
        t0 = time.perf_counter()
        for _ in range(calls):
            step()
        _sync(device_type)
        wall = (time.perf_counter() - t0) / calls
    return time_by_kind(_top_level(prof.events()), device_type, calls), wall * 1e3


def build(key, impl):
    from mesrgan.models import build_generator
    preset, overrides = MODELS[key]
    torch.manual_seed(0)
    return build_generator(preset, scale=4, **overrides, **({"impl": impl} if key != "esrgan-paper" else {}))


def _autocast(precision, device_type):
    """``bf16``: torch.autocast on the model's device, as users of recent CPUs and GPUs run these networks."""
    return torch.autocast(device_type, torch.bfloat16, enabled=precision == "bf16")


def forward_step(model, x, precision="fp32"):
    model.eval()

    def step():
        with torch.no_grad(), _autocast(precision, x.device.type):
            model(x)
    return step


def train_step(model, x, hr, precision="fp32"):
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast(precision, x.device.type):
            loss = F.l1_loss(model(x), hr)
        loss.backward()
        opt.step()
    return step


def run(models, impl, lr, batch, train_batch, warmup=1, precisions=("fp32",), device="cpu"):
    rows = []
    dev = torch.device(device)
    g = torch.Generator().manual_seed(0)
    for precision in precisions:
        for key in models:
            model = build(key, impl).to(dev)
            for pass_, b in (("forward", batch), ("train step", train_batch)):
                x = torch.rand(b, 3, lr, lr, generator=g).to(dev)
                step = forward_step(model, x, precision) if pass_ == "forward" else \
                    train_step(model, x, torch.rand(b, 3, 4 * lr, 4 * lr, generator=g).to(dev), precision)
                for _ in range(warmup):
                    step()
                by_kind, wall = profile_step(step, device_type=dev.type)
                rows.append({"model": key, "device": dev.type, "precision": precision, "pass": pass_, "batch": b,
                             "lr": lr, "wall_ms": wall, "ms": by_kind})
                print(f"  {key} {dev.type} {precision} {pass_} b{b}: {wall:.0f} ms", flush=True)
    return rows


def markdown(rows):
    """One row per (model, precision, pass): ms per call by kind (CPU time on the CPU, kernel time
    on CUDA), their total, and the wall time per step (on CUDA up to the end of its kernels)."""
    head = "| model | precision | pass | batch | " + " | ".join(KINDS) + " | total (profiled) | wall per step |"
    lines = [head, "|" + "---|" * 4 + "---:|" * (len(KINDS) + 2)]
    for r in rows:
        total = sum(r["ms"].values())
        cells = [f"{r['ms'].get(k, 0):.0f} ({100 * r['ms'].get(k, 0) / total:.0f}%)" for k in KINDS]
        lines.append(f"| {r['model']} | {r.get('precision', 'fp32')} | {r['pass']} | {r['batch']} | "
                     + " | ".join(cells) + f" | {total:.0f} ms | {r['wall_ms']:.0f} ms |")
    return "\n".join(lines)


def _time_note(device_type):
    if device_type == "cuda":
        return ("ms per call by kind = GPU kernel time of the top-level ops (CUDA activities); wall per step = host "
                "time between torch.cuda.synchronize() calls")
    return "ms per call by kind = CPU time of the top-level ops; wall per step = host time"


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
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu (default; CPU time per op) or cuda (GPU kernel time per op, CUDA activities; "
                   "not yet run on a GPU)")
    p.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both",
                   help="fp32, bf16 (torch.autocast on the device), or both (default)")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--plot", metavar="PNG", help="also draw a stacked bar chart (matplotlib)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False)")
    torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; known: {', '.join(MODELS)}")
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    rows = run(models, args.impl, args.lr, args.batch, args.train_batch, precisions=precisions, device=args.device)
    print(_time_note(args.device))
    print(markdown(rows))
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
