"""benchmarks/report.py: tables from pytest-benchmark JSON, one section per machine in RESULTS.md."""
import hashlib
import json
import os

import pytest

from benchmarks import report
from benchmarks import test_goals as goals


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
    return {"machine_info": {"cpu": {"brand_raw": "Test CPU", "flags": ["avx2", "avx512f", "avx512_bf16"]},
                             "mesrgan_bench": {"torch": "9.9", "gpu": "Test GPU", "cuda": "13.0"}},
            "commit_info": {"id": "0123456789abcdef", "dirty": False}, "datetime": "2026-01-01T00:00:00",
            "version": "5", "benchmarks": benches}


def test_report_writes_own_section_and_keeps_others(tmp_path):
    out = tmp_path / "RESULTS.md"
    for device in ("cpu", "cuda"):
        path = tmp_path / f"{device}.json"
        path.write_text(json.dumps(_doc(device)))
        report.main([str(path), "--out", str(out), "--no-plot"])
    text = out.read_text()
    cpu, cuda = "cpu-test-avx512", "cuda-test-gpu"  # one section per machine, named after it
    assert text.count(report.begin_marker(cpu)) == 1 and text.count(report.begin_marker(cuda)) == 1
    # Readable headings: the machine (CPU model and its bf16 features, or the GPU), commit, date.
    assert "\n## Test (AVX-512, AVX512_BF16), commit 0123456, 2026-01-01\n" in text
    assert "\n## Test GPU (CUDA 13.0), commit 0123456, 2026-01-01\n" in text
    assert "4.29×" in text  # mesrgan-paper speedup at batch 1: 0.15 / 0.035
    assert "4.00×" in text  # op ratio torch / mesrgan
    assert "155 / 33 / 26" not in text and "26 / 33 / 155" in text  # paper's Table I column, LR 128

    # A later run on the same machine replaces that machine's section only.
    doc = _doc("cpu")
    doc["datetime"] = "2026-02-02T00:00:00"
    (tmp_path / "cpu2.json").write_text(json.dumps(doc))
    report.main([str(tmp_path / "cpu2.json"), "--out", str(out), "--no-plot"])
    text = out.read_text()
    assert text.count(report.begin_marker(cpu)) == 1 and "commit 0123456, 2026-02-02" in text
    assert "commit 0123456, 2026-01-01" in text  # the GPU's section, untouched

    # Another machine gets a section of its own; bf16 features not recorded are said so.
    doc = _doc("cpu")
    doc["machine_info"]["cpu"] = {"brand_raw": "Other(R) Chip(TM) CPU @ 2.0GHz"}
    (tmp_path / "cpu3.json").write_text(json.dumps(doc))
    report.main([str(tmp_path / "cpu3.json"), "--out", str(out), "--no-plot"])
    text = out.read_text()
    assert text.count(report.begin_marker(cpu)) == 1 and text.count(report.begin_marker("cpu-other-chip")) == 1
    assert "\n## Other Chip (bf16 features not recorded), commit 0123456, 2026-01-01\n" in text


