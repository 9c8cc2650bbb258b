"""Peak memory of a training step on the CPU, impl="torch" against our kernels (impl="auto").

    python -m benchmarks.peak_memory [--models mesrgan-paper,mesrgan-paper-out] [--batches 4,16]
                                     [--lr 32] [--threads 2]

Each (preset, impl, batch) runs in a fresh Python process, so that one's memory cannot hide
another's: build the generator, run two training steps (zero_grad, forward, L1 loss to a random HR
target, backward, Adam), then reset the kernel's peak-RSS counter (``/proc/self/clear_refs``), run a
third step and read the peak (``VmHWM``). The figure is that peak minus the resident set just before
the step: the memory the step itself takes (activations saved for backward, gradients, scratch),
with the model and its Adam state counted out. glibc's malloc is told to map every block of
64 KiB or more on its own (``MALLOC_MMAP_THRESHOLD_``), so that a freed tensor leaves the resident
set at once and the figure follows live memory, not what the allocator happened to keep. Our ops keep recycled
output blocks (``MESRGAN_CPU_CACHE_MB``, idle blocks count as resident); the run is repeated with
that cache off. Linux only (``/proc``).
"""
import argparse
import json
import os
import subprocess
import sys

MODELS = {  # key -> (build_generator preset, overrides), as in benchmarks/test_models.py
    "mesrgan-paper": ("mesrgan-paper", {}),
    "mesrgan-paper-out": ("mesrgan-paper", {"hidden_width": "output"}),
}

_CHILD = r"""
import json, os, sys
import torch, torch.nn.functional as F
from mesrgan.models import build_generator
preset, impl, batch, lr, threads, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), json.loads(sys.argv[6])
torch.set_num_threads(threads)
torch.manual_seed(0)
net = build_generator(preset, impl=impl, **overrides)
opt = torch.optim.Adam(net.parameters(), 1e-4)
lr_img = torch.rand(batch, 3, lr, lr)
hr_img = torch.rand(batch, 3, 4 * lr, 4 * lr)
def step():
    opt.zero_grad(set_to_none=True)
    F.l1_loss(net(lr_img), hr_img).backward()
    opt.step()
def status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))
step(); step()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets VmHWM to the current resident set
before = status_kb("VmRSS")
step()
print(json.dumps({"peak_step_mib": (status_kb("VmHWM") - before) / 1024, "rss_before_mib": before / 1024}))
"""


def measure(model, impl, batch, lr, threads, cache_mb=None):
    """The step's peak above the resident set before it (MiB), and that resident set, for one run."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MALLOC_MMAP_THRESHOLD_="65536")
    if cache_mb is not None:
        env["MESRGAN_CPU_CACHE_MB"] = str(cache_mb)
    preset, overrides = MODELS[model]
    out = subprocess.run([sys.executable, "-c", _CHILD, preset, impl, str(batch), str(lr), str(threads),
                          json.dumps(overrides)], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m benchmarks.peak_memory",
                                description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated (default: all: {', '.join(MODELS)})")
    p.add_argument("--batches", default="4,16", help="comma-separated batch sizes (default 4,16)")
    p.add_argument("--lr", type=int, default=32, help="LR side of the random input (default 32)")
    p.add_argument("--threads", type=int, default=2, help="torch threads in each measuring process (default 2)")
    args = p.parse_args(argv)
    if not os.path.exists("/proc/self/clear_refs"):
        sys.exit("peak_memory: needs Linux's /proc/self/clear_refs")
    models = args.models.split(",")
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"peak_memory: unknown model {unknown[0]!r}; known: {', '.join(MODELS)}")
    print("| model | batch | impl=torch | ours (impl=auto) | ours, output cache off | ours ÷ torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in models:
        for batch in (int(b) for b in args.batches.split(",")):
            # progress on stderr: each measurement is a fresh process, minutes in all at batch 16
            print(f"measuring {model} batch {batch}: impl=torch, ours, ours without the cache ...",
                  file=sys.stderr, flush=True)
            torch_mib = measure(model, "torch", batch, args.lr, args.threads)["peak_step_mib"]
            ours = measure(model, "auto", batch, args.lr, args.threads)["peak_step_mib"]
            ours_nocache = measure(model, "auto", batch, args.lr, args.threads, cache_mb=0)["peak_step_mib"]
            print(f"| {model} | {batch} | {torch_mib:.0f} MiB | {ours:.0f} MiB | {ours_nocache:.0f} MiB | "
                  f"{ours / torch_mib:.2f}× |", flush=True)


if __name__ == "__main__":
    main()
