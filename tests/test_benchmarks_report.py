"""benchmarks/report.py: tables from pytest-benchmark JSON, one section per device in RESULTS.md."""
import importlib.util
import json
from pathlib import Path

# benchmarks/ is not an installed package: load the report module from its file.
_spec = importlib.util.spec_from_file_location("benchmarks_report",
                                               Path(__file__).parents[1] / "benchmarks" / "report.py")
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def _bench(median, **extra):
    return {"name": "x", "stats": {"median": median, "mean": median, "rounds": 3}, "extra_info": extra}


def _doc(device):
    benches = []
    for impl, t in (("torch", 0.004), ("mesrgan", 0.001)):
        benches.append(_bench(t, kind="op", device=device, pass_="fwd", dtype="float32", layout="nchw", impl=impl,
                              shape=[16, 128, 32, 32], activation="none", cudnn_benchmark="na", role="r",
                              time_s=t, gbps=2 * 16 * 128 * 32 * 32 * 4 / t / 1e9, copy_gbps=20.0, copy_frac=0.5))
    for model, impl, t in (("esrgan-paper", "torch", 0.03), ("mesrgan-paper", "torch", 0.15),
                           ("mesrgan-paper", "mesrgan", 0.035)):
        for batch in (1, 2):
            benches.append(_bench(t * batch, kind="model", device=device, pass_="fwd", model=model, impl=impl,
                                  lr=128, batch=batch, cudnn_benchmark="na", gmac_per_image=80.0,
                                  depthwise_gmac_per_image=3.0, params=4_000_000))
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU"}, "mesrgan_bench": {"torch": "9.9", "gpu": "Test GPU"}},
            "commit_info": {"id": "0123456789abcdef", "dirty": False}, "datetime": "2026-01-01T00:00:00",
            "version": "5", "benchmarks": benches}


def test_report_writes_own_section_and_keeps_others(tmp_path):
    out = tmp_path / "RESULTS.md"
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.json"
        path.write_text(json.dumps(_doc(device)))
        report.main([str(path), "--out", str(out), "--no-plot"])
    text = out.read_text()
    assert text.count(report.begin_marker("cpu")) == 1 and text.count(report.begin_marker("cuda")) == 1
    assert "Test CPU" in text and "Test GPU" in text
    assert "4.29×" in text  # mesrgan-paper speedup at batch 1: 0.15 / 0.035
    assert "4.00×" in text  # op ratio torch / mesrgan
    assert "155 / 33 / 26" not in text and "26 / 33 / 155" in text  # paper's Table I column, LR 128

    # A second CPU run replaces the CPU section only.
    doc = _doc("cpu")
    doc["machine_info"]["cpu"]["brand_raw"] = "Other CPU"
    (tmp_path / "cpu2.json").write_text(json.dumps(doc))
    report.main([str(tmp_path / "cpu2.json"), "--out", str(out), "--no-plot"])
    text = out.read_text()
    assert "Other CPU" in text and "Test GPU" in text
    assert text.count(report.begin_marker("cpu")) == 1


def test_merge_section_appends_to_foreign_text():
    section = report.begin_marker("cpu") + "\nX\n" + report.end_marker("cpu") + "\n"
    merged = report.merge_section("# Mine\n\nnotes\n", "cpu", section)
    assert merged.startswith("# Mine\n\nnotes\n") and "\nX\n" in merged
