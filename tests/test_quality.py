"""benchmarks/quality.py: a smoke run of the whole experiment on tiny networks, and its curve arithmetic."""
import hashlib
import json
import math
import os

import pytest

from benchmarks import quality

pytestmark = pytest.mark.usefixtures("one_thread")


def test_curve_seconds_are_training_time_only(tmp_path):
    f = tmp_path / "metrics.jsonl"
    records = [
        {"stage": "psnr", "iteration": 10, "it_per_s": 2.0, "time": 0},
        {"stage": "psnr", "iteration": 10, "val": True, "val_psnr": 20.0, "val_bicubic_psnr": 21.0},
        {"stage": "psnr", "iteration": 20, "it_per_s": 5.0, "time": 0},
        {"stage": "psnr", "iteration": 20, "val": True, "val_psnr": 22.0, "val_bicubic_psnr": 21.0},
    ]
    f.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    curve = quality.read_curve(f)
    assert [c["iteration"] for c in curve] == [10, 20]
    assert [c["seconds"] for c in curve] == [5.0, 7.0]  # 10 / 2, then + 10 / 5
    assert [c["val_psnr"] for c in curve] == [20.0, 22.0]


def _committed():
    """The tracked files a quality run could write: benchmarks/RESULTS.md and benchmarks/quality-*.png."""
    files = [os.path.join(quality._HERE, f) for f in ("RESULTS.md", "quality-curves.png", "quality-fig2.png")]
    return {f: (hashlib.sha256(open(f, "rb").read()).hexdigest(), os.stat(f).st_mtime_ns) for f in files}


def test_smoke_run_writes_table_figures_and_section(tmp_path):
    """At its defaults the run writes its section and figures into its run folder, and leaves the
    committed benchmarks/RESULTS.md and figures alone."""
    from PIL import Image

    from mesrgan.data import bundled_images

    before = _committed()
    runs = tmp_path / "runs"
    runs.mkdir()
    results = runs / "RESULTS.md"
    results.write_text("# Benchmark results\n\nother sections stay\n")
    held_out = tmp_path / "held_out"
    held_out.mkdir()
    Image.fromarray(dict(bundled_images("val"))["chelsea"][:200, :300]).save(held_out / "cat.png")
    argv = ["--iters", "2", "--eval-every", "1", "--batch", "1", "--crop", "32", "--val-max-size", "64",
            "--models", "0,3", "--g-opt", "num_blocks=1", "--out", str(runs), "--val-data", str(held_out)]
    assert quality.main(argv) == 0
    assert _committed() == before
    text = results.read_text()
    assert "other sections stay" in text and text.count(quality._BEGIN) == 1
    assert "| metric | bicubic | srgan | lite (mesrgan-paper, hidden_width=output) |" in text
    assert "stage 1 only" in text and ("PI not computed" in text or "PI from pyiqa" in text)
    assert "cat" in text
    assert "](quality-curves.png)" in text  # figures beside the Markdown file
    for png in ("quality-curves.png", "quality-fig2.png"):
        assert (runs / png).stat().st_size > 5000
    report = json.loads((runs / "quality.json").read_text().replace("NaN", "null"))
    lite = report["results"]["lite (mesrgan-paper, hidden_width=output)"]
    assert lite["options"] == {"hidden_width": "output"}
    assert [c["iteration"] for c in lite["curve"]] == [1, 2]
    assert all(c["seconds"] > 0 for c in lite["curve"])
    assert math.isfinite(lite["eval"]["standard"]["bicubic"]["niqe"])


def test_outputs_go_to_the_run_folder_unless_told(tmp_path):
    args = quality.resolve_outputs(quality.build_parser().parse_args(["--out", str(tmp_path)]))
    assert (args.results, args.figures) == (os.path.join(str(tmp_path), "RESULTS.md"), str(tmp_path))
    args = quality.resolve_outputs(quality.build_parser().parse_args(["--update"]))
    assert (args.results, args.figures) == (os.path.join(quality._HERE, "RESULTS.md"), quality._HERE)
    args = quality.resolve_outputs(quality.build_parser().parse_args(
        ["--update", "--figures", str(tmp_path), "--results", str(tmp_path / "R.md")]))
    assert (args.results, args.figures) == (str(tmp_path / "R.md"), str(tmp_path))


def test_section_is_replaced_in_place(tmp_path):
    f = tmp_path / "R.md"
    f.write_text("# R\n\nbefore\n")
    quality.write_section(f, f"{quality._BEGIN}\none\n{quality._END}")
    with open(f, "a") as out:
        out.write("\nafter\n")
    quality.write_section(f, f"{quality._BEGIN}\ntwo\n{quality._END}")
    assert f.read_text() == f"# R\n\nbefore\n\n{quality._BEGIN}\ntwo\n{quality._END}\n\nafter\n"


def test_bad_budget():
    with pytest.raises(SystemExit, match="--crop must be a multiple of 4, got 30"):
        quality.main(["--crop", "30"])
    with pytest.raises(SystemExit, match=r"--iters \(10\) must be a multiple of --eval-every \(3\)"):
        quality.main(["--iters", "10", "--eval-every", "3"])
