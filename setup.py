"""Build script for mesrgan's compiled operator (``mesrgan._C``).

Environment variables (see README, "Building"):

* ``MESRGAN_CUDA``: ``auto`` (default) builds the CUDA kernels when the installed torch is a
  CUDA build, a CUDA toolkit is found, and there is a GPU to run them on (one is visible, or
  ``TORCH_CUDA_ARCH_LIST`` names the GPUs to build for); ``1`` forces them (the build fails if it
  cannot); ``0`` builds the CPU kernels only. Compiling the CUDA kernels takes most of an
  install's time (minutes per architecture on a small machine), which a machine without a GPU
  would spend for nothing.
* ``TORCH_CUDA_ARCH_LIST``: honoured as usual. When unset and no GPU is visible (a build with
  ``MESRGAN_CUDA=1``), the short default ``DEFAULT_ARCH_LIST`` below is used instead of torch's
  long list.
* ``CUDA_HOME``: the toolkit root. When unset and ``/usr/local/cuda/bin/nvcc`` exists, that
  toolkit is used (torch would otherwise guess from the ``nvcc`` on PATH, which can be a shim).
* ``MESRGAN_PTXAS_VERBOSE=1``: print ptxas's register / spill / shared-memory report.
* ``MAX_JOBS``: parallel compile jobs (ninja), as usual.
"""
import glob
import os
import sys

from setuptools import setup

# Must run before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import.
if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.6;9.0+PTX"  # A100, RTX 30xx / A10, H100 (+PTX for newer cards)


def log(msg):
    print(f"[mesrgan setup] {msg}", file=sys.stderr, flush=True)


def want_cuda():
    mode = os.environ.get("MESRGAN_CUDA", "auto").strip().lower()
    if mode not in {"auto", "0", "1"}:
        raise SystemExit(f"MESRGAN_CUDA must be 'auto', '0' or '1', got {mode!r}")
    if mode == "0":
        log("MESRGAN_CUDA=0: building the CPU kernels only")
        return False
    reasons = []
    if torch.version.cuda is None:
        reasons.append(f"torch {torch.__version__} is a CPU-only build")
    if CUDA_HOME is None or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        reasons.append(f"no CUDA toolkit found (CUDA_HOME={CUDA_HOME!r}; set CUDA_HOME to the toolkit root)")
    if reasons:
        if mode == "1":
            raise SystemExit("MESRGAN_CUDA=1 but the CUDA kernels cannot be built: " + "; ".join(reasons))
        log("CPU-only build: " + "; ".join(reasons))
        return False
    if mode == "auto" and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        log("CPU-only build: MESRGAN_CUDA=auto, no GPU is visible and TORCH_CUDA_ARCH_LIST is unset. "
            "Set MESRGAN_CUDA=1 (or TORCH_CUDA_ARCH_LIST) to compile the CUDA kernels anyway")
        return False
    return True


def main():
    use_cuda = want_cuda()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    # -fno-trapping-math (PyTorch builds with it too): without it GCC will not vectorise a select such
    # as LeakyReLU's `v > 0 ? v : v * slope` on AVX2, since the multiply runs on one branch only and
    # might trap; the loop stays scalar with a mispredicted branch per value (4 ns a value on an AMD
    # EPYC, a third of the fused block's time). AVX-512's masked lanes hid this on Intel.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"]
    define_macros = []
    # libstdc++ linked as a shared library, whatever the compiler driver's defaults: an extension
    # that carries its own static copy (seen with a g++ wrapper that adds -static-libstdc++) mixes
    # two C++ runtimes with torch's, and then error messages come out truncated or a thrown
    # c10::Error crashes the process. An explicit -lstdc++ resolves every C++ runtime symbol
    # against the shared library before the driver's own (static) one is reached.
    link_flags = ["-lstdc++"] if sys.platform.startswith("linux") else []
    # at::parallel_for is an inline template that runs in parallel only when the including file is
    # compiled with OpenMP (_OPENMP defined); without -fopenmp every CPU kernel would run on one
    # thread. The extension then needs libgomp.so.1, which is the one torch has already loaded.
    if torch._C.has_openmp and sys.platform.startswith("linux"):
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    else:
        log("torch has no OpenMP: the CPU kernels will run on one thread")
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        nvcc_flags = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]
        if os.environ.get("MESRGAN_PTXAS_VERBOSE") == "1":
            nvcc_flags.append("-Xptxas=-v")
        define_macros.append(("MESRGAN_WITH_CUDA", None))
        log(f"CUDA build: torch {torch.__version__} (CUDA {torch.version.cuda}), toolkit {CUDA_HOME}, "
            f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST') or '(detected from visible GPUs)'}")
        ext = CUDAExtension("mesrgan._C", sources, extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                            extra_link_args=link_flags, define_macros=define_macros,
                            include_dirs=[os.path.join(HERE, "csrc")])
    else:
        ext = CppExtension("mesrgan._C", sources, extra_compile_args={"cxx": cxx_flags},
                           extra_link_args=link_flags, define_macros=define_macros,
                           include_dirs=[os.path.join(HERE, "csrc")])

    # Recorded so that `import mesrgan` can refuse an extension built against another torch
    # with a clear message instead of an `undefined symbol` error.
    with open(os.path.join(HERE, "mesrgan", "_build_info.py"), "w") as f:
        f.write("# Written by setup.py at build time. Do not edit.\n")
        f.write(f"TORCH_VERSION = {torch.__version__!r}\n")
        f.write(f"WITH_CUDA = {use_cuda!r}\n")
        f.write(f"CUDA_ARCH_LIST = {os.environ.get('TORCH_CUDA_ARCH_LIST', '') if use_cuda else ''!r}\n")

    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})


main()
