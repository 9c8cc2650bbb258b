"""Options of the benchmark suites (``pytest benchmarks --benchmark-only --help`` lists them)."""
import os
import platform

import pytest
import torch
from pytest_benchmark.utils import safe_dumps

from benchmarks._common import ENV_DEVICE, ENV_FULL, settings_from_config
from mesrgan.io.atomic import write_text_atomic

DEFAULT_MODELS = "srgan,esrgan-paper,mesrgan-paper,mesrgan-paper-out"


def pytest_addoption(parser):
    group = parser.getgroup("mesrgan benchmarks")
    group.addoption("--bench-full", action="store_true", default=False,
                    help=f"full sizes on CPU too (env {ENV_FULL}=1); CUDA always runs the full sizes")
    group.addoption("--bench-device", choices=("auto", "cpu", "cuda", "all"), default=None,
                    help=f"device(s) to benchmark (env {ENV_DEVICE}); auto = cuda if available, else cpu")
    group.addoption("--bench-models", default=DEFAULT_MODELS, metavar="LIST",
                    help="comma-separated model presets for Table I (default: %(default)s; "
                         "also: esrgan, mesrgan, mesrgan-out, the canonical 23-RRDB skeletons)")
    group.addoption("--bench-keep-data", action="store_true", default=False,
                    help="keep every round's time in --benchmark-json (dropped by default: the file "
                         "would grow to megabytes; the statistics stay)")


def pytest_configure(config):
    config._mesrgan_bench_settings = settings_from_config(config)


@pytest.fixture(scope="session")
def bench_settings(request):
    return request.config._mesrgan_bench_settings


def pytest_benchmark_update_machine_info(config, machine_info):
    info = {
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "os_cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "bench_devices": list(config._mesrgan_bench_settings.devices),
        "bench_full": config._mesrgan_bench_settings.full,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_sms=props.multi_processor_count,
                    gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    try:
        import mesrgan
        info["mesrgan"] = mesrgan.__version__
        info["mesrgan_with_cuda"] = bool(mesrgan._ext.WITH_CUDA)
    except Exception as e:  # the suite reports the failure itself; the header must still be written
        info["mesrgan"] = f"import failed: {e}"
    machine_info["mesrgan_bench"] = info


def pytest_benchmark_update_json(config, benchmarks, output_json):
    if not config.getoption("bench_keep_data"):
        for b in output_json.get("benchmarks", []):
            b.get("stats", {}).pop("data", None)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """--benchmark-json as it goes: pytest-benchmark writes the file only when the session ends, so a
    run stopped at a time limit left nothing. After each benchmark the file is rewritten (atomically)
    with every result so far; the session's own write at the end replaces it as before."""
    bs = getattr(item.config, "_benchmarksession", None)
    if bs is None or not bs.json or not bs.benchmarks or nextitem is None:
        return
    config = item.config
    if not hasattr(config, "_mesrgan_run_info"):  # py-cpuinfo and git: once per session
        config._mesrgan_run_info = (bs.get_machine_info(),
                                    config.hook.pytest_benchmark_generate_commit_info(config=config))
    machine_info, commit_info = config._mesrgan_run_info
    output = config.hook.pytest_benchmark_generate_json(config=config, benchmarks=bs.benchmarks, include_data=False,
                                                        machine_info=machine_info, commit_info=commit_info)
    config.hook.pytest_benchmark_update_json(config=config, benchmarks=bs.benchmarks, output_json=output)
    write_text_atomic(str(bs.json), safe_dumps(output, ensure_ascii=True, indent=4))
