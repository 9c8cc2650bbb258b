"""``python -m mesrgan.models --report``: parameters and MACs of every generator, as measured.
``python -m mesrgan.models --pack SRC DST``: a generator checkpoint in the shipped form (float16)."""
import argparse

from ..cli import int_range
from .compute import compute_report, format_compute_table, layer_macs
from .pretrained import pack_checkpoint


def main(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="python -m mesrgan.models", description=__doc__)
    parser.add_argument("--report", action="store_true", help="print the compute table (markdown)")
    parser.add_argument("--sizes", type=int_range(1, 4096), nargs="+", default=[32, 128],
                        help="LR input sides, 1..4096 (default: 32 128)")
    parser.add_argument("--scale", type=int, default=4, choices=(2, 4))
    parser.add_argument("--pack", nargs=2, metavar=("SRC", "DST"),
                        help="write checkpoint SRC's generator to DST as the package ships its models: our format, "
                             "float16 values; prints DST's SHA-256")
    parser.add_argument("--no-ema", dest="ema", action="store_false",
                        help="with --pack: the trained generator itself, not the moving average of its weights")
    args = parser.parse_args(argv)
    if args.pack:
        src, dst = args.pack
        print(f"{dst}: sha256 {pack_checkpoint(src, dst, ema=args.ema)}")
        return 0
    if not args.report:
        parser.print_help()
        return 0
    print(format_compute_table(compute_report(sizes=tuple(args.sizes), scale=args.scale)))
    print()
    conv, brb = layer_macs(64, 64, 128)
    print(f"The paper's example, one 64→64 layer at 128×128 (hidden width 128 for either choice): "
          f"conv 3×3 {conv / 1e8:.2f}e8 MACs, bottleneck block {brb / 1e8:.2f}e8 MACs, ratio {brb / conv:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
