"""Compiles the Triton bottleneck kernels for an NVIDIA GPU on a machine without one, and checks that
each fits the card's shared memory.

    python -m benchmarks.triton_compile_check [--arch 90] [--c-in 192] [--c-out 64]

Triton's NVIDIA backend (and the ptxas it ships) runs on the CPU, so the whole path from the kernels'
Python to a cubin can be checked before any GPU time: a kernel that does not compile, or one whose
shared memory exceeds the card's, fails here instead of on the GPU. The kernels are compiled with
exactly the constexpr arguments the op would launch them with (``forward_meta`` / ``backward_meta``
of mesrgan.ops.triton_bottleneck) for C_in / C_out (default: the widest layer of the MESRGAN dense
blocks, 192 -> 64), in float32 (TF32), bfloat16 and float16, with every bias and every gradient.

Prints one line per kernel: shared memory, and registers / spills where cuobjdump (shipped with
Triton) reports them. Exits 1 if a kernel does not fit, 2 if Triton cannot compile for CUDA here.
Must run without TRITON_INTERPRET (the script clears it before importing Triton).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: compiled kernels, not interpreted

import torch  # noqa: E402

# Most shared memory one block may opt in to, per compute capability (CUDA programming guide).
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024, 120: 99 * 1024}
DTYPES = {"float32": (torch.float32, "fp32"), "bfloat16": (torch.bfloat16, "bf16"), "float16": (torch.float16, "fp16")}
F32_BUFFERS = {"scratch_ptr", "gx_ptr", "pw1_ptr", "pb1_ptr", "pwd_ptr", "pbd_ptr", "pw2_ptr"}
SCALARS = {"H": "i32", "W": "i32", "C_IN": "i32", "HIDDEN": "i32", "C_OUT": "i32", "tiles_w": "i32", "slope": "fp32"}


def compile_kernel(fn, meta, storage, arch):
    """triton.compile of ``fn`` for sm_<arch> with ``meta``'s constexprs; pointers of ``storage`` type."""
    import triton
    from triton.backends.compiler import GPUTarget

    consts = {k: v for k, v in meta.items() if k != "num_warps"}
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in SCALARS:
            signature[name] = SCALARS[name]
        else:
            signature[name] = "*fp32" if name in F32_BUFFERS else f"*{storage}"
    src = triton.compiler.ASTSource(fn, signature, consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": meta["num_warps"]})


def resource_usage(kernel):
    """'REG:n ... STACK:n' from cuobjdump on the kernel's cubin, or '' where that is not available."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    cubin = kernel.asm.get("cubin")
    if not cubin or not os.path.exists(tool):
        return ""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    m = re.search(r"REG:(\d+).*?STACK:(\d+)", out)
    return f"registers {m.group(1)}, stack (spills) {m.group(2)} B" if m else ""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x 10 (default 90: H100 / H200)")
    p.add_argument("--c-in", type=int, default=192)
    p.add_argument("--c-out", type=int, default=64)
    args = p.parse_args(argv)
    try:
        from mesrgan.ops import triton_bottleneck as tb
        k = tb.kernels()
    except RuntimeError as e:
        print(f"triton_compile_check: {e}", file=sys.stderr)
        return 2
    limit = SHARED_LIMIT.get(args.arch, 99 * 1024)
    ok = True
    for dname, (dtype, storage) in DTYPES.items():
        kernels = (("forward", k.bottleneck_fwd_kernel, tb.forward_meta("cuda", dtype, args.c_in, args.c_out)),
                   ("backward", k.bottleneck_bwd_kernel, tb.backward_meta("cuda", dtype, args.c_in, args.c_out)))
        for which, fn, meta in kernels:
            t0 = time.time()
            try:
                kernel = compile_kernel(fn, meta, storage, args.arch)
            except Exception as e:  # noqa: BLE001  (report any compiler failure and go on)
                print(f"FAIL {which:8} {dname:8} does not compile: {type(e).__name__}: {str(e)[:400]}", flush=True)
                ok = False
                continue
            shared = kernel.metadata.shared
            fits = shared <= limit
            ok &= fits
            print(f"{'ok  ' if fits else 'FAIL'} {which:8} {dname:8} sm_{args.arch} tiles {meta['BH']}x{meta['BW']} "
                  f"warps {meta['num_warps']}: shared {shared / 1024:.0f} KiB (limit {limit // 1024}) "
                  f"{resource_usage(kernel)}  [{time.time() - t0:.1f}s]", flush=True)
    print("triton_compile_check:", "all kernels compile and fit" if ok else "SOME KERNELS FAIL", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
