"""Shared pieces of the benchmark suites: run settings, timing, byte counts, correctness checks.

Timing rules (the same for every benchmark of the suite):

* The function pytest-benchmark times ends with ``torch.cuda.synchronize()`` on CUDA, so a round is
  the wall time of a call as a synchronous caller sees it (launch overhead included).
* Warm-up calls run before timing (module load, cuDNN handle creation and, with the cuDNN autotuner
  on, its search stay out of the numbers).
* The number of rounds follows pytest-benchmark's own ``--benchmark-max-time`` and
  ``--benchmark-min-rounds`` (rounds = max(min_rounds, max_time / one call)), capped per suite
  where a call takes seconds (see :class:`Settings`).
* On CUDA the op suite also measures device time with CUDA events over back-to-back launches that
  rotate between several input sets, so that the L2 cache does not hold the data between calls.
  GB/s and the fraction of a device-to-device copy come from that device time.
"""
import contextlib
import math
import os
import time
from dataclasses import dataclass

import pytest
import torch

ENV_FULL = "MESRGAN_BENCH_FULL"
ENV_DEVICE = "MESRGAN_BENCH_DEVICE"

# Rotated input sets in device-time loops must add up to at least this many bytes: several times
# the L2 of current GPUs (50 MB on H100, 60 MB on H200), so that each call reads from memory.
COLD_BYTES = 256 * 2**20
MAX_INPUT_SETS = 32


def _truthy(value):
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """What a run measures, from the command line (benchmarks/conftest.py) and the environment."""

    devices: tuple      # ("cpu",), ("cuda",) or both
    full: bool          # full sizes on CPU too (CUDA always gets full sizes)
    min_rounds: int     # pytest-benchmark's --benchmark-min-rounds
    max_time: float     # pytest-benchmark's --benchmark-max-time (seconds per benchmark)
    models: tuple       # preset keys of benchmarks/test_models.py to run

    def is_full(self, device):
        return self.full or device == "cuda"


def settings_from_config(config):
    device = config.getoption("bench_device") or os.environ.get(ENV_DEVICE, "auto")
    if device == "auto":
        devices = ("cuda",) if torch.cuda.is_available() else ("cpu",)
    elif device == "all":
        devices = ("cpu", "cuda")
    else:
        devices = (device,)
    if "cuda" in devices and not torch.cuda.is_available():
        raise pytest.UsageError(f"--bench-device={device} asks for CUDA, but torch.cuda.is_available() is False")
    full = bool(config.getoption("bench_full")) or _truthy(os.environ.get(ENV_FULL, "0"))
    models = config.getoption("bench_models")
    return Settings(
        devices=devices,
        full=full,
        min_rounds=int(config.getoption("benchmark_min_rounds")),
        max_time=float(config.getoption("benchmark_max_time")),
        models=tuple(m.strip() for m in models.split(",") if m.strip()) if models else (),
    )


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def cudnn_autotuner(enabled):
    """Sets ``torch.backends.cudnn.benchmark`` for the block (None: leave it as it is)."""
    if enabled is None:
        yield
        return
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


@contextlib.contextmanager
def exact_fp32():
    """No TF32 in convolutions and matmuls: correctness checks compare true fp32 results."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def run_benchmark(benchmark, fn, *, device, settings, warmup=1, max_rounds=None):
    """Times ``fn`` (synchronised on CUDA) with pytest-benchmark after ``warmup`` untimed calls.

    Returns the median seconds per call.
    """
    def timed():
        fn()
        sync(device)

    for _ in range(warmup):
        timed()
    t0 = time.perf_counter()
    timed()
    one = max(time.perf_counter() - t0, 1e-7)
    rounds = max(settings.min_rounds, min(int(settings.max_time / one), 100_000))
    if max_rounds is not None:
        rounds = max(1, min(rounds, max_rounds))
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else one


def input_sets(tensor_bytes):
    """How many input sets a device-time loop rotates through to keep the L2 cache cold."""
    return max(1, min(MAX_INPUT_SETS, math.ceil(COLD_BYTES / max(tensor_bytes, 1))))


def device_time(fns, device, *, target_s=0.01, repeats=5):
    """Median seconds per call of back-to-back calls rotating through ``fns`` (one per input set).

    CUDA: CUDA events around the loop, no synchronisation between calls, so this is the device's
    throughput time (host overhead only shows where the host cannot keep the GPU busy).
    CPU: ``time.perf_counter`` around the same loop.
    """
    for f in fns:
        f()
    sync(device)
    t0 = time.perf_counter()
    fns[0]()
    sync(device)
    one = max(time.perf_counter() - t0, 1e-7)
    iters = max(len(fns), min(2000, int(target_s / one)))
    samples = []
    for _ in range(repeats):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(iters):
                fns[i % len(fns)]()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / iters)
        else:
            t0 = time.perf_counter()
            for i in range(iters):
                fns[i % len(fns)]()
            samples.append((time.perf_counter() - t0) / iters)
    samples.sort()
    return samples[len(samples) // 2]


def rel_error(out, ref):
    """‖out − ref‖ / ‖ref‖ in float64 (inf if out has a NaN or Inf)."""
    # On the tensors' own device: a float64 copy of a large tensor is slow to build on the CPU.
    out = out.detach().to(ref.device).double()
    ref = ref.detach().double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ‖out − ref‖ / ‖ref‖ allowed against a float32 or float64 reference, per dtype of the computation.
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def check_close(name, out, ref, tol):
    err = rel_error(out, ref)
    if not err <= tol:
        pytest.fail(f"{name}: relative error {err:.3g} against the reference exceeds {tol:.3g}; "
                    "a wrong result is not timed")
    return err


def dtype_name(dtype):
    return str(dtype).replace("torch.", "")


def shape_name(shape):
    return "x".join(str(s) for s in shape)


def env_info(device):
    """extra_info fields that say under which settings a number was taken."""
    info = {"device": device, "torch": torch.__version__}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        info.update(threads=torch.get_num_threads())
    return info
