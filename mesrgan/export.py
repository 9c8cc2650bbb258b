"""Export a generator checkpoint to ONNX, for onnxruntime, OpenVINO, TensorRT, ncnn and the like.

    python -m mesrgan.export --weights CKPT -o model.onnx [--model NAME] [--opset N] [--no-check]

Every generator of the package exports, those with our compiled depthwise op included: the op
becomes a standard grouped Conv plus its activation (see :mod:`mesrgan.inference.onnx_export`). Batch, height
and width are dynamic: input ``lr`` ``(N, 3, H, W)`` float32 in [0, 1], output ``sr``
``(N, 3, s*H, s*W)`` (not clamped). Unless ``--no-check`` is given, the file is run in onnxruntime
(when installed) at another size than the export's and compared with PyTorch.

Needs the ``export`` extra (``pip install -e ".[export]"``: onnx, onnxscript, onnxruntime). The
exit status is 0 on success, 1 when the check finds a difference over ``--tolerance``, 2 for a bad
command line, checkpoint or output location.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys

from .cli import (UsageError, check_file, float_range, int_range, load_checkpoint, prepare_file, run_program,
                  weights_file, weights_label)
from .inference.onnx_export import DEFAULT_OPSET, compare_onnx, export_onnx

__all__ = ["main"]


def build_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m mesrgan.export",
                                description="Export a SRGAN / ESRGAN / MESRGAN generator checkpoint to ONNX.")
    p.add_argument("--weights", required=True, metavar="CKPT",
                   help="generator checkpoint: ours or a training run folder (its best generator), a bare state dict, "
                        "published ESRGAN / Real-ESRGAN weights, or the name of a model shipped with mesrgan "
                        "(mesrgan-lite-x4)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--model", default=None, help="preset name, needed only when the checkpoint does not say")
    p.add_argument("--opset", type=int_range(18, 30), default=None,
                   help="ONNX opset version, 18..30 (default 18; at most what the installed onnx knows)")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="do not compare the file with PyTorch in onnxruntime after writing it")
    p.add_argument("--tolerance", type=float_range(0.0, lo_open=True), default=1e-3,
                   help="largest absolute difference the check accepts (default 1e-3)")
    return p


def _missing_exporter():
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"the ONNX exporter needs {' and '.join(missing)}: pip install -e \".[export]\" "
                         "(or pip install onnx onnxscript onnxruntime)")


def run(args):
    _missing_exporter()
    import onnx

    opset = args.opset or DEFAULT_OPSET
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise UsageError(f"--opset {opset}: the installed onnx {onnx.__version__} knows opsets up to {newest}")
    check_file(args.output, "-o")
    given = args.weights
    args.weights = weights_file(given)  # a run folder stands for its best generator, a name for a shipped model
    generator, info, scale = load_checkpoint(args.weights, args.model, "cpu")
    prepare_file(args.output, "-o")
    print(f"exporting {info['model']} x{scale} from {weights_label(given, args.weights)} (opset {opset}) ...", file=sys.stderr, flush=True)
    try:
        export_onnx(generator, args.output, opset=opset)
    except OSError as e:
        raise UsageError(f"-o {args.output}: cannot write the file ({e.strerror or e})") from e
    print(f"wrote {args.output}: input 'lr' (N, 3, H, W), output 'sr' (N, 3, {scale}H, {scale}W)", file=sys.stderr)
    if not args.check:
        return 0
    if importlib.util.find_spec("onnxruntime") is None:
        print("not checked: onnxruntime is not installed (pip install onnxruntime)", file=sys.stderr)
        return 0
    diff = compare_onnx(generator, args.output)
    ok = diff <= args.tolerance
    print(f"check: onnxruntime vs PyTorch on a 19x27 input, largest difference {diff:.2e} "
          f"({'within' if ok else 'OVER'} the tolerance {args.tolerance:g})", file=sys.stderr)
    return 0 if ok else 1


def main(argv=None):
    return run_program(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
