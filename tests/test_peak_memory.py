"""benchmarks/peak_memory.py: a training step's own peak memory, read in a fresh process."""
import os

import pytest

from benchmarks import peak_memory

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")


def test_a_training_step_takes_memory_above_the_model():
    result = peak_memory.measure("mesrgan-paper-out", "auto", batch=1, lr=8, threads=1)
    assert result["rss_before_mib"] > 50  # torch, the model and its Adam state are resident
    assert result["peak_step_mib"] > 0   # the step's activations and gradients come on top


def test_unknown_model_is_refused_by_name():
    with pytest.raises(SystemExit, match="unknown model 'esrgan'"):
        peak_memory.main(["--models", "esrgan", "--batches", "1"])
