"""ONNX export: every generator, our compiled op included, round-trips through onnxruntime.

The exported file is run at another batch size and image size than the one traced, and compared
with the PyTorch module (impl="auto": the compiled op). Both sides compute in float32, so the
tolerance is float32 rounding over a few dozen layers.
"""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

from mesrgan.inference.onnx_export import _exported_program, compare_onnx, export_onnx, mesrgan_ops_in
from mesrgan.export import main as export_main
from mesrgan.models import build_generator, generator_checkpoint

_MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
needs_onnx = pytest.mark.skipif(bool(_MISSING), reason=f"ONNX export tests need {', '.join(_MISSING)} "
                                "(the test extra: pip install -e \".[test]\")")

# small versions of every preset (options as build_generator takes them)
TINY = {
    "srgan": {"features": 8, "num_blocks": 1},
    "esrgan": {"features": 8, "growth": 4, "num_blocks": 1},
    "mesrgan": {"features": 8, "growth": 4, "num_blocks": 1},
    "esrgan-paper": {"features": 8, "growth": 4, "num_blocks": 1},
    "mesrgan-paper": {"features": 8, "growth": 4, "num_blocks": 1},
}


def _tiny(name, **extra):
    torch.manual_seed(0)
    options = {**TINY[name], **extra}
    return build_generator(name, **options).eval(), options


def _onnx_run(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["sr"], {"lr": x.numpy()})[0]


def test_trace_calls_the_compiled_op_and_the_decomposition_removes_it():
    """What the export starts from is the impl="auto" module running our op: the test below is
    about exporting that op, not a model that never called it."""
    from mesrgan.ops.decompositions import DECOMPOSITIONS

    model, _ = _tiny("mesrgan")
    exported = torch.export.export(model, (torch.rand(2, 3, 12, 14),))
    called = mesrgan_ops_in(exported)
    assert called and called <= {str(op) for op in DECOMPOSITIONS}
    assert mesrgan_ops_in(_exported_program(model, torch.rand(2, 3, 12, 14))) == set()


@needs_onnx
@pytest.mark.parametrize("name", sorted(TINY))
def test_every_generator_round_trips_through_onnxruntime(tmp_path, name, one_thread):
    import onnx

    model, _ = _tiny(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    graph = onnx.load(path).graph
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}, "only standard ONNX operators"
    inputs = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in inputs] == [True, False, True, True], "batch, height, width dynamic"
    if name.startswith("mesrgan"):
        groups = [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
        assert any(g > 1 for g in groups), "the depthwise op became a grouped Conv"
    for size in [(1, 3, 19, 27), (3, 3, 8, 5)]:
        x = torch.rand(*size)
        with torch.no_grad():
            want = model(x).numpy()
        got = _onnx_run(path, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


@needs_onnx
@pytest.mark.parametrize("scale", [1, 2])
def test_real_esrgan_unshuffle_layout_exports(tmp_path, scale, one_thread):
    model, _ = _tiny("esrgan", scale=scale, unshuffle_input=True)
    path = export_onnx(model, tmp_path / "r.onnx")
    for size in [(1, 3, 17, 22), (2, 3, 12, 8)]:  # sizes that need padding, and ones that do not
        x = torch.rand(*size)
        with torch.no_grad():
            want = model(x).numpy()
        np.testing.assert_allclose(_onnx_run(path, x), want, rtol=1e-4, atol=2e-5)


@needs_onnx
def test_export_command_line(tmp_path, capsys, one_thread):
    model, options = _tiny("mesrgan")
    weights = tmp_path / "g.pt"
    torch.save(generator_checkpoint("mesrgan", model, {"scale": 4, **options}), weights)
    out = tmp_path / "sub" / "m.onnx"  # the folder is created
    assert export_main(["--weights", str(weights), "-o", str(out), "--opset", "18"]) == 0
    err = capsys.readouterr().err
    assert "largest difference" in err and "within the tolerance" in err
    x = torch.rand(1, 3, 10, 11)
    with torch.no_grad():
        np.testing.assert_allclose(_onnx_run(out, x), model(x).numpy(), rtol=1e-4, atol=2e-5)
    assert compare_onnx(model, out, size=(2, 3, 9, 6)) < 1e-4


@pytest.mark.parametrize("flags, message", [
    (["--opset", "7"], r"--opset: expected a whole number from 18 to 30, got 7"),
    (["--tolerance", "-1"], r"--tolerance: expected a number > 0.0, got -1"),
])
def test_export_flag_ranges(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as e:
        export_main(["--weights", "w.pt", "-o", str(tmp_path / "m.onnx"), *flags])
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


def test_export_refuses_bad_checkpoint_and_output(tmp_path, capsys):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    code = export_main(["--weights", str(tmp_path / "list.pt"), "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    if _MISSING:
        assert code == 2 and "the ONNX exporter needs" in err
        return
    assert code == 2 and "holds a list of 3 items, not a checkpoint" in err and err.count("\n") == 1
    (tmp_path / "afile").write_text("x")
    code = export_main(["--weights", str(tmp_path / "list.pt"), "-o", str(tmp_path / "afile" / "m.onnx")])
    assert code == 2 and "afile: is a file, not a folder" in capsys.readouterr().err


@needs_onnx
def test_python_dash_m_export(tmp_path):
    model, options = _tiny("srgan")
    torch.save(generator_checkpoint("srgan", model, {"scale": 4, **options}), tmp_path / "g.pt")
    r = subprocess.run([sys.executable, "-m", "mesrgan.export", "--weights", str(tmp_path / "g.pt"), "-o",
                        str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 1000