def test_section_names_and_features():
    doc = _doc("cpu")
    benches = doc["benchmarks"]
    doc["machine_info"]["cpu"]["flags"] = ["avx2", "fma"]
    assert report.section_name(benches, doc) == "cpu-test-avx2"
    assert report.cpu_features(doc) == "AVX2, no bf16 instructions"
    doc["machine_info"]["cpu"] = {"brand_raw": "Intel(R) Xeon(R) Processor", "flags": ["avx512f", "amx_bf16"]}
    assert report.section_name(benches, doc) == "cpu-intel-xeon-avx512"
    assert report.cpu_features(doc) == "AVX-512, AMX-BF16"
    # a VM's generic brand: family and model tell Zen 4 from Zen 5, so neither replaces the other's section
    doc["machine_info"]["cpu"] = {"brand_raw": "AMD EPYC", "family": 25, "model": 17, "flags": ["avx512f", "avx512_bf16"]}
    assert report.section_name(benches, doc) == "cpu-amd-epyc-family-25-model-17-avx512"
    assert report.machine_title(doc, benches).startswith("AMD EPYC family 25 model 17 (AVX-512, AVX512_BF16)")
    doc["machine_info"]["cpu"] = {"brand_raw": "AMD EPYC 9654 96-Core Processor", "family": 25, "flags": ["avx2"]}
    assert report.section_name(benches, doc) == "cpu-amd-epyc-9654-96-core-avx2"  # the model number says it


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_default_run_leaves_the_committed_results_alone(tmp_path, monkeypatch, capsys):
    """Without --update the report writes runs/benchmarks/ under the current folder, never the
    committed benchmarks/RESULTS.md or its figures."""
    committed = report.COMMITTED
    folder = os.path.dirname(committed)
    tracked = [committed] + [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".png")]
    before = {f: (_digest(type(tmp_path)(f)), os.stat(f).st_mtime_ns) for f in tracked}
    path = tmp_path / "smoke.json"
    path.write_text(json.dumps(_doc("cpu")))
    monkeypatch.chdir(tmp_path)
    report.main([str(path)])  # a plot too, where matplotlib is installed
    assert "benchmarks/RESULTS.md not touched (--update writes it)" in capsys.readouterr().out
    assert {f: (_digest(type(tmp_path)(f)), os.stat(f).st_mtime_ns) for f in tracked} == before
    written = tmp_path / "runs" / "benchmarks" / "RESULTS.md"
    assert report.begin_marker("cpu-test-avx512") in written.read_text()


def test_update_and_out_exclude_each_other(tmp_path, capsys):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(_doc("cpu")))
    with pytest.raises(SystemExit) as e:
        report.main([str(path), "--update", "--out", str(tmp_path / "R.md")])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_merge_section_appends_to_foreign_text():
    section = report.begin_marker("cpu") + "\nX\n" + report.end_marker("cpu") + "\n"
    merged = report.merge_section("# Mine\n\nnotes\n", "cpu", section)
    assert merged.startswith("# Mine\n\nnotes\n") and "\nX\n" in merged


def _goal_bench(pass_, lr, batch, contenders_ms, goals):
    return _bench(sum(contenders_ms.values()) / 1e3, kind="goal", device="cpu", pass_=pass_, lr=lr, batch=batch,
                  rounds=4, calls=3, contenders_ms=contenders_ms, goals=goals)


def test_goal_tables_give_each_ratio_beside_its_target():
    benches = [
        _goal_bench("fwd", 32, 16, {"esrgan-paper": 600.0, "mesrgan-paper": 630.0},
                    [{"goal": "mesrgan-paper ÷ esrgan-paper", "ratio": 1.05, "cmp": "<=", "target": 1.0,
                      "met": False}]),
        _goal_bench("fwd", 128, 1, {"esrgan-paper": 500.0, "mesrgan-paper": 450.0},
                    [{"goal": "mesrgan-paper ÷ esrgan-paper", "ratio": 0.9, "cmp": "<=", "target": 1.0,
                      "met": True}]),
        _goal_bench("train", 32, 4, {"mesrgan-paper": 400.0, "impl=torch": 800.0},
                    [{"goal": "impl=torch ÷ mesrgan-paper", "ratio": 2.0, "cmp": ">=", "target": 1.5,
                      "met": True}]),
    ]
    benches.append(_goal_bench("fwd", 32, 16, {"esrgan-paper": 170.0, "mesrgan-paper": 900.0},
                               [{"goal": "mesrgan-paper ÷ esrgan-paper", "ratio": 5.29, "cmp": "<=", "target": 1.0,
                                 "met": False}]))
    benches[-1]["extra_info"]["precision"] = "bf16"
    text = report.goal_tables(benches)
    fp32, bf16 = text.split("**Forward (no_grad, eval), bfloat16 (torch.autocast)**")
    fwd, train = fp32.split("**Training step, float32**")
    assert "| 32 | 16 | 170 | 900 | 5.29× (missed by 429%) |" in bf16 and "| 600 |" not in bf16
    assert "| LR | batch | esrgan-paper ms | mesrgan-paper ms | mesrgan-paper ÷ esrgan-paper (≤ 1) |" in fwd
    assert fwd.index("| 128 | 1 |") < fwd.index("| 32 | 16 |")  # LR 128 first, as in the goals
    assert "| 32 | 16 | 600 | 630 | 1.05× (missed by 5%) |" in fwd
    assert "| 128 | 1 | 500 | 450 | 0.90× (met) |" in fwd
    assert "impl=torch ÷ mesrgan-paper (≥ 1.5)" in train and "2.00× (met)" in train


