"""Table II at an equal budget: SRGAN, ESRGAN, MESRGAN and lite trained alike, then measured alike.

    python -m benchmarks.quality                       # the default budget: CPU, about 15 minutes on 2 cores
    python -m benchmarks.quality --update              # the same, into benchmarks/RESULTS.md and its figures
    python -m benchmarks.quality --iters 200000 --batch 16 --crop 128 --eval-every 5000 \\
        --data DIV2K_train_HR_sub --val-data DIV2K_valid_HR --device cuda --vgg-weights vgg19-dcbb9e9d.pth

Every model is trained by the training program (``python -m mesrgan.train``), stage 1 (pixel
loss: MSE for SRGAN, L1 for the others, as in the paper), with the same data, seed, HR crop size,
batch size and number of iterations; stage 2 (GAN + VGG perceptual loss) follows, for as many
iterations, when VGG19 weights are given or cached. The run is cut into segments of
``--eval-every`` iterations (``--stop-after`` / ``--resume``), so that the training time of each
segment, as the training program logs it, excludes the validation that follows it: the learning
curve against seconds is training time only.

Models: ``srgan``, ``esrgan-paper``, ``mesrgan-paper`` and lite, which is ``mesrgan-paper`` with
``hidden_width="output"`` (bottleneck width t x output channels instead of t x input channels).

Measured on the held-out photographs (by default the two bundled ones that are never trained on)
with :func:`mesrgan.evaluate.evaluate_images`: PSNR / SSIM / RMSE in the standard convention
(Y of BT.601, crop = scale, 11x11 Gaussian SSIM) and in the MESRGAN paper's (RGB, no crop, global
SSIM), and NIQE. PI needs Ma et al.'s model and is reported only where pyiqa's NRQM loads.

Outputs, all in the run folder (--out, default runs/quality) unless told otherwise: RESULTS.md with
the Table II section (between markers; the rest of the file is left as it is),
``quality-curves.png`` (validation PSNR against iterations and against training seconds),
``quality-fig2.png`` (one held-out crop: HR, bicubic and each model, with PSNR / SSIM) and
everything as JSON. ``--update`` puts the section and the two figures into the committed
benchmarks/RESULTS.md and benchmarks/ instead; ``--results`` / ``--figures`` name other places.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import torch

from mesrgan.io.atomic import atomic_path, write_text_atomic

#: (column name, preset, generator options)
MODELS = (
    ("srgan", "srgan", {}),
    ("esrgan-paper", "esrgan-paper", {}),
    ("mesrgan-paper", "mesrgan-paper", {}),
    ("lite (mesrgan-paper, hidden_width=output)", "mesrgan-paper", {"hidden_width": "output"}),
)
SCALE = 4
_BEGIN, _END = "<!-- BEGIN mesrgan-quality -->", "<!-- END mesrgan-quality -->"
_HERE = os.path.dirname(os.path.abspath(__file__))


def build_parser():
    # the docstring's first line is its first paragraph's start: the epilog gives the rest once
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m benchmarks.quality",
                                formatter_class=argparse.RawDescriptionHelpFormatter, description=__doc__)
    p.add_argument("--psnr-iters", "--iters", dest="iters", type=int, default=1000,
                   help="training iterations per stage and model, as train's --psnr-iters (default 1000)")
    p.add_argument("--batch-size", "--batch", dest="batch", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--crop-size", "--crop", dest="crop", type=int, default=64,
                   help="HR crop side, a multiple of 4 (default 64)")
    p.add_argument("--eval-every", type=int, default=100, help="validation interval in iterations (default 100)")
    p.add_argument("--val-max-size", type=int, default=192,
                   help="centre-crop the validation images of the learning curve to this side (default 192; 0 = whole)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--data", action="append", metavar="DIR",
                   help="HR training folder (repeatable; default: the bundled training photographs)")
    p.add_argument("--val-data", metavar="DIR",
                   help="held-out HR folder (default: the bundled held-out photographs chelsea and rocket)")
    p.add_argument("--vgg-weights", metavar="PATH", help="torchvision's vgg19-dcbb9e9d.pth: runs stage 2 as well")
    p.add_argument("--seed", type=int, default=0, help="the training seed of every model (default 0)")
    p.add_argument("--out", default=os.path.join("runs", "quality"), help="run folder (default runs/quality)")
    p.add_argument("--results", help="Markdown file to put the table in (default: RESULTS.md in --out; "
                                      "benchmarks/RESULTS.md with --update)")
    p.add_argument("--figures", help="folder for the two PNG figures (default: --out; benchmarks/ with --update)")
    p.add_argument("--update", action="store_true",
                   help="write the committed benchmarks/RESULTS.md section and benchmarks/quality-*.png")
    p.add_argument("--models", default=None,
                   help="comma-separated subset of the columns by preset order 0..3 (default: all four)")
    p.add_argument("--g-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="generator option for every model (for smoke tests, e.g. num_blocks=1)")
    return p


# ---------------------------------------------------------------------------------------------
# training, through the training program


def _vgg_available(args):
    if args.vgg_weights:
        return True
    from mesrgan.models import VGG19_URL  # where the training program finds them without --vgg-weights
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(VGG19_URL)))


def _train_argv(args, preset, options, out, stage):
    argv = ["--model", preset, "--out", out, "--stage", stage, "--seed", str(args.seed),
            "--batch-size", str(args.batch), "--crop-size", str(args.crop), "--scale", str(SCALE),
            "--psnr-iters", str(args.iters), "--gan-iters", str(args.iters),
            "--val-every", str(args.eval_every), "--log-every", str(args.eval_every),
            "--save-every", str(args.iters), "--val-max-size", str(args.val_max_size),
            "--workers", "0", "--device", args.device, "--no-tensorboard", "--stop-after", str(args.eval_every)]
    for d in args.data or []:
        argv += ["--data", d]
    if args.val_data:
        argv += ["--val-data", args.val_data]
    if args.vgg_weights:
        argv += ["--vgg-weights", args.vgg_weights]
    for k, v in options.items():
        argv += ["--g-opt", f"{k}={v}"]
    for kv in args.g_opt:
        argv += ["--g-opt", kv]
    return argv


def train(args, preset, options, out, stage):
    """Trains in segments of --eval-every iterations; returns the learning curve."""
    from mesrgan.train import main as train_main

    per_stage = math.ceil(args.iters / args.eval_every)
    segments = per_stage * (2 if stage == "all" else 1)
    base = _train_argv(args, preset, options, out, stage)
    for k in range(segments):
        rc = train_main(base + (["--resume"] if k else []))
        if rc != 0:
            raise RuntimeError(f"training {preset} in {out} stopped with exit status {rc}")
    return read_curve(os.path.join(out, "metrics.jsonl"))


def read_curve(metrics_file):
    """``[{"stage", "iteration", "seconds", "val_psnr", "bicubic_psnr"}]`` from a run's metrics.jsonl.

    ``seconds`` is cumulative training time: the sum over log records of iterations / it_per_s.
    With one log record per segment, each covers one segment's iterations and nothing else.
    """
    logs, vals = [], {}
    with open(metrics_file) as f:
        for line in f:
            r = json.loads(line)
            if r.get("val"):
                vals[(r["stage"], r["iteration"])] = r
            else:
                logs.append(r)
    curve, seconds, last_it = [], 0.0, {}
    for r in logs:
        start = last_it.get(r["stage"], 0)
        seconds += (r["iteration"] - start) / r["it_per_s"]
        last_it[r["stage"]] = r["iteration"]
        v = vals.get((r["stage"], r["iteration"]))
        if v is not None:
            curve.append({"stage": r["stage"], "iteration": r["iteration"], "seconds": seconds,
                          "val_psnr": v["val_psnr"], "bicubic_psnr": v["val_bicubic_psnr"]})
    return curve


# ---------------------------------------------------------------------------------------------
# evaluation on the held-out photographs


def held_out_images(args):
    from mesrgan.data import bundled_images, find_images, load_image
    if args.val_data:
        return [(os.path.splitext(os.path.basename(p))[0], load_image(p)) for p in find_images([args.val_data])]
    return bundled_images("val")


def evaluate(weights, images, device, save_dir):
    """Means of both conventions (and NIQE, PI where possible) for one checkpoint, plus per-image rows."""
    from mesrgan.evaluate import evaluate_images, mean_of
    from mesrgan.cli import load_checkpoint
    from mesrgan.metrics.pi import ma_scorer

    generator, _, scale = load_checkpoint(weights, None, torch.device(device), SCALE)
    os.makedirs(save_dir, exist_ok=True)
    ma_score, ma_missing = ma_scorer(device)
    result = {"pi_missing": ma_missing, "params": sum(p.numel() for p in generator.parameters())}
    for conv in ("standard", "paper"):
        rows, failures = evaluate_images(generator, images, scale=scale, convention=conv, ma_score=ma_score,
                                         save_dir=save_dir if conv == "standard" else None)
        if failures:
            raise RuntimeError(f"evaluating {weights}: {failures}")
        result[conv] = {"sr": mean_of(rows, "sr"), "bicubic": mean_of(rows, "bicubic"), "images": rows}
    return result


# ---------------------------------------------------------------------------------------------
# outputs


def _fmt(v, digits):
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table_markdown(results, names):
    """Table II layout: one row per metric, one column per model (bicubic first)."""
    first = results[names[0]]["eval"]
    cols = ["bicubic"] + names
    rows = [
        ("PSNR-Y (dB), standard", "standard", "psnr", 2), ("SSIM-Y, standard", "standard", "ssim", 4),
        ("RMSE-Y (8-bit levels), standard", "standard", "rmse", 2), ("NIQE (lower is better)", "standard", "niqe", 3),
        ("PI", "standard", "pi", 3),
        ("PSNR-RGB (dB), paper's code", "paper", "psnr", 2), ("SSIM global, paper's code", "paper", "ssim", 4),
        ("RMSE-RGB (8-bit levels), paper's code", "paper", "rmse", 2),
    ]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for label, conv, key, digits in rows:
        cells = [_fmt(first[conv]["bicubic"].get(key), digits)]
        cells += [_fmt(results[n]["eval"][conv]["sr"].get(key), digits) for n in names]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| training s / iteration (stage 1) | - | " + " | ".join(
        _fmt(results[n]["seconds_per_iter"], 2) for n in names) + " |")
    lines.append("| parameters (M) | - | " + " | ".join(_fmt(results[n]["params"] / 1e6, 2) for n in names) + " |")
    return "\n".join(lines)


def plot_curves(results, names, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name in names:
        curve = [c for c in results[name]["curve"] if c["stage"] == "psnr"]
        for ax, key in zip(axes, ("iteration", "seconds")):
            ax.plot([c[key] for c in curve], [c["val_psnr"] for c in curve], marker="o", ms=3, label=name)
    bic = results[names[0]]["curve"][0]["bicubic_psnr"]
    for ax, xlabel in zip(axes, ("training iterations", "training seconds (validation excluded)")):
        ax.axhline(bic, color="gray", ls="--", lw=1, label="bicubic")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation PSNR-Y (dB)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Stage 1, held-out photographs (centre crops), x4")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)


def plot_fig2(hr, crops, path, box):
    """One held-out crop: HR, bicubic, each model; PSNR / SSIM (Y, standard) of the crop under each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mesrgan.metrics import psnr, ssim

    r0, c0, side = box
    hr_crop = hr[r0:r0 + side, c0:c0 + side]
    panels = [("HR", hr_crop, "")]
    for name, img in crops:
        c = img[r0:r0 + side, c0:c0 + side]
        panels.append((name, c, f"{psnr(c, hr_crop, y_channel=True):.2f} dB / {ssim(c, hr_crop, y_channel=True):.4f}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 3.2), constrained_layout=True)
    for ax, (name, img, text) in zip(axes, panels):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(name if len(name) < 24 else name.split(" (")[0], fontsize=9)
        ax.set_xlabel(text, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
    plt.close(fig)


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}, torch {torch.__version__}"


def resolve_outputs(args):
    """Fill in --results and --figures: the run folder by default, the committed files with --update."""
    if args.results is None:
        args.results = os.path.join(_HERE if args.update else args.out, "RESULTS.md")
    if args.figures is None:
        args.figures = _HERE if args.update else args.out
    return args


def section_markdown(results, names, args, stages, wall, images, argv):
    first = results[names[0]]["eval"]
    data = ", ".join(args.data) if args.data else "the 6 bundled training photographs (scikit-image)"
    held = args.val_data or "the 2 bundled held-out photographs, never trained on"
    s2 = ("stage 1 and stage 2" if "gan" in stages else
          "stage 1 only: stage 2 needs the VGG19 ImageNet weights for its perceptual loss, and none were "
          "given or cached (`--vgg-weights PATH`)")
    pi = first["pi_missing"] or "PI from pyiqa's NRQM (Ma) and our NIQE"
    budget_args = [a for a in argv if a != "--update"]
    figs = os.path.relpath(os.path.abspath(args.figures), os.path.dirname(os.path.abspath(args.results)))
    fig = (lambda name: name) if figs == "." else (lambda name: f"{figs}/{name}".replace(os.sep, "/"))
    return "\n".join([
        _BEGIN,
        "## Quality at an equal budget (Table II layout)",
        "",
        f"Generated by `python -m benchmarks.quality{''.join(' ' + a for a in argv)}`"
        f"{' (the default budget)' if not budget_args else ''}; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {wall / 60:.1f} minutes in all.",
        "",
        f"- machine: {_machine()}, device {args.device}",
        f"- budget: {args.iters} iterations per model, batch {args.batch}, HR crops {args.crop} "
        f"(LR {args.crop // SCALE}), x{SCALE}, seed {args.seed}, Adam lr 2e-4; {s2}",
        f"- training data: {data}; measured on {held} ({', '.join(n for n, _ in images)}), whole images",
        "- standard: Y of BT.601, crop = scale, 11x11 Gaussian SSIM; paper's code: RGB, no crop, "
        "one-window SSIM (not comparable with standard SSIM)",
        f"- {pi}",
        "",
        table_markdown(results, names),
        "",
        f"![learning curves]({fig('quality-curves.png')})",
        "",
        f"![held-out crop]({fig('quality-fig2.png')})",
        "",
        "The paper's Table II (200k + 200k iterations, batch 16, its own metric code): "
        "DIV2K-90 PSNR 25.40 / 24.52 / 24.39, SSIM 0.96 / 0.95 / 0.95, PI 3.57 / 3.11 / 3.13, RMSE "
        "13.61 / 15.82 / 15.86 (SRGAN / ESRGAN / MESRGAN).",
        _END,
    ])


def write_section(path, section):
    text = open(path).read() if os.path.isfile(path) else "# Benchmark results\n"
    if _BEGIN in text and _END in text:
        head, rest = text.split(_BEGIN, 1)
        text = head + section + rest.split(_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    write_text_atomic(path, text)


# ---------------------------------------------------------------------------------------------


def _check(args):
    for k in ("iters", "batch", "crop", "eval_every"):
        if getattr(args, k) < 1:
            raise SystemExit(f"error: --{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}")
    if args.crop % SCALE:
        raise SystemExit(f"error: --crop must be a multiple of {SCALE}, got {args.crop}")
    if args.iters % args.eval_every:
        raise SystemExit(f"error: --iters ({args.iters}) must be a multiple of --eval-every ({args.eval_every})")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = resolve_outputs(build_parser().parse_args(argv))
    _check(args)
    t0 = time.perf_counter()
    models = MODELS if args.models is None else [MODELS[int(i)] for i in args.models.split(",")]
    stages = ["psnr", "gan"] if _vgg_available(args) else ["psnr"]
    images = held_out_images(args)
    results = {}
    for name, preset, options in models:
        out = os.path.join(args.out, name.split(" ")[0])
        print(f"== {name}: training ({'+'.join(stages)}) in {out}", flush=True)
        t_model = time.perf_counter()
        curve = train(args, preset, options, out, "all" if "gan" in stages else "psnr")
        stage1 = [c for c in curve if c["stage"] == "psnr"]
        final = os.path.join(out, "last.pt" if "gan" in stages else "stage1.pt")
        ev = evaluate(final, images, args.device, os.path.join(out, "sr"))
        results[name] = {"preset": preset, "options": options, "curve": curve, "params": ev.pop("params"),
                         "seconds_per_iter": stage1[-1]["seconds"] / stage1[-1]["iteration"], "eval": ev}
        std = results[name]["eval"]["standard"]["sr"]
        print(f"== {name}: PSNR-Y {std['psnr']:.2f} dB, NIQE {std['niqe']:.3f}, "
              f"{time.perf_counter() - t_model:.0f} s", flush=True)
    names = [n for n, _, _ in models]
    os.makedirs(args.figures, exist_ok=True)
    plot_curves(results, names, os.path.join(args.figures, "quality-curves.png"))
    from mesrgan.data import imresize
    from mesrgan.evaluate import _to_tensor, _to_uint8
    name0, hr = images[0]
    hr = hr[:hr.shape[0] // SCALE * SCALE, :hr.shape[1] // SCALE * SCALE]
    lr = _to_uint8(imresize(_to_tensor(hr), 1 / SCALE))  # as evaluate_images makes it
    bic = _to_uint8(imresize(_to_tensor(lr), SCALE))
    from mesrgan.data import load_image
    crops = [("bicubic", bic)] + [(n, load_image(os.path.join(args.out, n.split(" ")[0], "sr", f"{name0}.png")))
                                  for n in names]
    side = min(96, hr.shape[0], hr.shape[1])
    box = ((hr.shape[0] - side) // 2, (hr.shape[1] - side) // 2, side)
    plot_fig2(hr, crops, os.path.join(args.figures, "quality-fig2.png"), box)
    wall = time.perf_counter() - t0
    write_text_atomic(os.path.join(args.out, "quality.json"),
                      json.dumps({"args": vars(args), "stages": stages, "wall_seconds": wall, "results": results},
                                 indent=1, default=lambda o: None))
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    write_section(args.results, section_markdown(results, names, args, stages, wall, images, argv))
    print(table_markdown(results, names))
    print(f"wall time {wall / 60:.1f} min; wrote {args.results}, {os.path.join(args.figures, 'quality-*.png')}"
          + ("" if args.update else " (the committed benchmarks/ files only with --update)"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
