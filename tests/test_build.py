"""setup.py's choice of kernels: CPU only under MESRGAN_CUDA=auto on a machine without a GPU.

The decision function is taken out of setup.py's source (running setup.py would build, and
rewrite mesrgan/_build_info.py) and run with the environment and torch's answers patched.
"""
import ast
import os
import types

import pytest

SETUP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")


def _want_cuda(monkeypatch, *, mode, arch_list, gpu, cuda_torch=True, toolkit=True):
    tree = ast.parse(open(SETUP).read())
    funcs = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in ("log", "want_cuda")]
    logged = []
    fake_torch = types.SimpleNamespace(
        __version__="2.test", version=types.SimpleNamespace(cuda="12.8" if cuda_torch else None),
        cuda=types.SimpleNamespace(is_available=lambda: gpu))
    namespace = {"os": os, "sys": __import__("sys"), "torch": fake_torch,
                 "CUDA_HOME": "/opt/fake-cuda" if toolkit else None}
    exec(compile(ast.Module(body=funcs, type_ignores=[]), SETUP, "exec"), namespace)
    namespace["log"] = logged.append
    for name, value in (("MESRGAN_CUDA", mode), ("TORCH_CUDA_ARCH_LIST", arch_list)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    real_exists = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: toolkit if p.startswith("/opt/fake-cuda") else real_exists(p))
    return namespace["want_cuda"](), " ".join(logged)


def test_auto_without_gpu_or_arch_list_builds_cpu_only_and_says_so(monkeypatch):
    cuda, said = _want_cuda(monkeypatch, mode=None, arch_list=None, gpu=False)
    assert cuda is False
    assert "CPU-only build" in said and "no GPU is visible" in said and "MESRGAN_CUDA=1" in said


@pytest.mark.parametrize("mode, arch_list, gpu", [
    ("1", None, False),        # forced, as .ci/run does
    ("auto", "8.6", False),    # an arch list says which GPUs to build for
    ("auto", None, True),      # a visible GPU
])
def test_cuda_still_built_when_asked_or_useful(monkeypatch, mode, arch_list, gpu):
    cuda, _ = _want_cuda(monkeypatch, mode=mode, arch_list=arch_list, gpu=gpu)
    assert cuda is True


def test_forced_cuda_without_toolkit_fails(monkeypatch):
    with pytest.raises(SystemExit, match="MESRGAN_CUDA=1 but the CUDA kernels cannot be built"):
        _want_cuda(monkeypatch, mode="1", arch_list=None, gpu=False, toolkit=False)


def test_ci_forces_cuda():
    ci = open(os.path.join(os.path.dirname(SETUP), ".ci", "run")).read()
    assert 'MESRGAN_CUDA="${MESRGAN_CUDA:-1}"' in ci and "assert _build_info.WITH_CUDA" in ci