def test_side_by_side_timing_alternates_blocks_and_drops_each_blocks_first_call():
    order, now = [], [0.0]
    # a: its first call of a block takes 10 s, the rest 1 s; b: 5 s then 2 s.
    cost = {"a": (10.0, 1.0), "b": (5.0, 2.0)}
    first = {"a": True, "b": True}

    def make(label):
        def fn():
            order.append(label)
            now[0] += cost[label][0] if first[label] else cost[label][1]
            first[label] = False
            first["b" if label == "a" else "a"] = True
        return fn

    medians = goals.time_side_by_side({"a": make("a"), "b": make("b")}, rounds=2, calls=3, clock=lambda: now[0])
    assert order == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert medians == {"a": 1.0, "b": 2.0}
    rows = goals.goal_rows("train", {"esrgan-paper": 2.0, "mesrgan-paper": 2.4, "impl=torch": 3.0})
    assert [(r["goal"], round(r["ratio"], 3), r["met"]) for r in rows] == [
        ("mesrgan-paper ÷ esrgan-paper", 1.2, False), ("impl=torch ÷ mesrgan-paper", 1.25, False)]


def test_benchmark_json_is_written_as_the_suite_goes(tmp_path):
    """A run killed before its end (here: os._exit in the third test) keeps the results so far."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    (tmp_path / "conftest.py").write_text(
        "from benchmarks.conftest import (bench_settings, pytest_addoption, pytest_benchmark_update_json,  # noqa\n"
        "                                 pytest_benchmark_update_machine_info, pytest_configure,\n"
        "                                 pytest_runtest_teardown)\n")
    (tmp_path / "test_bench.py").write_text(
        "import os\n"
        "def test_a(benchmark):\n    benchmark(lambda: sum(range(1000)))\n"
        "def test_b(benchmark):\n    benchmark(lambda: sum(range(2000)))\n"
        "def test_killed():\n    os._exit(3)\n")
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=root)
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                        str(tmp_path / "test_bench.py"), f"--benchmark-json={out}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    names = [b["name"] for b in json.loads(out.read_text())["benchmarks"]]
    assert names == ["test_a", "test_b"]


def test_compiled_training_rows_are_cuda_only_and_get_their_own_columns():
    """The torch.compile training-step rows exist for CUDA only (inductor compiles the paper networks
    for many minutes on a small CPU): on the CPU they are not even collected."""
    from benchmarks import test_models as tm
    from benchmarks._common import Settings

    def cases(device):
        return tm._cases(Settings(devices=(device,), full=False, min_rounds=1, max_time=1.0,
                                  models=("esrgan-paper", "mesrgan-paper", "srgan")))
    assert not [c for c in cases("cpu") if c[3].endswith("+compile")]
    compiled = [c for c in cases("cuda") if c[3].endswith("+compile")]
    assert sorted({(c[0], c[2], c[3], c[6]) for c in compiled}) == [
        ("train", "esrgan-paper", "torch+compile", "on"), ("train", "mesrgan-paper", "mesrgan+compile", "on")]
    series = {("mesrgan-paper", i): {16: None} for i in ("torch", "mesrgan", "mesrgan+compile")}
    assert report._model_cols(series) == [("mesrgan-paper", "torch"), ("mesrgan-paper", "mesrgan"),
                                          ("mesrgan-paper", "mesrgan+compile")]
