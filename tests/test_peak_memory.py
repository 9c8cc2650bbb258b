"""benchmarks/peak_memory.py: a training step's own peak memory, read in a fresh process."""
import importlib.util
import os
from pathlib import Path

import pytest

# benchmarks/ is not an installed package: load the module from its file.
_spec = importlib.util.spec_from_file_location("benchmarks_peak_memory",
                                               Path(__file__).parents[1] / "benchmarks" / "peak_memory.py")
peak_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(peak_memory)

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")


def test_a_training_step_takes_memory_above_the_model():
    result = peak_memory.measure("mesrgan-paper-out", "auto", batch=1, lr=8, threads=1)
    assert result["rss_before_mib"] > 50  # torch, the model and its Adam state are resident
    assert result["peak_step_mib"] > 0   # the step's activations and gradients come on top


def test_unknown_model_is_refused_by_name():
    with pytest.raises(SystemExit, match="unknown model 'esrgan'"):
        peak_memory.main(["--models", "esrgan", "--batches", "1"])
