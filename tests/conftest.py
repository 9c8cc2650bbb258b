import os

import pytest
import torch

# Without a GPU, the Triton kernels (tests/test_triton_bottleneck.py) run in Triton's interpreter on CPU
# tensors. triton.jit reads TRITON_INTERPRET when triton's own functions and our kernels are decorated
# (at import) and again on every interpreted run, so it is set here, before any test module can import
# triton, for the whole session (nothing else in the suite uses Triton). An explicit
# TRITON_INTERPRET=0 is left alone: the Triton tests then skip.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny networks: on a small shared machine a second
    thread fighting other processes makes them many times slower, and adds nothing."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(params=["avx2", "avx512", "blas"])
def gemm(request):
    """Runs a test with each float32 GEMM of the CPU kernel: ours (AVX2, AVX-512) and ATen's BLAS
    (tests/test_bottleneck.py, tests/test_dense.py); skipped where the CPU does not run one."""
    try:
        if torch.ops.mesrgan._cpu_gemm(request.param) != request.param:
            pytest.skip(f"the CPU (or MESRGAN_CPU_ISA) does not run the {request.param} GEMM")
        yield request.param
    finally:
        torch.ops.mesrgan._cpu_gemm("default")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
