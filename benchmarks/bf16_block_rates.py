"""MAC rates of the fused block's bfloat16 forward at MESRGAN-paper's dense-layer shapes, next to
oneDNN's bfloat16 3x3 convolution (what ESRGAN-paper's dense layers run) on the same machine.

    python -m benchmarks.bf16_block_rates [--sizes 32x16,128x1] [--lite] [--reps 7] [--no-conv]

One thread, thread CPU time (``time.thread_time``: a figure that a shared machine's other processes
disturb far less than wall time; a ratio of two figures is still the safer reading). Each layer
writes into a channel slice of a dense block's channels_last buffer, as the model's layers do
(``torch.ops.mesrgan._bottleneck_block_out``); inputs are random, never all zero. Per layer: the median
time and GMAC/s (expand + depthwise + project MACs), then oneDNN's 3x3 convolution c_in -> 32 at the same
size. For a per-stage split, build with stage timers that register
``torch.ops.mesrgan._bf16_stage_ns(bool reset) -> int[]`` (nanoseconds: expand, depthwise, -, skip,
project, -, per-call set-up); when that op exists its figures are printed too.
"""
import argparse
import statistics
import time

import torch

import mesrgan  # noqa: F401  (registers torch.ops.mesrgan)

STAGES = ["expand", "dw", "h2round", "skip", "project", "narrow", "setup"]


def median_seconds(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.thread_time_ns()
        fn()
        times.append(time.thread_time_ns() - t0)
    return statistics.median(times) * 1e-9


def dense_layers(lite):
    """(c_in, hidden, c_out) of MESRGAN-paper's five dense-block layers (growth 32, 64 features)."""
    layers = [(64 + 32 * i, 32 if i < 4 else 64) for i in range(5)]
    return [(c_in, 2 * (c_out if lite else c_in), c_out) for c_in, c_out in layers]


def layer_params(c_in, hidden, c_out, g):
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)
    return (rnd(hidden, c_in, 1, 1, scale=c_in ** -0.5), rnd(hidden, scale=0.1), rnd(hidden, 1, 3, 3, scale=1 / 3),
            rnd(hidden, scale=0.1), rnd(c_out, hidden, 1, 1, scale=hidden ** -0.5), rnd(c_out, scale=0.1))


def run(sizes, lite, reps, conv):
    torch.set_num_threads(1)
    stages = getattr(torch.ops.mesrgan, "_bf16_stage_ns", None)
    g = torch.Generator().manual_seed(0)
    total_macs = total_s = 0.0
    for lr, batch in sizes:
        layers = dense_layers(lite)
        width = layers[-1][0]  # the buffer holds the features and every layer's output but the last's
        buf = torch.randn(batch, width, lr, lr, generator=g).to(torch.bfloat16)
        buf = buf.contiguous(memory_format=torch.channels_last)
        for c_in, hidden, c_out in layers:
            params = layer_params(c_in, hidden, c_out, g)
            if c_in + c_out <= width:
                out = buf[:, c_in:c_in + c_out]
            else:
                out = torch.empty(batch, c_out, lr, lr, dtype=torch.bfloat16, memory_format=torch.channels_last)
            x = buf[:, :c_in]

            def layer():
                torch.ops.mesrgan._bottleneck_block_out(x, *params, False, 0.2, out)
            layer()
            if stages:
                stages(True)
            s = median_seconds(layer, reps)
            pixels = batch * lr * lr
            macs = pixels * (c_in * hidden + 9 * hidden + hidden * c_out)
            total_macs += macs
            total_s += s
            line = f"LR {lr} batch {batch} {c_in:3d} -> {hidden:3d} -> {c_out:2d}: {s * 1e3:7.2f} ms {macs / s / 1e9:6.1f} GMAC/s"
            if stages:
                stage_macs = {"expand": c_in * hidden, "dw": 9 * hidden, "project": hidden * c_out}
                parts = []
                for name, ns in zip(STAGES, stages(True)):
                    if ns:
                        per_call = ns / reps
                        rate = f" ({pixels * stage_macs[name] / per_call:.0f} GMAC/s)" if name in stage_macs else ""
                        parts.append(f"{name} {per_call * 1e-6:.2f} ms{rate}")
                line += " | " + ", ".join(parts)
            print(line, flush=True)
            if conv:
                xc = torch.randn(batch, c_in, lr, lr, generator=g).to(torch.bfloat16)
                xc = xc.contiguous(memory_format=torch.channels_last)
                wc = (torch.randn(32, c_in, 3, 3, generator=g) / (3 * c_in ** 0.5)).to(torch.bfloat16)
                wc = wc.contiguous(memory_format=torch.channels_last)
                bc = torch.zeros(32, dtype=torch.bfloat16)

                def conv3x3():
                    torch.nn.functional.conv2d(xc, wc, bc, padding=1)
                conv3x3()
                sc = median_seconds(conv3x3, reps)
                cm = pixels * c_in * 32 * 9
                print(f"    oneDNN 3x3 conv {c_in:3d} -> 32: {sc * 1e3:7.2f} ms {cm / sc / 1e9:6.1f} GMAC/s", flush=True)
    print(f"fused block, all layers: {total_s * 1e3:.1f} ms, {total_macs / total_s / 1e9:.1f} GMAC/s")


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="32x16,128x1", help="LRxBATCH, comma-separated (default 32x16,128x1)")
    p.add_argument("--lite", action="store_true", help='hidden width from the output ("lite": hidden_width="output")')
    p.add_argument("--reps", type=int, default=7, help="timed calls per layer (median; default 7)")
    p.add_argument("--no-conv", action="store_true", help="leave out oneDNN's 3x3 convolution")
    a = p.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    threads = torch.get_num_threads()
    try:
        run(sizes, a.lite, a.reps, not a.no_conv)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
