"""``python -m mesrgan.demo``: check the compiled depthwise op against PyTorch and time both.

Prints, for each device and memory layout, the largest difference from ``F.conv2d(groups=C)``
(forward and all three gradients) and the time of our op against PyTorch's, forward and
forward+backward, on the same random data. Then the whole network, which is what the op is for:
MESRGAN-paper with our ops (``impl="auto"``) against the same weights through PyTorch
(``impl="torch"``) and against ESRGAN-paper, forward on an NCHW input, with the outputs compared.
``--quick`` uses small shapes.
"""
import argparse
import time

import torch

from mesrgan import _build_info
from mesrgan.ops import depthwise_conv3x3, depthwise_conv3x3_reference


def _timeit(fn, device, min_time=0.5, max_iters=50):
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    times = []
    start = time.perf_counter()
    while len(times) < max_iters and (time.perf_counter() - start < min_time or len(times) < 3):
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]  # median


def run(device, shape, dtype, layout):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device, dtype)
    w = torch.randn(shape[1], 1, 3, 3, generator=g).to(device, dtype) / 3
    b = torch.randn(shape[1], generator=g).to(device, dtype)
    gy = torch.randn(shape, generator=g).to(device, dtype)
    if layout == "channels_last":
        x, gy = (t.contiguous(memory_format=torch.channels_last) for t in (x, gy))

    results = {}
    for name, fn in (("mesrgan", depthwise_conv3x3), ("torch", depthwise_conv3x3_reference)):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, w, b))
        y = fn(xi, wi, bi, activation="leaky_relu")
        y.backward(gy)
        results[name] = [y.detach(), xi.grad, wi.grad, bi.grad]

        def fwd():
            with torch.no_grad():
                fn(x, w, b, activation="leaky_relu")

        def fwd_bwd():
            xi.grad = wi.grad = bi.grad = None
            fn(xi, wi, bi, activation="leaky_relu").backward(gy)

        results[name] += [_timeit(fwd, device), _timeit(fwd_bwd, device)]

    ours, ref = results["mesrgan"], results["torch"]
    diffs = [(a.float() - r.float()).abs().max().item() / max(1.0, r.float().abs().max().item())
             for a, r in zip(ours[:4], ref[:4])]
    print(f"{device:5} {str(dtype).replace('torch.', ''):9} {layout:13} {str(tuple(shape)):20} "
          f"max rel diff {max(diffs):.1e} | forward {ours[4] * 1e3:8.2f} ms vs torch {ref[4] * 1e3:8.2f} ms "
          f"({ref[4] / ours[4]:4.1f}x) | fwd+bwd {ours[5] * 1e3:8.2f} ms vs torch {ref[5] * 1e3:8.2f} ms "
          f"({ref[5] / ours[5]:4.1f}x)")
    return max(diffs)


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shape (a few seconds)")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = p.parse_args(argv)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, mesrgan extension built against "
          f"torch {_build_info.TORCH_VERSION}, CUDA kernels: {'yes' if _build_info.WITH_CUDA else 'no'}")
    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available() and _build_info.WITH_CUDA:
        devices.append("cuda")
    elif args.device == "cuda":
        raise SystemExit("no usable CUDA device (or the extension was built without its CUDA kernels)")
    worst = 0.0
    for device in devices:
        shape = (2, 32, 32, 32) if args.quick else ((16, 128, 64, 64) if device == "cpu" else (16, 128, 128, 128))
        dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16, torch.float16]
        for dtype in dtypes:
            for layout in ("nchw", "channels_last"):
                d = run(device, shape, dtype, layout)
                tol = 1e-4 if dtype == torch.float32 else 3e-2
                if d > tol:
                    raise SystemExit(f"FAILED: {device} {dtype} {layout} differs from F.conv2d by {d:.2e}")
                worst = max(worst, d)
    print(f"all results agree with F.conv2d(groups=C) + leaky_relu (worst relative difference {worst:.1e})")
    for device in devices:
        network(device, (1, 3, 16, 16) if args.quick else (4, 3, 32, 32), blocks=2 if args.quick else 16)


def network(device, shape, blocks):
    """Whole-network forward: MESRGAN-paper (ours, torch) and ESRGAN-paper, same input and seed."""
    from mesrgan.models import build_generator
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).to(device)
    times, outs, weights = {}, {}, {}
    for label, name, kw in (("mesrgan-paper, impl=auto", "mesrgan-paper", {"impl": "auto"}),
                            ("mesrgan-paper, impl=torch", "mesrgan-paper", {"impl": "torch"}),
                            ("esrgan-paper", "esrgan-paper", {})):
        torch.manual_seed(0)
        model = build_generator(name, num_blocks=blocks, **kw).to(device).eval()
        if name in weights:
            model.load_state_dict(weights[name])  # the same perturbed weights in both implementations
        else:
            weights[name] = _perturbed(model)
        with torch.no_grad():
            outs[label] = model(x)
            times[label] = _timeit(lambda: model(x), device)
    ours, torch_path = outs["mesrgan-paper, impl=auto"], outs["mesrgan-paper, impl=torch"]
    diff = ((ours - torch_path).abs().max() / torch_path.abs().max().clamp_min(1e-30)).item()
    t_ours, t_torch, t_esrgan = (times[k] for k in ("mesrgan-paper, impl=auto", "mesrgan-paper, impl=torch",
                                                     "esrgan-paper"))
    print(f"{device:5} whole network, forward {tuple(shape)}, {blocks} dense blocks: mesrgan-paper "
          f"{t_ours * 1e3:.1f} ms with our ops vs {t_torch * 1e3:.1f} ms through PyTorch ({t_torch / t_ours:.2f}x), "
          f"{t_ours / t_esrgan:.2f}x esrgan-paper's {t_esrgan * 1e3:.1f} ms | max rel diff {diff:.1e}")
    if diff > 1e-4:
        raise SystemExit(f"FAILED: the network with our ops differs from the PyTorch path by {diff:.2e}")


def _perturbed(model):
    """Move every weight by noise of its own scale: at the default initialisation some paths are
    zero or nearly so, and the two implementations would agree there whatever their kernels do."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g).to(p.device, p.dtype)
            p.add_(noise * (0.5 * p.abs().mean() + 0.01))
    return model.state_dict()


if __name__ == "__main__":
    main()
